"""Settings of a capacity experiment: the models, criteria and pattern kinds the lab knows, and one
validated record (``capacity_settings``) of everything that defines an experiment, with each model's
defaults filled in."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import check_choice, check_in_range, check_int, check_positive
from ..models import F_CHOICES
from ..models import registry as _registry
from .patterns import PATTERN_KINDS

__all__ = ["MODELS", "BIO_MODELS", "CRITERIA", "DEFAULT_THRESHOLDS", "capacity_settings", "needs_bio"]

#: the biologically plausible models of :mod:`assocmem.bio` the lab measures beside the effective ones
BIO_MODELS = ("threshold", "dendritic-ei")
#: every model the lab measures: the names of :func:`assocmem.models.by_name` that fix no parameter
#: (the interaction F is a setting here), then the two models of :mod:`assocmem.bio`
MODELS = tuple(name for name in _registry.names() if not _registry.entry(name).fixed) + BIO_MODELS
CRITERIA = ("stability", "overlap", "recall")
#: criterion -> default threshold (the threshold model's stability default is 0.99, see docs/capacity.md)
DEFAULT_THRESHOLDS = {"stability": 0.9, "overlap": 0.97, "recall": 0.9}

_ALLOWED_PATTERNS = {
    "classical": ("pm1", "binary"),
    "dense": ("pm1", "binary"),
    "modern": ("pm1", "binary", "gaussian"),
    "spherical": ("pm1", "binary", "gaussian"),
    "threshold": ("binary",),
    "dendritic-ei": ("binary",),
}
_BINARY_STATE = ("dendritic-ei",) + tuple(name for name in MODELS if name not in BIO_MODELS and _registry.entry(name).binary)
_NATIVE_PATTERNS = {"threshold": "binary", "dendritic-ei": "binary"}


# -------------------------------------------------------------------------------------------------
# settings
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    model: str
    criterion: str
    threshold: float
    patterns: str
    coding_level: float
    flip: float
    occlude: float
    noise: float
    n: int | None
    F: str
    beta: float
    n_hidden: int | None
    probes: int
    max_steps: int | None
    k_min: int
    k_max: int | None
    growth: float
    rel_tol: float
    trials: int
    seed: int
    theta: float
    tau_v: float
    tau_h: float
    dendrites: str
    dtype: torch.dtype
    device: str | None

    @property
    def corrupted(self) -> bool:
        return self.flip > 0 or self.occlude > 0 or self.noise > 0

    def settings(self) -> dict:
        """The settings that define the experiment, JSON-serialisable, only those that apply."""
        d = {"criterion": self.criterion, "threshold": self.threshold, "patterns": self.patterns,
             "trials": self.trials, "probes": self.probes, "seed": self.seed, "k_min": self.k_min,
             "k_max": self.k_max, "growth": self.growth, "rel_tol": self.rel_tol,
             "dtype": str(self.dtype).replace("torch.", "")}
        if self.patterns == "binary":
            d["coding_level"] = self.coding_level
        if self.criterion != "stability":
            d.update(flip=self.flip, occlude=self.occlude, noise=self.noise)
        if self.max_steps is not None:
            d["max_steps"] = self.max_steps
        if self.model in ("dense", "spherical", "dendritic-ei"):
            d["n"] = self.n
        if self.model in ("dense", "spherical"):
            d["F"] = self.F
            if self.F == "exp":
                d["beta"] = self.beta
        if self.model == "modern":
            d["beta"] = self.beta
        if self.n_hidden is not None:
            d["n_hidden"] = self.n_hidden
        if self.model == "threshold":
            d.update(theta=self.theta, tau_v=self.tau_v, tau_h=self.tau_h)
        if self.model == "dendritic-ei":
            d["dendrites"] = self.dendrites
        return d


def capacity_settings(model: str = "classical", criterion: str = "stability", *, threshold: float | None = None,
                      patterns: str | None = None, coding_level: float = 0.5, flip: float = 0.0,
                      occlude: float = 0.0, noise: float = 0.0, n: int | None = None, F: str = "power",
                      beta: float = 1.0, n_hidden: int | None = None, probes: int | None = None,
                      max_steps: int | None = None, k_min: int = 1, k_max: int | None = None,
                      growth: float = 2.0, rel_tol: float = 0.01, trials: int = 5, seed: int = 0,
                      theta: float = 0.5, tau_v: float = 20.0, tau_h: float = 1.0,
                      dendrites: str = "nonlinear", dtype: torch.dtype = torch.float32, device=None) -> _Spec:
    """Validate every setting of an experiment and fill in the model's defaults (see
    :func:`measure_capacity` for their meaning). Raises ``ValueError``/``TypeError`` naming the argument."""
    model = check_choice("model", model, MODELS)
    criterion = check_choice("criterion", criterion, CRITERIA)
    if threshold is None:
        threshold = 0.99 if (model == "threshold" and criterion == "stability") else DEFAULT_THRESHOLDS[criterion]
    threshold = check_in_range("threshold", threshold, 0.0, 1.0, lo_open=True)
    if patterns is None:
        patterns = _NATIVE_PATTERNS.get(model, "pm1")
    patterns = check_choice("patterns", patterns, PATTERN_KINDS)
    if patterns not in _ALLOWED_PATTERNS[model]:
        raise ValueError(f"patterns: got {patterns!r} for model {model!r}; expected one of "
                         f"{', '.join(map(repr, _ALLOWED_PATTERNS[model]))}")
    coding_level = check_in_range("coding_level", coding_level, 0.0, 1.0, lo_open=True, hi_open=True)
    flip = check_in_range("flip", flip, 0.0, 1.0)
    occlude = check_in_range("occlude", occlude, 0.0, 1.0)
    noise = float(check_positive("noise", noise, allow_zero=True))
    if criterion == "stability" and (flip or occlude or noise):
        raise ValueError(f"criterion: got 'stability' with a corruption (flip={flip}, occlude={occlude}, noise={noise}); "
                         "expected no corruption: stability is tested at the stored pattern (use 'recall' for cues)")
    binary_state = model in _BINARY_STATE
    if noise and binary_state:
        raise ValueError(f"noise: got {noise} for model {model!r}, whose states are binary; expected flip or occlude")
    if model == "threshold" and flip:
        raise ValueError(f"flip: got {flip} for model 'threshold'; expected noise (visible noise of standard deviation "
                         "sigma_v): every binary hidden state is a memory, so flipped hidden bits are another memory")
    if n is None:
        n = 6 if model == "dendritic-ei" else 3
    n = check_int("n", n, minimum=2)
    F = check_choice("F", F, F_CHOICES)
    beta = float(check_positive("beta", beta))
    if n_hidden is not None:
        n_hidden = check_int("n_hidden", n_hidden, minimum=1)
        if model in ("threshold", "dendritic-ei"):
            raise ValueError(f"n_hidden: got {n_hidden} for model {model!r}; expected None: only the models with one "
                             "memory neuron per pattern (classical, dense, modern, spherical) take it")
    if probes is None:
        probes = 2048 if (model == "threshold" and criterion == "stability") else 100
    probes = check_int("probes", probes, minimum=1)
    if max_steps is not None:
        max_steps = check_int("max_steps", max_steps, minimum=1)
    elif model == "classical":
        max_steps = 100
    elif model == "dense":
        max_steps = 5
    elif model in ("modern", "spherical"):
        max_steps = 50
    k_min = check_int("k_min", k_min, minimum=1)
    if k_max is not None:
        k_max = check_int("k_max", k_max, minimum=k_min)
    growth = check_in_range("growth", growth, 1.0, 100.0, lo_open=True)
    rel_tol = check_in_range("rel_tol", rel_tol, 0.0, 1.0)
    trials = check_int("trials", trials, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    theta = check_in_range("theta", theta, 0.0, 1.0, lo_open=True, hi_open=True)
    tau_v = float(check_positive("tau_v", tau_v))
    tau_h = float(check_positive("tau_h", tau_h))
    dendrites = check_choice("dendrites", dendrites, ("nonlinear", "linear"))
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: got {dtype!r}; expected torch.float32 or torch.float64")
    device = None if device is None else str(torch.device(device))
    return _Spec(model, criterion, float(threshold), patterns, float(coding_level), float(flip), float(occlude), noise,
                 n, F, beta, n_hidden, probes, max_steps, k_min, k_max, float(growth), float(rel_tol), trials, seed,
                 float(theta), tau_v, tau_h, dendrites, dtype, device)


def _check_N(N) -> int:
    return check_int("N", N, minimum=2)



def needs_bio(model: str, criterion: str) -> bool:
    """Whether the experiment runs a model of ``assocmem.bio`` (the threshold model's stability
    criterion is its fixed-point equation, a matrix product, and does not)."""
    return model == "dendritic-ei" or (model == "threshold" and criterion != "stability")
