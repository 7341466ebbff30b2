"""assocmem: large associative memory, after Krotov & Hopfield 2021 and Kafraj et al. 2025-2026.

The general two-layer network (``TwoLayerNetwork``, KH eq. 1-4) built from Lagrangians
(``assocmem.lagrangians``), and its effective limits (``ClassicalHopfield``,
``DenseAssociativeMemory``, ``ModernHopfield``, ``SphericalMemory``, KH section 3). Every model
has ``save(path)``; ``assocmem.load(path)`` reads it back (``assocmem.bank``).
"""
from ._version import __version__
from ._validation import AssocmemError, BankVersionError, CorruptBankError, DivergenceError
from . import lagrangians
from .lagrangians import Lagrangian
from .models import (
    AssociativeMemory,
    ClassicalHopfield,
    DenseAssociativeMemory,
    ModernHopfield,
    RecallResult,
    SphericalMemory,
)
from .network import Trajectory, TwoLayerNetwork
from .bank import MemoryBank, load, open_bank


__all__ = [
    "AssocmemError",
    "CorruptBankError",
    "BankVersionError",
    "DivergenceError",
    "lagrangians",
    "Lagrangian",
    "TwoLayerNetwork",
    "Trajectory",
    "AssociativeMemory",
    "ClassicalHopfield",
    "DenseAssociativeMemory",
    "ModernHopfield",
    "SphericalMemory",
    "RecallResult",
    "MemoryBank",
    "load",
    "open_bank",
    "__version__",
]
