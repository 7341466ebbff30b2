"""assocmem: large associative memory, after Krotov & Hopfield 2021 and Kafraj et al. 2025-2026.

The general two-layer network (``TwoLayerNetwork``, KH eq. 1-4) built from Lagrangians
(``assocmem.lagrangians``), and its effective limits (``ClassicalHopfield``,
``DenseAssociativeMemory``, ``ModernHopfield``, ``SphericalMemory``, KH section 3).
"""
from ._validation import AssocmemError, CorruptBankError, DivergenceError
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

__version__ = "0.1.0"

__all__ = [
    "AssocmemError",
    "CorruptBankError",
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
    "__version__",
]
