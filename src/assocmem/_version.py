"""The package version, in one place (read by the package root, the CLI, banks and caches)."""

__version__ = "0.2.0"
