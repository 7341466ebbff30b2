"""Capacity lab: how many random patterns each model of the package stores, measured on random
patterns (+-1, {0,1} with a coding level, Gaussian) and compared with ``assocmem.theory``
(MODELS.md sections 4-5: classical Hopfield, Dense AM / Model A KH eq. 8-9, Model B KH eq. 16,
Model C KH eq. 22, the threshold model of section 5 and the E/I dendritic model of section 6).

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
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from . import theory as _th
from ._validation import (
    check_choice,
    check_in_range,
    check_int,
    check_positive,
    check_tensor,
    describe,
)

__all__ = [
    "MODELS",
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
]

MODELS = ("classical", "dense", "modern", "spherical", "threshold", "dendritic-ei")
CRITERIA = ("stability", "overlap", "recall")
PATTERN_KINDS = ("pm1", "binary", "gaussian")
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
_NATIVE_PATTERNS = {"threshold": "binary", "dendritic-ei": "binary"}
_BLOCK = 256  # rows of a pattern bank generated per seeded block


# -------------------------------------------------------------------------------------------------
# random patterns and corrupted cues
# -------------------------------------------------------------------------------------------------
def random_patterns(K: int, N: int, kind: str = "pm1", coding_level: float = 0.5,
                    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                    device=None) -> torch.Tensor:
    """K random patterns of N entries, shape (K, N): ``"pm1"`` unbiased +-1 (``coding_level`` = P(+1)),
    ``"binary"`` {0, 1} with P(1) = ``coding_level``, ``"gaussian"`` i.i.d. N(0, 1)."""
    K = check_int("K", K, minimum=1)
    N = check_int("N", N, minimum=1)
    kind = check_choice("kind", kind, PATTERN_KINDS)
    a = check_in_range("coding_level", coding_level, 0.0, 1.0, lo_open=True, hi_open=True)
    if kind == "gaussian":
        x = torch.randn(K, N, generator=generator, dtype=torch.float32)
    else:
        x = (torch.rand(K, N, generator=generator) < a).to(torch.float32)
        if kind == "pm1":
            x = 2.0 * x - 1.0
    return x.to(dtype=dtype, device=device)


def _blank_value(model: str, kind: str) -> float:
    """What an occluded entry is set to: -1 for the +-1 binary-state models (they cannot hold 0), 0.5
    ("unknown") for the E/I model's {0,1} cues, 0 (silent / unknown) otherwise."""
    if model in ("classical", "dense"):
        return -1.0
    if model == "dendritic-ei":
        return 0.5
    return 0.0


