"""Biologically plausible associative memories: the threshold model of Kafraj, Krotov & Latham 2026
(``ThresholdMemory``, Kafraj, Krotov & Latham 2026) and the excitatory/inhibitory dendritic model of Kafraj,
Krotov, Bicknell & Latham 2025 (``DendriticEIMemory``, Kafraj, Krotov, Bicknell & Latham 2025).
"""
from .dendritic import DendriticEIMemory, DendriticRecallResult
from .threshold import MAX_ENUMERATED_HIDDEN, ThresholdMemory, ThresholdRecallResult, stability_bound

__all__ = [
    "ThresholdMemory",
    "ThresholdRecallResult",
    "stability_bound",
    "MAX_ENUMERATED_HIDDEN",
    "DendriticEIMemory",
    "DendriticRecallResult",
]
