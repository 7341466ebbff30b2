"""The published capacities the lab compares against (``assocmem.theory``): 0.138 N and N/(2 ln N) for
the classical network, KH2016's N^(n-1) law for Dense AM with powers (KH eq. 8-9), Demircigil et
al.'s exponential law for F = exp, the threshold model's 2^N_h (Kafraj, Krotov & Latham 2026), the
N_h bound of KH eq. 9, and the fitted exponent of log K against log N."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..theory import (
    amit_gutfreund_sompolinsky,
    demircigil,
    demircigil_exponent,
    krotov_hopfield_2016,
    mceliece,
    most_fixed_points,
    threshold_capacity_bits,
)
from .settings import _check_N, _Spec, capacity_settings

__all__ = ["theory_capacity", "theory_curves", "fit_exponent"]


# -------------------------------------------------------------------------------------------------
# theory
# -------------------------------------------------------------------------------------------------
def _theory_fn(spec: _Spec) -> tuple[str, Callable] | None:
    """(label, f(N)) of the reference formula that matches the model and criterion, or None."""
    m, c = spec.model, spec.criterion
    if m == "classical":
        if c == "stability":
            return "N/(2 ln N)", most_fixed_points
        return "0.138 N (AGS)", amit_gutfreund_sompolinsky
    if m == "dense":
        if spec.F in ("power", "rectified_power"):
            n = spec.n
            return f"KH2016 N^{n - 1}/(2 ({2 * n - 3})!! ln N)", lambda N: krotov_hopfield_2016(N, n)
        if spec.beta == 1.0 and spec.occlude == 0 and spec.flip < 0.5:
            rho = spec.flip
            return f"Demircigil exp({demircigil_exponent(rho):.3f} N)", lambda N: demircigil(N, rho)
        return None
    if m == "threshold":
        p = spec.threshold  # the stability bound at the criterion's threshold
        return (f"2^N_h, bound >= {p:g}",
                lambda N: np.power(2.0, np.vectorize(lambda v: threshold_capacity_bits(v, p))(np.asarray(N, float))))
    return None


def theory_capacity(model: str, N: int, criterion: str = "stability", **settings) -> float | None:
    """The reference capacity (``assocmem.theory``) that matches ``model`` and ``criterion`` at size N,
    capped at ``n_hidden`` when given (KH eq. 9); None where no published formula applies (Model B,
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
        out["0.138 N (AGS)"] = amit_gutfreund_sompolinsky
        out["N/(2 ln N)"] = most_fixed_points
        out["N/(4 ln N) (McEliece)"] = mceliece
    else:
        t = _theory_fn(spec)
        if t is not None:
            out[t[0]] = t[1]
    if spec.n_hidden is not None:
        nh = float(spec.n_hidden)
        out[f"N_h = {spec.n_hidden} (KH eq. 9)"] = lambda N: np.full(np.shape(N), nh) if np.ndim(N) else nh
    return out



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
