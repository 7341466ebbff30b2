"""PyTorch layers built on associative memory: ``Hopfield``, ``HopfieldPooling``, ``HopfieldLayer``
(modern Hopfield retrieval = attention with iterated updates, Krotov & Hopfield 2021 eq. 13-16,
Ramsauer et al. 2020), ``EnergyLayer`` (the two-layer network of eq. 1-2 with learned synapses), and
:mod:`assocmem.nn.compat`, drop-in replacements for the layers of hopfield-layers (``hflayers``).
"""
from . import compat
from .energy import AssociativeMemoryLayer, EnergyLayer, EnergyOutput
from .hopfield import Hopfield, HopfieldLayer, HopfieldOutput, HopfieldPooling

__all__ = [
    "HopfieldOutput",
    "Hopfield",
    "HopfieldPooling",
    "HopfieldLayer",
    "EnergyOutput",
    "EnergyLayer",
    "AssociativeMemoryLayer",
    "compat",
]
