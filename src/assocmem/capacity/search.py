"""The capacity search and its results: per trial, a geometric sweep of K up to the first failure of
the criterion, then bisection (``measure_capacity`` at one N, ``capacity_scan`` over several N with
the fitted exponent of log K against log N, ``criterion_curve`` at given loads)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .experiment import _Experiment
from .reference import fit_exponent, theory_capacity, theory_curves
from .._validation import check_int
from .settings import _check_N, capacity_settings

__all__ = ["CapacityEstimate", "CapacityReport", "measure_capacity", "capacity_scan", "criterion_curve"]


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