def corrupt(patterns, flip: float = 0.0, occlude: float = 0.0, noise: float = 0.0, kind: str = "pm1",
            blank: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cues from ``patterns`` (B, N): exactly ``round(flip N)`` randomly chosen entries flipped per row
    (``kind`` "pm1" and "gaussian": sign change; "binary": 0 <-> 1), then the last ``round(occlude N)``
    entries set to ``blank``, then i.i.d. Gaussian noise of standard deviation ``noise`` added."""
    p = check_tensor("patterns", patterns, ndim=2)
    flip = check_in_range("flip", flip, 0.0, 1.0)
    occlude = check_in_range("occlude", occlude, 0.0, 1.0)
    noise = float(check_positive("noise", noise, allow_zero=True))
    kind = check_choice("kind", kind, PATTERN_KINDS)
    blank = float(check_in_range("blank", blank, -1e30, 1e30))
    B, N = p.shape
    m = int(round(flip * N))
    fl = torch.zeros(B, N, dtype=torch.bool)
    if m:
        order = torch.rand(B, N, generator=generator).argsort(-1)
        fl.scatter_(1, order[:, :m], True)
    noise_t = torch.randn(B, N, generator=generator) if noise > 0 else None
    return _apply_corruption(p, fl.to(p.device), int(round(occlude * N)), noise,
                             None if noise_t is None else noise_t.to(p.device), kind, blank)


def _apply_corruption(p, flip_mask, n_occ, noise, noise_t, kind, blank):
    if flip_mask is not None and bool(flip_mask.any()):
        flipped = 1.0 - p if kind == "binary" else -p
        p = torch.where(flip_mask, flipped, p)
    if n_occ:
        p = p.clone()
        p[..., p.shape[-1] - n_occ:] = blank
    if noise and noise_t is not None:
        p = p + noise * noise_t.to(p.dtype)
    return p


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
    binary_state = model in ("classical", "dense", "dendritic-ei")
    if noise and binary_state:
        raise ValueError(f"noise: got {noise} for model {model!r}, whose states are binary; expected flip or occlude")
    if model == "threshold" and flip:
        raise ValueError(f"flip: got {flip} for model 'threshold'; expected noise (visible noise of standard deviation "
                         "sigma_v): every binary hidden state is a memory, so flipped hidden bits are another memory")
    if n is None:
        n = 6 if model == "dendritic-ei" else 3
    n = check_int("n", n, minimum=2)
    F = check_choice("F", F, ("power", "rectified_power", "exp"))
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


# -------------------------------------------------------------------------------------------------
# theory
# -------------------------------------------------------------------------------------------------
def _theory_fn(spec: _Spec) -> tuple[str, Callable] | None:
    """(label, f(N)) of the reference formula that matches the model and criterion, or None."""
    m, c = spec.model, spec.criterion
    if m == "classical":
        if c == "stability":
            return "N/(2 ln N)", _th.most_fixed_points
        return "0.138 N (AGS)", _th.amit_gutfreund_sompolinsky
    if m == "dense":
        if spec.F in ("power", "rectified_power"):
            n = spec.n
            return f"KH2016 N^{n - 1}/(2 ({2 * n - 3})!! ln N)", lambda N: _th.krotov_hopfield_2016(N, n)
        if spec.beta == 1.0 and spec.occlude == 0 and spec.flip < 0.5:
            rho = spec.flip
            return f"Demircigil exp({_th.demircigil_exponent(rho):.3f} N)", lambda N: _th.demircigil(N, rho)
        return None
    if m == "threshold":
        p = spec.threshold  # the stability bound at the criterion's threshold
        return (f"2^N_h, bound >= {p:g}",
                lambda N: np.power(2.0, np.vectorize(lambda v: _th.threshold_capacity_bits(v, p))(np.asarray(N, float))))
    return None


def theory_capacity(model: str, N: int, criterion: str = "stability", **settings) -> float | None:
    """The reference capacity (``assocmem.theory``) that matches ``model`` and ``criterion`` at size N,
    capped at ``n_hidden`` when given (KH eq. 9); None where the spec gives no formula (Model B,
    Model C, the E/I model, Dense AM with F = exp and beta != 1)."""
    spec = settings.pop("_spec", None) or capacity_settings(model, criterion, **settings)
    N = _check_N(N)
    t = _theory_fn(spec)
    val = None if t is None else float(t[1](N))
    if spec.n_hidden is not None:
        val = float(spec.n_hidden) if val is None else min(val, float(spec.n_hidden))
    return val


def theory_curves(model: str, criterion: str = "stability", **settings) -> dict[str, Callable]:
    """Label -> f(N) for every reference curve worth drawing beside the measurements of ``model``."""
    spec = settings.pop("_spec", None) or capacity_settings(model, criterion, **settings)
    out: dict[str, Callable] = {}
    if spec.model == "classical":
        out["0.138 N (AGS)"] = _th.amit_gutfreund_sompolinsky
        out["N/(2 ln N)"] = _th.most_fixed_points
        out["N/(4 ln N) (McEliece)"] = _th.mceliece
    else:
        t = _theory_fn(spec)
        if t is not None:
            out[t[0]] = t[1]
    if spec.n_hidden is not None:
        nh = float(spec.n_hidden)
        out[f"N_h = {spec.n_hidden} (KH eq. 9)"] = lambda N: np.full(np.shape(N), nh) if np.ndim(N) else nh
    return out


# -------------------------------------------------------------------------------------------------
# results
# -------------------------------------------------------------------------------------------------
@dataclass
class CapacityEstimate:
    """Capacity at one size N: ``K`` mean over trials of the per-trial estimates ``K_trials``, ``K_std``
    their standard deviation (0 with one trial), ``censored`` per trial (the criterion still passed at
    ``k_max``: the estimate is a lower bound), ``theory`` the matching formula (None if there is none),
    ``evaluations`` every (trial, K, criterion value) computed, ``seconds`` wall time. For the threshold
    model the load is the number of hidden bits N_h, ``K = 2^(mean N_h)`` counts stable binary hidden
    states (geometric mean over trials, spread ``K ln 2 std(N_h)``) and ``extra`` holds N_h."""

    N: int
    K: float
    K_std: float
    K_trials: list
    censored: list
    theory: float | None
    threshold: float
    criterion: str
    evaluations: list = field(default_factory=list)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        d = {"N": self.N, "K": self.K, "K_std": self.K_std, "theory": self.theory,
             "censored": bool(any(self.censored)), "K_trials": list(self.K_trials),
             "seconds": round(self.seconds, 3)}
        d.update(self.extra)
        return d


@dataclass
class CapacityReport:
    """Capacity estimates for several N, with the fitted exponent of log K vs log N (None with fewer
    than two uncensored sizes) and its standard error (None with fewer than three)."""

    model: str
    criterion: str
    settings: dict
    results: list
    exponent: float | None
    exponent_stderr: float | None = None
    theory_labels: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"model": self.model, "criterion": self.criterion, "settings": self.settings,
                "results": [r.row() for r in self.results], "exponent": self.exponent,
                "exponent_stderr": self.exponent_stderr}


def fit_exponent(Ns: Sequence[float], Ks: Sequence[float]) -> tuple[float | None, float | None]:
    """Least-squares slope of log K against log N and its standard error. Points with K <= 0 are left
    out; (None, None) with fewer than two points, stderr None with fewer than three."""
    pts = [(float(n), float(k)) for n, k in zip(Ns, Ks) if k is not None and float(k) > 0 and math.isfinite(float(k))]
    if len({n for n, _ in pts}) < 2:
        return None, None
    x = np.log([n for n, _ in pts])
    y = np.log([k for _, k in pts])
    A = np.vstack([x, np.ones_like(x)]).T
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    slope = float(coef[0])
    if len(pts) < 3:
        return slope, None
    resid = y - A @ coef
    s2 = float(resid @ resid) / (len(pts) - 2)
    se = math.sqrt(s2 / float(((x - x.mean()) ** 2).sum()))
    return slope, se


# -------------------------------------------------------------------------------------------------
# pattern banks: trial t's pattern mu is the same whatever K is asked (nested pattern sets)
# -------------------------------------------------------------------------------------------------
def _mix(*ints: int) -> int:
    h = 1469598103934665603
    for i in ints:
        h = ((h ^ (int(i) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


class _Bank:
    def __init__(self, kind: str, N: int, coding_level: float, seed: int, trial: int):
        self.kind, self.N, self.a, self.seed, self.trial = kind, N, coding_level, seed, trial
        self.rows = torch.empty(0, N, dtype=torch.float32 if kind == "gaussian" else torch.int8)

    def get(self, K: int) -> torch.Tensor:
        while self.rows.shape[0] < K:
            b = self.rows.shape[0] // _BLOCK
            g = torch.Generator().manual_seed(_mix(self.seed, self.trial, b, 17))
            x = random_patterns(_BLOCK, self.N, self.kind, self.a, generator=g)
            self.rows = torch.cat([self.rows, x.to(self.rows.dtype)])
        return self.rows[:K]


# -------------------------------------------------------------------------------------------------
# batched dynamics (exact replicas of the models' recall, many trials at once)
# -------------------------------------------------------------------------------------------------
class _Perms:
    """The sweep orders of ``ClassicalHopfield``/``DenseAssociativeMemory.recall``: one
    ``torch.randperm(N, generator)`` per sweep, drawn in the same sequence as the models draw them."""

    def __init__(self, N: int, generator: torch.Generator, device, max_sweeps: int):
        self.N, self.g = N, generator
        self.order = torch.empty(max_sweeps, N, dtype=torch.long, device=device)
        self.drawn = 0

    def upto(self, k: int) -> torch.Tensor:
        """Make sure orders 0..k are drawn; returns the (max_sweeps, N) order table."""
        while self.drawn <= k:
            self.order[self.drawn] = torch.randperm(self.N, generator=self.g)
            self.drawn += 1
        return self.order


def _hebbian_work_dtype(N: int, K: int) -> torch.dtype:
    # as ClassicalHopfield: integer couplings are exact in float32 below 2^23
    return torch.float64 if N * K >= 2 ** 23 else torch.float32


def classical_stable(probes: torch.Tensor, stored: torch.Tensor, n_stored: torch.Tensor) -> torch.Tensor:
    """Which probe patterns are fixed points of the Hebbian network storing ``stored``.

    probes (S, P, N) and stored (S, H, N) hold +-1 (zero rows are padding), n_stored (S,) the number of
    real stored rows. The local field of probe x is ``T x`` with ``T = stored^T stored`` minus its
    diagonal (= n_stored): one matrix product, no dynamics. x is a fixed point of the asynchronous sign
    update iff no field disagrees in sign with x (a zero field keeps the sign, as in the model)."""
    S, P, N = probes.shape
    H = stored.shape[1]
    work = _hebbian_work_dtype(N, max(H, 1) + P)
    x = probes.to(work)
    st = stored.to(work)
    if 2 * P * H * N <= H * N * N + P * N * N:
        fields = torch.bmm(torch.bmm(x, st.transpose(1, 2)), st)
    else:
        fields = torch.bmm(x, torch.bmm(st.transpose(1, 2), st))
    fields = fields - n_stored.to(work).view(S, 1, 1) * x
    return ((fields * x) >= 0).all(-1)


def classical_async_recall(T: torch.Tensor, s0: torch.Tensor, row_trial: torch.Tensor, max_steps: int,
                           generator: torch.Generator, window: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``ClassicalHopfield.recall`` for many rows at once, each with its own couplings, event-driven.

    T (S, N, N) integer-valued couplings with zero diagonal (row i of T[t] is neuron i's input
    weights), s0 (R, N) +-1 start states, row_trial (R,) which T each row uses. Each sweep visits the
    neurons in the order of one ``randperm`` (shared by all rows, drawn per sweep as the model does);
    instead of visiting every neuron, a row jumps to the next neuron in its sweep order whose local
    field disagrees with its sign (a neuron that agrees would not change, so skipping it is exact) and
    flips it, updating the fields with one row of T. The next such neuron is looked for in the next
    ``window`` positions of the row's order first and in the rest of the sweep only when none is
    there. Returns (final states, converged), converged meaning a sweep without a flip within
    ``max_steps`` sweeps. The loop is a long chain of small memory-bound tensor operations, for which
    OpenMP's fork/join costs more than a second thread gains (on a shared 2-core machine, 10 times
    the CPU time), so it runs with one intra-op thread and restores the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _classical_events(T, s0, row_trial, max_steps, generator, window)
    finally:
        torch.set_num_threads(threads)


def _classical_events(T, s0, row_trial, max_steps, generator, window):
    R, N = s0.shape
    device = s0.device
    work = T.dtype
    S = T.shape[0]
    perms = _Perms(N, generator, device, max_steps)
    order_tab = perms.upto(0)
    Tflat = T.reshape(S * N, N)
    s = s0.to(work).clone()
    u = torch.empty(R, N, dtype=work, device=device)
    for t in range(S):  # initial local fields, one matmul per trial
        rows = (row_trial == t).nonzero().flatten()
        if rows.numel():
            u.index_copy_(0, rows, s.index_select(0, rows) @ T[t])
    ordr = order_tab[0].expand(R, N).contiguous()  # the current sweep order of each row
    out_s = torch.empty(R, N, dtype=work, device=device)
    out_conv = torch.zeros(R, dtype=torch.bool, device=device)
    gidx = torch.arange(R, device=device)
    trial = row_trial.to(device).clone()
    sweep = torch.zeros(R, dtype=torch.long, device=device)
    pos = torch.zeros(R, dtype=torch.long, device=device)
    flips = torch.zeros(R, dtype=torch.long, device=device)
    done = torch.zeros(R, dtype=torch.bool, device=device)
    W = max(1, min(int(window), N))
    arW = torch.arange(W, device=device)
    cols = torch.arange(N, device=device)
    while gidx.numel():
        at = pos.unsqueeze(1) + arW
        win = ordr.gather(1, at.clamp_max(N - 1))  # neurons at the next W positions
        cand = (s.gather(1, win) * u.gather(1, win) < 0) & (at < N)
        has = cand.any(1)
        c = pos + cand.view(torch.uint8).argmax(1)  # position of the first candidate
        far = (~has & ~done & (pos + W < N)).nonzero().flatten()
        if far.numel():  # nothing in the window: search the rest of the sweep
            o = ordr.index_select(0, far)
            cf = (s.index_select(0, far).gather(1, o) * u.index_select(0, far).gather(1, o) < 0)
            cf &= cols >= (pos.index_select(0, far) + W).unsqueeze(1)
            has.index_copy_(0, far, cf.any(1))
            c.index_copy_(0, far, cf.view(torch.uint8).argmax(1))
        has &= ~done
        fr = has.nonzero().flatten()
        if fr.numel():
            cf = c.index_select(0, fr)
            nf = ordr.index_select(0, fr).gather(1, cf.unsqueeze(1)).squeeze(1)
            old = s[fr, nf]
            s[fr, nf] = -old
            trows = Tflat.index_select(0, trial.index_select(0, fr) * N + nf)
            if 2 * fr.numel() >= gidx.numel():
                coef = torch.zeros(gidx.numel(), dtype=work, device=device).index_copy_(0, fr, -2.0 * old)
                full = torch.zeros(gidx.numel(), N, dtype=work, device=device).index_copy_(0, fr, trows)
                u.addcmul_(coef.unsqueeze(1), full)
            else:
                u.index_copy_(0, fr, u.index_select(0, fr).addcmul_((-2.0 * old).unsqueeze(1), trows))
            pos.index_copy_(0, fr, cf + 1)
            flips.index_add_(0, fr, torch.ones_like(fr))
        er = ((~has) & ~done).nonzero().flatten()
        if er.numel():
            conv = flips.index_select(0, er) == 0
            nxt = sweep.index_select(0, er) + 1
            stop = conv | (nxt >= max_steps)
            fin = er[stop]
            if fin.numel():
                out_s.index_copy_(0, gidx.index_select(0, fin), s.index_select(0, fin))
                out_conv.index_copy_(0, gidx.index_select(0, fin), conv[stop])
                done.index_fill_(0, fin, True)
            go = er[~stop]
            if go.numel():
                nxt_go = nxt[~stop]
                sweep.index_copy_(0, go, nxt_go)
                order_tab = perms.upto(int(nxt_go.max()))
                ordr.index_copy_(0, go, order_tab.index_select(0, nxt_go))
                pos.index_fill_(0, go, 0)
                flips.index_fill_(0, go, 0)
        n_done = int(done.sum())
        if n_done and (n_done == gidx.numel() or n_done * 4 >= gidx.numel()):
            keep = (~done).nonzero().flatten()
            s, u, ordr, gidx, trial, sweep, pos, flips, done = (
                x.index_select(0, keep) for x in (s, u, ordr, gidx, trial, sweep, pos, flips, done))
    return out_s.to(s0.dtype), out_conv


def _dense_work(N: int, K: int, n: int, F: str, dtype: torch.dtype) -> tuple[str, torch.dtype]:
    # the arithmetic of DenseAssociativeMemory (exact integers where they fit)
    bits = n * math.log2(N + 1) + math.log2(max(K, 1)) + 1
    if F == "exp":
        return "log", torch.float64 if dtype == torch.float64 else torch.float32
    if bits < 23:
        return "exact", torch.float32
    if bits < 52:
        return "exact", torch.float64
    return "normalised", torch.float64


def dense_async_recall(xi: torch.Tensor, n_stored: torch.Tensor, s0: torch.Tensor, row_trial: torch.Tensor,
                       max_steps: int, generator: torch.Generator, F: str = "power", n: int = 3,
                       beta: float = 1.0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``DenseAssociativeMemory.recall`` (binary, KH2016 update rule) for many rows at once.

    xi (S, H, N) +-1 stored patterns per trial (rows at or beyond n_stored[t] are padding and ignored),
    s0 (R, N) +-1 start states, row_trial (R,) the trial of each row. Every sweep visits all neurons in
    one shared ``randperm`` order; neuron i takes the sign with the larger sum_mu F(xi_mu . s) (a tie
    keeps it); rows stop after a sweep without a flip or after ``max_steps`` sweeps. Returns (final
    states, converged).

    With a = s_i xi_mu,i, flipping neuron i moves every overlap h_mu to h_mu - 2 a. For F = x^n the
    gain sum_mu [(h_mu - 2a)^n - h_mu^n] = sum_k C(n,k) (-2)^k [k odd: s_i sum_mu h_mu^(n-k) xi_mu,i;
    k even: sum_mu h_mu^(n-k)] needs ceil(n/2) dot products per neuron, in exact integer arithmetic
    (float32 or float64 as the values need), so every decision is the model's. For F = exp, the
    neuron flips iff B e^(2 beta) > A with A, B the sums of e^(beta h_mu) over a = +1 and a = -1 (one
    dot product). Other F (rectified power, or powers too large for exact float64) use the model's
    own comparison of sum F at both signs."""
    S, H, N = xi.shape
    R = s0.shape[0]
    device = s0.device
    mode, work = _dense_work(N, H, n, F, dtype)
    bits = n * math.log2(N + 1) + math.log2(max(H, 1)) + n + 2
    if F == "power" and bits < 52:
        path, work = "poly", (torch.float32 if bits < 23 else torch.float64)
    elif F == "exp":
        path, work = "exp", torch.float64
    else:
        path = "generic"
    n_st = n_stored.to(device)
    valid = torch.arange(H, device=device).unsqueeze(0) < n_st.unsqueeze(1)  # (S, H)
    xi_t = (xi.to(work) * valid.unsqueeze(-1).to(work)).transpose(1, 2).contiguous()  # (S, N, H)
    xi_flat = xi_t.reshape(S * N, H)
    # rows sorted by trial, so that each trial's rows are one contiguous block
    srt = torch.sort(row_trial.to(device), stable=True).indices
    gidx = srt.clone()
    trial = row_trial.to(device)[srt]
    s = s0.to(device)[srt].to(work).clone()

    def blocks():
        counts = torch.bincount(trial, minlength=S).tolist()
        out, lo = [], 0
        for t, c in enumerate(counts):
            if c:
                out.append((t, lo, lo + c))
                lo += c
        return out

    def per_trial_dot(M, i, bl):  # (R_active,) = M[r] . xi_t[trial[r], i]
        out = torch.empty(M.shape[0], dtype=work, device=device)
        for t, lo, hi in bl:
            torch.mv(M[lo:hi], xi_t[t, i], out=out[lo:hi])
        return out

    h = torch.empty(s.shape[0], H, dtype=work, device=device)
    for t, lo, hi in blocks():
        h[lo:hi] = s[lo:hi] @ xi_t[t]
    odd_js = [n - k for k in range(1, n + 1, 2)]          # powers of h dotted with xi_i
    even_js = [n - k for k in range(2, n + 1, 2)]         # powers of h summed
    coef = {k: math.comb(n, k) * (-2.0) ** k for k in range(1, n + 1)}
    P, even, colsum, E, sumE, neg = {}, None, None, None, None, None

    def even_term(hh, tr):
        e = torch.zeros(hh.shape[0], dtype=work, device=device)
        for j in even_js:
            sj = n_st[tr].to(work) if j == 0 else hh.pow(j).sum(-1)
            e += coef[n - j] * sj
        return e

    def exp_state(hh, tr):
        hm = hh.masked_fill(~valid[tr], float("-inf"))
        m = hm.amax(-1, keepdim=True)
        ee = torch.exp(beta * (hm - m))
        return ee, ee.sum(-1)

    if path == "poly":
        P = {j: h.pow(j) for j in odd_js if j >= 2}
        P[1] = h
        even = even_term(h, trial)
        colsum = xi_t.sum(-1)  # (S, N): sum_mu xi_mu,i, the j = 0 dot product
    elif path == "exp":
        E, sumE = exp_state(h, trial)
        log_gain = 2.0 * beta
    elif mode == "log":
        neg = torch.zeros(S, H, dtype=work, device=device).masked_fill(~valid, float("-inf"))[trial]

    def fsum(a, m=None):
        if F == "power":
            return a.pow(n).sum(-1)
        if F == "rectified_power":
            return torch.clamp(a, min=0).pow(n).sum(-1)
        return torch.logsumexp(beta * a + m, -1)

    out_s = torch.empty(R, N, dtype=work, device=device)
    out_conv = torch.zeros(R, dtype=torch.bool, device=device)
    for step in range(max_steps):
        order = torch.randperm(N, generator=generator).tolist()
        s_before = s.clone()
        bl = blocks()
        for i in order:
            old = s[:, i]
            if path == "poly":
                gain = even.clone()
                for j in odd_js:
                    d = colsum[trial, i] if j == 0 else per_trial_dot(P[j], i, bl)
                    gain += coef[n - j] * old * d
                flip = gain > 0
            elif path == "exp":
                d = old * per_trial_dot(E, i, bl)
                A = (sumE + d).clamp_min(0)  # mass of the memories that agree with s_i
                B = (sumE - d).clamp_min(0)
                flip = torch.log(B) + log_gain > torch.log(A)
            else:
                col = xi_flat.index_select(0, trial * N + i)
                hp = h + (1.0 - old).unsqueeze(1) * col
                hn = h - (1.0 + old).unsqueeze(1) * col
                if mode == "normalised":
                    sc = torch.maximum(hp.abs().amax(-1, keepdim=True), hn.abs().amax(-1, keepdim=True)).clamp_min(1.0)
                    pref = fsum(hp / sc) - fsum(hn / sc)
                else:
                    pref = fsum(hp, neg) - fsum(hn, neg)
                flip = ((pref > 0) & (old < 0)) | ((pref < 0) & (old > 0))
            fr = flip.nonzero().flatten()
            if fr.numel():
                tr = trial.index_select(0, fr)
                of = old.index_select(0, fr)
                col = xi_flat.index_select(0, tr * N + i)
                hf = h.index_select(0, fr).addcmul_(of.unsqueeze(1), col, value=-2.0)
                h.index_copy_(0, fr, hf)
                if path == "poly":
                    for j in P:
                        if j >= 2:
                            P[j].index_copy_(0, fr, hf.pow(j))
                    even.index_copy_(0, fr, even_term(hf, tr))
                elif path == "exp":
                    ef, sf = exp_state(hf, tr)
                    E.index_copy_(0, fr, ef)
                    sumE.index_copy_(0, fr, sf)
                s[:, i].index_copy_(0, fr, -of)
        moved = (s != s_before).any(-1)
        fin = (~moved) | torch.tensor(step == max_steps - 1, device=device)
        if bool(fin.any()):
            f = fin.nonzero().flatten()
            out_s.index_copy_(0, gidx.index_select(0, f), s.index_select(0, f))
            out_conv.index_copy_(0, gidx.index_select(0, f), ~moved.index_select(0, f))
            keep = (~fin).nonzero().flatten()
            s, h, trial, gidx = (x.index_select(0, keep) for x in (s, h, trial, gidx))
            if path == "poly":
                P = {j: (h if j == 1 else P[j].index_select(0, keep)) for j in P}
                even = even.index_select(0, keep)
            elif path == "exp":
                E, sumE = E.index_select(0, keep), sumE.index_select(0, keep)
            elif neg is not None:
                neg = neg.index_select(0, keep)
        if gidx.numel() == 0:
            break
    return out_s.to(s0.dtype), out_conv


def modern_recall(xi: torch.Tensor, n_stored: torch.Tensor, x0: torch.Tensor, beta: float, max_steps: int,
                  tol: float = 1e-6) -> torch.Tensor:
    """``ModernHopfield.recall`` for S trials at once: xi (S, H, N) with padding rows beyond n_stored
    masked out of the softmax, x0 (S, P, N). Each row stops once an update moves it by <= tol."""
    from .functional import retrieve

    S, H, N = xi.shape
    mask = (torch.arange(H, device=xi.device).unsqueeze(0) >= n_stored.to(xi.device).unsqueeze(1)).unsqueeze(1)
    x = x0.clone()
    active = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    for _ in range(max_steps):
        new = retrieve(x, xi, beta=beta, mask=mask)
        delta = (new - x).abs().amax(-1)
        x = torch.where(active.unsqueeze(-1), new, x)
        active = active & (delta > tol)
        if not bool(active.any()):
            break
    return x


# -------------------------------------------------------------------------------------------------
# the experiment at one size N
# -------------------------------------------------------------------------------------------------
def needs_bio(model: str, criterion: str) -> bool:
    """Whether the experiment runs a model of ``assocmem.bio`` (the threshold model's stability
    criterion is its fixed-point equation, a matrix product, and does not)."""
    return model == "dendritic-ei" or (model == "threshold" and criterion != "stability")


def _bio():
    try:
        from . import bio
    except ImportError as e:  # pragma: no cover - depends on whether assocmem.bio has landed
        raise ValueError(f"model: the threshold and dendritic-ei models need assocmem.bio, which could not be "
                         f"imported ({e}); expected an assocmem with the bio module") from None
    return bio


class _Experiment:
    """Everything random about an experiment at size N is fixed here, per trial: the pattern bank
    (nested: pattern mu is the same for every K), the probe slots and their corruptions. ``evaluate``
    then maps (trials, K per trial) to criterion values in one batched computation."""

    def __init__(self, spec: _Spec, N: int):
        self.spec, self.N = spec, N
        self.device = torch.device(spec.device) if spec.device else torch.device("cpu")
        self.calls = 0
        S, P = spec.trials, spec.probes
        self.load_is_bits = spec.model == "threshold"
        if self.load_is_bits:  # the load is N_h; a bank row is a hidden neuron's weights xi_mu (N_v,)
            self.banks = [_Bank("gaussian", N, 0.5, spec.seed, t) for t in range(S)]
        else:
            self.banks = [_Bank(spec.patterns, N, spec.coding_level, spec.seed, t) for t in range(S)]
        self.u = torch.empty(S, P)
        self.flip = torch.zeros(S, P, N, dtype=torch.bool)
        self.noise = torch.zeros(S, P, N) if spec.noise else None
        m = int(round(spec.flip * N))
        for t in range(S):
            g = torch.Generator().manual_seed(_mix(spec.seed, t, 29))
            self.u[t] = torch.rand(P, generator=g)
            if m:
                o = torch.rand(P, N, generator=g).argsort(-1)[:, :m]
                self.flip[t].scatter_(1, o, True)
            if self.noise is not None:
                self.noise[t] = torch.randn(P, N, generator=g)
        self.n_occ = int(round(spec.occlude * N))
        # binary-state +-1 models take {0,1} patterns of coding level a as biased +-1 patterns 2x - 1
        self.value_kind = "pm1" if spec.model in ("classical", "dense") else spec.patterns
        self.hidden_bits = None
        if self.load_is_bits:
            self.hidden_bits = {}

    # ---- helpers -----------------------------------------------------------------------------
    def k_max(self) -> int:
        s = self.spec
        if s.k_max is not None:
            return s.k_max
        if s.model == "classical":
            return max(2 * self.N, 16) if s.n_hidden is None else max(4 * s.n_hidden, 16)
        if s.model == "threshold":
            return self.N
        if s.model == "dense" and s.F != "exp":
            kh = _th.krotov_hopfield_2016(self.N, s.n)
            cap = int(min(2 ** 20, max(64, math.ceil(20 * kh))))
            return cap if s.n_hidden is None else min(cap, max(4 * s.n_hidden, 16))
        if s.model == "dendritic-ei":
            return 100 * self.N
        return 2 ** 16 if s.n_hidden is None else max(4 * s.n_hidden, 16)

    def _generator(self) -> torch.Generator:
        self.calls += 1
        return torch.Generator().manual_seed(_mix(self.spec.seed, self.N, self.calls, 31))

    def _stack(self, trials: list[int], K: list[int], rows: int | None = None):
        """Patterns (S', Km, N) of the given trials, zero-padded beyond each trial's K."""
        Km = max(K) if rows is None else rows
        out = torch.zeros(len(trials), Km, self.N, dtype=torch.float32)
        for j, (t, k) in enumerate(zip(trials, K)):
            out[j, :k] = self.banks[t].get(k)[:Km].to(torch.float32)
        if self.value_kind != self.spec.patterns:
            out = torch.where(torch.arange(Km).view(1, Km, 1) < torch.tensor(K).view(-1, 1, 1), 2.0 * out - 1.0, out)
        return out

    def _probe_index(self, trials: list[int], K: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(S', P') indices of the probed patterns and a validity mask: every pattern when K <= P,
        else P patterns drawn uniformly (the same slots for every K: floor(u K))."""
        P = self.spec.probes
        Pm = min(P, max(K))
        idx = torch.zeros(len(trials), Pm, dtype=torch.long)
        ok = torch.zeros(len(trials), Pm, dtype=torch.bool)
        for j, (t, k) in enumerate(zip(trials, K)):
            if k <= P:
                idx[j, :k] = torch.arange(k)
                ok[j, :k] = True
            else:
                idx[j] = (self.u[t, :Pm] * k).long().clamp_max(k - 1)
                ok[j] = True
        return idx, ok

    def _cues(self, trials, targets):
        S_, P_, N = targets.shape
        fl = self.flip[trials, :P_] if self.spec.flip else None
        nz = self.noise[trials, :P_] if self.noise is not None else None
        return _apply_corruption(targets, fl, self.n_occ, self.spec.noise, nz, self.value_kind,
                                 _blank_value(self.spec.model, self.value_kind))

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self, trials: list[int], K: list[int]) -> torch.Tensor:
        """Criterion value per listed trial, trial t storing K[j] patterns (hidden bits for threshold)."""
        m = self.spec.model
        if m == "classical":
            return self._eval_classical(trials, K)
        if m == "dense":
            return self._eval_dense(trials, K)
        if m == "modern":
            return self._eval_modern(trials, K)
        if m == "spherical":
            return self._eval_spherical(trials, K)
        if m == "threshold":
            return self._eval_threshold(trials, K)
        return self._eval_dendritic(trials, K)

    def _stored_counts(self, K):
        nh = self.spec.n_hidden
        return [k if nh is None else min(k, nh) for k in K]

    def _targets(self, trials, K):
        idx, ok = self._probe_index(trials, K)
        pats = self._stack(trials, K)
        targets = torch.gather(pats, 1, idx.unsqueeze(-1).expand(-1, -1, self.N))
        return pats, targets, ok

    def _score(self, final, targets, ok, binary: bool):
        """Per-trial criterion value from final states (S', P', N) and their targets."""
        c = self.spec.criterion
        okf = ok.to(final.device).to(torch.float64)
        if c == "overlap":
            if binary and self.value_kind == "pm1":
                ov = (final * targets).mean(-1)
            elif self.value_kind == "binary":
                a = self.spec.coding_level
                ov = ((final - a) * (targets - a)).mean(-1) / (a * (1 - a))
            else:
                ov = torch.nn.functional.cosine_similarity(final, targets, dim=-1)
            return (ov.to(torch.float64) * okf).sum(-1) / okf.sum(-1)
        hit = self._recovered(final, targets)
        return (hit.to(torch.float64) * okf).sum(-1) / okf.sum(-1)

    def _recovered(self, final, targets):
        kind = self.value_kind
        if kind == "pm1":  # continuous states are read out by their sign
            return (torch.where(final >= 0, 1.0, -1.0) == targets).all(-1)
        if kind == "binary":
            return ((final > 0.5).to(targets.dtype) == targets).all(-1)
        return torch.nn.functional.cosine_similarity(final, targets, dim=-1) >= 0.99

    def _eval_classical(self, trials, K):
        sp = self.spec
        H = self._stored_counts(K)
        pats = self._stack(trials, K)
        stored = pats[:, : max(H)].clone()
        for j, hcount in enumerate(H):
            stored[j, hcount:] = 0
        n_st = torch.tensor(H)
        dev = self.device
        if sp.criterion == "stability":  # every stored pattern, one matrix product
            ok = torch.arange(pats.shape[1]).unsqueeze(0) < torch.tensor(K).unsqueeze(1)
            st = classical_stable(pats.to(dev), stored.to(dev), n_st.to(dev)).cpu()
            return (st & ok).sum(-1).double() / ok.sum(-1).double()
        idx, ok = self._probe_index(trials, K)
        targets = torch.gather(pats, 1, idx.unsqueeze(-1).expand(-1, -1, self.N))
        cues = self._cues(trials, targets)
        work = _hebbian_work_dtype(self.N, max(H))
        st = stored.to(dev, work)
        T = torch.bmm(st.transpose(1, 2), st)
        T.diagonal(dim1=1, dim2=2).zero_()
        S_, P_, N = cues.shape
        row_trial = torch.arange(S_).repeat_interleave(P_)
        final, _ = classical_async_recall(T, cues.reshape(-1, N).to(dev), row_trial.to(dev), sp.max_steps, self._generator())
        return self._score(final.reshape(S_, P_, N).cpu(), targets, ok, True)

    def _eval_dense(self, trials, K):
        sp = self.spec
        H = self._stored_counts(K)
        pats, targets, ok = self._targets(trials, K)
        stored = pats[:, : max(H)]
        cues = targets if sp.criterion == "stability" else self._cues(trials, targets)
        S_, P_, N = cues.shape
        row_trial = torch.arange(S_).repeat_interleave(P_)
        steps = 1 if sp.criterion == "stability" else sp.max_steps
        dev = self.device
        final, _ = dense_async_recall(stored.to(dev), torch.tensor(H).to(dev), cues.reshape(-1, N).to(dev),
                                      row_trial.to(dev), steps, self._generator(), F=sp.F, n=sp.n, beta=sp.beta,
                                      dtype=sp.dtype)
        return self._score(final.reshape(S_, P_, N).cpu(), targets, ok, True)

    def _eval_modern(self, trials, K):
        sp = self.spec
        H = self._stored_counts(K)
        pats, targets, ok = self._targets(trials, K)
        dev, dt = self.device, sp.dtype
        stored = pats[:, : max(H)].to(dev, dt)
        cues = targets if sp.criterion == "stability" else self._cues(trials, targets)
        steps = 1 if sp.criterion == "stability" else sp.max_steps
        final = modern_recall(stored, torch.tensor(H), cues.to(dev, dt), sp.beta, steps)
        return self._score(final.cpu().float(), targets, ok, False)

    def _eval_spherical(self, trials, K):
        from .models import SphericalMemory

        sp = self.spec
        H = self._stored_counts(K)
        pats, targets, ok = self._targets(trials, K)
        cues = targets if sp.criterion == "stability" else self._cues(trials, targets)
        steps = 1 if sp.criterion == "stability" else sp.max_steps
        out = []
        for j in range(len(trials)):  # one model per trial; every cue of the trial in one batch
            m = SphericalMemory(pats[j, : H[j]], F=sp.F, n=sp.n, beta=sp.beta, dtype=sp.dtype, device=self.device)
            st = m.recall(cues[j].to(self.device, sp.dtype), max_steps=steps).state.cpu().float()
            # states live on the unit sphere: read them out at the target's norm
            st = st * targets[j].norm(dim=-1, keepdim=True)
            out.append(st)
        return self._score(torch.stack(out), targets, ok, False)

    def _eval_dendritic(self, trials, K):
        bio = _bio()
        sp = self.spec
        pats, targets, ok = self._targets(trials, K)
        cues = targets if sp.criterion == "stability" else self._cues(trials, targets)
        out = []
        for j in range(len(trials)):  # one network per trial; every cue of the trial in one batch
            m = bio.DendriticEIMemory(pats[j, : K[j]].to(self.device), n=sp.n, dendrites=sp.dendrites)
            r = m.recall(cues[j].to(self.device))
            out.append(torch.as_tensor(r.state).detach().cpu().float())
        return self._score(torch.stack(out), targets, ok, True)

    # threshold model: the load is the number of hidden bits N_h
    def _hidden_states(self, trial: int, Hb: int) -> torch.Tensor:
        """(P', Hb) binary hidden states probed at N_h = Hb: all 2^Hb of them when that is <= probes,
        else ``probes`` random states with P(1) = coding_level (fixed per trial, nested in Hb)."""
        P = self.spec.probes
        if 2 ** Hb <= P:
            codes = torch.arange(2 ** Hb).unsqueeze(1)
            return ((codes >> torch.arange(Hb)) & 1).float()
        key = (trial, "rand")
        tab = self.hidden_bits.get(key)
        if tab is None or tab.shape[1] < Hb:
            g = torch.Generator().manual_seed(_mix(self.spec.seed, trial, 37))
            width = max(Hb, 64 if tab is None else 2 * tab.shape[1])
            tab = (torch.rand(P, width, generator=g) < self.spec.coding_level).float()
            self.hidden_bits[key] = tab
        return tab[:, :Hb]

    def _eval_threshold(self, trials, K):
        sp = self.spec
        Hm = max(K)
        Pm = max(self._hidden_states(t, k).shape[0] for t, k in zip(trials, K))
        s = torch.zeros(len(trials), Pm, Hm)
        ok = torch.zeros(len(trials), Pm, dtype=torch.bool)
        for j, (t, k) in enumerate(zip(trials, K)):
            st = self._hidden_states(t, k)
            s[j, : st.shape[0], :k] = st
            ok[j, : st.shape[0]] = True
        xi = self._stack(trials, K)  # (S', Hm, N_v), rows beyond N_h zero
        dev, dt = self.device, sp.dtype
        if sp.criterion == "stability":
            # fixed point of section 5: s = Theta(J s - theta), J = xi xi^T / N_v (one matrix product)
            xi_d = xi.to(dev, torch.float64)
            J = torch.bmm(xi_d, xi_d.transpose(1, 2)) / self.N
            h = torch.bmm(s.to(dev, torch.float64), J)
            valid = (torch.arange(Hm).unsqueeze(0) < torch.tensor(K).unsqueeze(1)).to(dev).unsqueeze(1)
            agree = (((h > sp.theta).to(torch.float64) == s.to(dev, torch.float64)) | ~valid).all(-1).cpu()
            okf = ok.double()
            return ((agree.double() * okf).sum(-1) / okf.sum(-1))
        bio = _bio()
        out = []
        for j, (t, k) in enumerate(zip(trials, K)):
            tm = bio.ThresholdMemory(xi[j, :k].to(dev, dt), theta=sp.theta, tau_v=sp.tau_v, tau_h=sp.tau_h)
            sj = s[j, :, :k].to(dev, dt)
            v = tm.memory(sj)
            cue = v
            if sp.occlude or sp.noise:
                nz = None if self.noise is None else self.noise[t, : v.shape[0]].to(dev, dt)
                cue = _apply_corruption(v, None, self.n_occ, sp.noise, nz, "gaussian", 0.0)
            r = tm.recall(cue)
            hid = torch.as_tensor(r.hidden).detach().to(dev, dt)
            if sp.criterion == "recall":
                val = (hid == sj).all(-1)
            else:
                val = ((2 * hid - 1) * (2 * sj - 1)).mean(-1)
            okj = ok[j].to(dev)
            out.append(float((val.double() * okj).sum() / okj.sum()))
        return torch.tensor(out, dtype=torch.float64)


# -------------------------------------------------------------------------------------------------
# sweep + bisection
# -------------------------------------------------------------------------------------------------
def _search(exp: _Experiment, progress=None) -> tuple[list[int], list[bool], list]:
    sp = exp.spec
    S = sp.trials
    k_max = exp.k_max()
    k_min = min(sp.k_min, k_max)
    lo = [0] * S
    hi = [k_max + 1] * S
    evals = []

    def run(trials, Ks):
        vals = exp.evaluate(trials, Ks)
        for t, k, v in zip(trials, Ks, vals.tolist()):
            evals.append((t, int(k), float(v)))
            if v >= sp.threshold:
                lo[t] = max(lo[t], k)
            else:
                hi[t] = min(hi[t], k)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(N=exp.N, K=max(Ks))

    # sweep: K = k_min, k_min * growth, ... for each trial until its first failure
    k = k_min
    pending = list(range(S))
    while pending:
        run(pending, [k] * len(pending))
        pending = [t for t in pending if hi[t] > k_max]
        if k >= k_max:
            break
        k = min(k_max, max(k + 1, int(round(k * sp.growth))))
    # bisection between the last pass and the first failure
    while True:
        need = [t for t in range(S) if hi[t] <= k_max and hi[t] - lo[t] > max(1, int(sp.rel_tol * lo[t]))]
        if not need:
            break
        run(need, [(lo[t] + hi[t]) // 2 for t in need])
    censored = [hi[t] > k_max for t in range(S)]
    return lo, censored, evals


def _progress(progress, total=None):
    if progress is True:
        from tqdm import tqdm

        return tqdm(total=total, unit="eval", desc="capacity", leave=False)
    if progress is None or progress is False:
        return None
    return progress


def measure_capacity(model: str = "classical", N: int = 100, criterion: str = "stability", *,
                     progress=None, **settings) -> CapacityEstimate:
    """Estimate the capacity of ``model`` at size ``N`` (feature neurons; visible neurons N_v for the
    threshold model).

    Settings (keyword arguments; see :func:`capacity_settings`): ``threshold`` (default 0.9 for
    stability and recall, 0.97 for overlap, 0.99 for the threshold model's stability); ``patterns``
    ("pm1", "binary" with ``coding_level``, "gaussian"); corruption ``flip`` (fraction of entries
    flipped, exactly round(flip N) per cue), ``occlude`` (fraction blanked at the end), ``noise`` (std of
    additive visible noise, continuous models); model options ``n``, ``F``, ``beta``, ``n_hidden``
    (memory neurons: only the first n_hidden of the K patterns get one, KH eq. 9), ``theta``,
    ``tau_v``, ``tau_h``, ``dendrites``; search ``trials``, ``probes`` (patterns tested per trial),
    ``max_steps``, ``k_min``, ``k_max``, ``growth``, ``rel_tol``, ``seed``; ``dtype``, ``device``.
    ``progress``: True for a tqdm bar, or a tqdm instance to update.

    >>> from assocmem.capacity import measure_capacity
    >>> from assocmem.theory import most_fixed_points
    >>> est = measure_capacity("classical", 200, "stability", trials=3, seed=1)
    >>> 0.7 < est.K / most_fixed_points(200) < 1.3     # K ~ N / (2 ln N) = 18.9
    True
    """
    spec = settings.pop("_spec", None) or capacity_settings(model, criterion, **settings)
    N = _check_N(N)
    exp = _Experiment(spec, N)
    t0 = time.perf_counter()
    bar = _progress(progress)
    try:
        Kt, cens, evals = _search(exp, bar)
    finally:
        if progress is True and bar is not None:
            bar.close()
    sec = time.perf_counter() - t0
    extra = {}
    if spec.model == "threshold":
        # the load is N_h: K = 2^(mean N_h) (geometric mean over trials), spread K ln 2 std(N_h)
        bits = np.asarray(Kt, float)
        b_std = float(bits.std(ddof=1)) if len(bits) > 1 else 0.0
        extra = {"N_h": float(bits.mean()), "N_h_std": b_std, "N_h_trials": [int(b) for b in Kt]}
        Kv = np.power(2.0, bits)
        K_mean, K_std = float(2.0 ** bits.mean()), float(2.0 ** bits.mean() * math.log(2) * b_std)
    else:
        Kv = np.asarray(Kt, float)
        K_mean, K_std = float(Kv.mean()), float(Kv.std(ddof=1)) if len(Kv) > 1 else 0.0
    th = theory_capacity(spec.model, N, spec.criterion, _spec=spec)
    return CapacityEstimate(N=N, K=K_mean, K_std=K_std,
                            K_trials=[float(k) if spec.model == "threshold" else int(k) for k in Kv],
                            censored=cens, theory=th, threshold=spec.threshold, criterion=spec.criterion,
                            evaluations=evals, seconds=sec, extra=extra)


def capacity_scan(model: str = "classical", Ns: Sequence[int] = (100, 200, 400), criterion: str = "stability", *,
                  progress=None, **settings) -> CapacityReport:
    """:func:`measure_capacity` at every N of ``Ns`` with the fitted exponent of log K vs log N (sizes
    whose estimate is censored or zero are left out of the fit)."""
    spec = settings.pop("_spec", None) or capacity_settings(model, criterion, **settings)
    if isinstance(Ns, (int, np.integer)):
        Ns = [Ns]
    Ns = [_check_N(N) for N in Ns]
    if not Ns:
        raise ValueError("Ns: got an empty list; expected at least one size N")
    bar = _progress(progress)
    try:
        results = [measure_capacity(spec.model, N, spec.criterion, progress=bar, _spec=spec) for N in Ns]
    finally:
        if progress is True and bar is not None:
            bar.close()
    fit_pts = [(r.N, r.K) for r in results if not any(r.censored) and r.K > 0]
    slope, se = fit_exponent([p[0] for p in fit_pts], [p[1] for p in fit_pts])
    return CapacityReport(model=spec.model, criterion=spec.criterion, settings=spec.settings(), results=results,
                          exponent=slope, exponent_stderr=se, theory_labels=list(theory_curves(spec.model, spec.criterion, _spec=spec)))


def criterion_curve(model: str = "classical", N: int = 100, loads: Sequence[int] = (10, 20), criterion: str = "stability",
                    *, progress=None, **settings) -> torch.Tensor:
    """Criterion value at every load K of ``loads`` (hidden bits N_h for the threshold model) for every
    trial: a (len(loads), trials) float64 tensor. Each load is one batched computation over all trials."""
    spec = settings.pop("_spec", None) or capacity_settings(model, criterion, **settings)
    N = _check_N(N)
    loads = [check_int("K", k, minimum=1) for k in loads]
    if not loads:
        raise ValueError("loads: got an empty list; expected at least one K")
    exp = _Experiment(spec, N)
    trials = list(range(spec.trials))
    rows = []
    bar = _progress(progress, total=len(loads))
    for k in loads:
        rows.append(exp.evaluate(trials, [k] * len(trials)))
        if bar is not None:
            bar.update(1)
    if progress is True and bar is not None:
        bar.close()
    return torch.stack(rows)


# -------------------------------------------------------------------------------------------------
# output: CSV, JSON, PNG (each written atomically)
# -------------------------------------------------------------------------------------------------
def _atomic_write(path, data: bytes) -> None:
    from ._io import atomic_write_bytes

    atomic_write_bytes(path, data)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def report_json(report: CapacityReport) -> str:
    """The report as one JSON object: model, criterion, settings, results [{N, K, K_std, theory, ...}],
    exponent (null with fewer than two usable sizes)."""
    import json

    return json.dumps(_jsonable(report.to_dict()), allow_nan=False)


def report_csv(report: CapacityReport) -> str:
    """One row per N: N, K, K_std, theory, censored, seconds, the per-trial estimates (';'-joined) and,
    for the threshold model, the hidden bits N_h and N_h_std."""
    import csv
    import io

    extra = ["N_h", "N_h_std"] if report.model == "threshold" else []
    cols = ["N", "K", "K_std", "theory", "censored", "seconds", "K_trials"] + extra
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in report.results:
        row = r.row()
        vals = []
        for c in cols:
            v = row.get(c)
            if c == "K_trials":
                v = ";".join(f"{k:g}" for k in v)
            elif v is None:
                v = ""
            elif isinstance(v, float):
                v = f"{v:.6g}"
            vals.append(v)
        w.writerow(vals)
    return buf.getvalue()


def plot_capacity(reports: Sequence[CapacityReport], path=None, title: str | None = None, theory: bool = True,
                  labels: Sequence[str] | None = None, ax=None):
    """Measured K vs N on log-log axes, one series per report (error bars: spread over trials; an open
    marker where the estimate is censored at k_max), with the matching theory curves on the same axes.
    Writes a PNG to ``path`` atomically when given; returns the matplotlib figure."""
    import io

    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if isinstance(reports, CapacityReport):
        reports = [reports]
    own = ax is None
    fig, ax = (plt.subplots(figsize=(6.4, 4.6)) if own else (ax.figure, ax))
    Ns_all = [r.N for rep in reports for r in rep.results]
    lo, hi = min(Ns_all) / 1.3, max(Ns_all) * 1.3
    grid = np.geomspace(max(lo, 2.0), hi, 200)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, rep in enumerate(reports):
        c = colors[j % len(colors)]
        N = np.array([r.N for r in rep.results], float)
        K = np.array([r.K for r in rep.results], float)
        E = np.array([r.K_std for r in rep.results], float)
        cens = np.array([any(r.censored) for r in rep.results])
        lab = labels[j] if labels else f"{rep.model} ({rep.criterion})"
        if rep.exponent is not None:
            lab += f", slope {rep.exponent:.2f}"
        ok = K > 0
        if rep.model == "threshold":  # K = 2^(mean N_h): the spread is multiplicative, 2^(+-std N_h)
            sd = np.array([r.extra.get("N_h_std", 0.0) for r in rep.results], float)
            yerr = np.vstack([K - K * 2.0 ** -sd, K * 2.0 ** sd - K])
        else:  # on log axes a lower bar below zero cannot be drawn: cap it at 90 % of K
            yerr = np.vstack([np.minimum(E, 0.9 * K), E])
        sel = ok & ~cens
        ax.errorbar(N[sel], K[sel], yerr=yerr[:, sel], fmt="o-", color=c, capsize=3, label=lab)
        if (ok & cens).any():
            ax.plot(N[ok & cens], K[ok & cens], "^", mfc="none", color=c, label=f"{lab}: >= (k_max reached)")
        if theory:
            spec = capacity_settings(rep.model, rep.criterion, **_settings_kwargs(rep.settings))
            for k, (name, f) in enumerate(theory_curves(rep.model, rep.criterion, _spec=spec).items()):
                try:
                    y = np.asarray(f(grid), float)
                except ValueError:
                    continue
                y = np.where(y > 0, y, np.nan)
                ax.plot(grid, y, ["--", ":", "-."][k % 3], color=c, alpha=0.7, lw=1.2, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    thr = all(rep.model == "threshold" for rep in reports)
    ax.set_xlabel("N_v (visible neurons)" if thr else "N (feature neurons)")
    ax.set_ylabel("stable hidden states 2^N_h" if thr else "capacity K (stored patterns)")
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    if own:
        fig.tight_layout()
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        _atomic_write(path, buf.getvalue())
    return fig


def _settings_kwargs(settings: dict) -> dict:
    """Keyword arguments of :func:`capacity_settings` from a report's ``settings`` dict."""
    keep = {"threshold", "patterns", "coding_level", "flip", "occlude", "noise", "n", "F", "beta", "n_hidden",
            "probes", "max_steps", "k_min", "k_max", "growth", "rel_tol", "trials", "seed", "theta", "tau_v",
            "tau_h", "dendrites"}
    kw = {k: v for k, v in settings.items() if k in keep}
    if "dtype" in settings:
        kw["dtype"] = getattr(torch, settings["dtype"])
    return kw


def write_report(report: CapacityReport, out_dir) -> dict:
    """Write ``capacity.csv``, ``capacity.json`` and ``capacity.png`` into ``out_dir`` (created if
    missing), each atomically; returns name -> path. The three are rendered first, so a failure
    leaves no partial file."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    csv_text = report_csv(report)
    json_text = report_json(report)
    paths = {k: os.path.join(out_dir, f"capacity.{k}") for k in ("csv", "json", "png")}
    import io

    fig = plot_capacity([report], None, title=f"{report.model}: capacity ({report.criterion} criterion)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    _atomic_write(paths["csv"], csv_text.encode())
    _atomic_write(paths["json"], (json_text + "\n").encode())
    _atomic_write(paths["png"], buf.getvalue())
    return paths
