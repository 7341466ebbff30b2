"""Capacity lab: how many random patterns each model of the package stores, measured on random
patterns (+-1, {0,1} with a coding level, Gaussian) and compared with ``assocmem.theory``: the
classical network (Hopfield 1982; McEliece et al. 1987; Amit, Gutfreund & Sompolinsky 1985), Dense
AM / Model A (KH 2021 eq. 8-9; Krotov & Hopfield 2016; Demircigil et al. 2017), Model B (KH eq. 16),
Model C (KH eq. 22), the threshold model (Kafraj, Krotov & Latham 2026) and the E/I dendritic model.

Three criteria, each a number in [0, 1] per trial (independent pattern set):

* ``stability``: fraction of probed stored patterns that one update step leaves unchanged (after
  read-out): the "fixed point" / one-step-recall criterion of McEliece et al. and KH2016;
* ``overlap``: mean overlap with the stored pattern after recall started at the pattern (or at a
  corrupted cue when a corruption is given); the 0.138 N criterion uses threshold 0.97;
* ``recall``: fraction of cues (stored patterns corrupted by a flip fraction, an occlusion or visible
  noise) from which recall recovers the pattern exactly.

A capacity estimate is the largest K at which the criterion stays at or above a threshold: a
geometric sweep of K up to the first failure, then bisection, per trial; the trials run as one
batched tensor computation and the estimate is their mean with the standard deviation as spread.

Modules: ``patterns`` (random patterns, cues), ``settings`` (models, criteria, validated settings),
``reference`` (published capacities), ``experiment`` (one size N), ``search`` (the estimate),
``report`` (CSV, JSON, PNG).
"""
from __future__ import annotations

from .experiment import _Experiment, classical_async_recall, classical_stable, dense_async_recall  # noqa: F401
from .patterns import PATTERN_KINDS, corrupt, random_patterns
from .reference import fit_exponent, theory_capacity, theory_curves
from .report import _atomic_write, _jsonable, plot_capacity, report_csv, report_json, write_report  # noqa: F401
from .search import CapacityEstimate, CapacityReport, _search, capacity_scan, criterion_curve, measure_capacity  # noqa: F401
from .settings import BIO_MODELS, CRITERIA, DEFAULT_THRESHOLDS, MODELS, capacity_settings, needs_bio

__all__ = [
    "MODELS",
    "BIO_MODELS",
    "CRITERIA",
    "PATTERN_KINDS",
    "DEFAULT_THRESHOLDS",
    "random_patterns",
    "corrupt",
    "capacity_settings",
    "measure_capacity",
    "capacity_scan",
    "criterion_curve",
    "theory_capacity",
    "theory_curves",
    "fit_exponent",
    "CapacityEstimate",
    "CapacityReport",
    "report_json",
    "report_csv",
    "plot_capacity",
    "write_report",
    "needs_bio",
    "classical_stable",
    "classical_async_recall",
    "dense_async_recall",
]
