"""Effective models of the feature layer, the memory neurons integrated out (KH 2021 section 3).

ClassicalHopfield (Hopfield 1982; KH eq. 8 with n = 2), DenseAssociativeMemory (Model A, KH eq.
5-10, update rule of Krotov & Hopfield 2016), ModernHopfield (Model B, KH eq. 11-16) and
SphericalMemory (Model C, KH eq. 17-22). Each declares its two Lagrangians and has ``energy``,
``step``, ``recall`` and ``as_network`` (the two-layer network of KH eq. 1 that it is the tau_h -> 0
limit of); ``by_name`` builds one from its name (``names()``).
"""
from __future__ import annotations

# the private names are kept for the modules that import them from here (streaming, distributed)
from .base import AssociativeMemory, RecallResult, _active_rows, _check_patterns, _half_sq_norm, _max_abs_change  # noqa: F401
from .classical import ClassicalHopfield
from .dense import F_CHOICES, DenseAssociativeMemory, hidden_lagrangian
from .modern import ModernHopfield
from .registry import ModelEntry, by_name, entry, names
from .spherical import SphericalMemory

_F_CHOICES = F_CHOICES

#: every model name ``by_name`` knows, in registration order
MODEL_NAMES = names()

__all__ = [
    "RecallResult",
    "AssociativeMemory",
    "ClassicalHopfield",
    "DenseAssociativeMemory",
    "ModernHopfield",
    "SphericalMemory",
    "by_name",
    "names",
    "entry",
    "ModelEntry",
    "MODEL_NAMES",
    "hidden_lagrangian",
]
