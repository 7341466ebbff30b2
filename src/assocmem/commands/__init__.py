"""Sub-commands of the ``assocmem`` command line, one module each (see ``assocmem.cli``)."""
