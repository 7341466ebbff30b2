"""Reference capacity formulas that the capacity lab (``assocmem.capacity``) is checked against.

Classical Hopfield: Amit, Gutfreund & Sompolinsky 1985 (0.138 N), McEliece et al. 1987
(N/(4 ln N), N/(2 ln N)); Dense AM: Krotov & Hopfield 2016, Demircigil et al. 2017; the two-layer
bound N_mem <= N_h (KH 2021 eq. 9); the threshold model's no-bit-flip bound (Kafraj, Krotov &
Latham 2026).
"""
from __future__ import annotations

import math

import numpy as np

from ._validation import check_in_range, check_int, describe

__all__ = [
    "ALPHA_AGS",
    "amit_gutfreund_sompolinsky",
    "mceliece",
    "most_fixed_points",
    "double_factorial",
    "krotov_hopfield_2016",
    "demircigil_exponent",
    "demircigil",
    "hidden_neuron_bound",
    "threshold_no_flip_bound",
    "threshold_capacity_bits",
]

#: Critical load of the Hebbian Hopfield network, K/N at which retrieval states (overlap ~0.97) vanish.
ALPHA_AGS = 0.138


def _sizes(name: str, N, minimum: float):
    """N as a float (scalar input) or float array (array input), every entry finite and >= minimum."""
    if isinstance(N, (bool, str, bytes)):
        raise TypeError(f"{name}: got {describe(N)}; expected a number or an array of numbers")
    try:
        a = np.asarray(N.detach().cpu() if hasattr(N, "detach") else N)
        if a.dtype.kind not in "iuf":
            raise TypeError
        a = a.astype(float)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: got {describe(N)}; expected a number or an array of numbers") from None
    if a.size == 0:
        raise ValueError(f"{name}: got an empty array; expected at least one size")
    if not np.all(np.isfinite(a)) or np.any(a < minimum):
        bad = a[~(np.isfinite(a) & (a >= minimum))].ravel()[0]
        raise ValueError(f"{name}: got {bad!r}; expected finite values >= {minimum:g}")
    return a


def _out(a: np.ndarray):
    return float(a) if a.ndim == 0 else a


def amit_gutfreund_sompolinsky(N):
    """``0.138 N``: the Hebbian Hopfield network retrieves its patterns with small error (final overlap
    about 0.97) up to this many random +-1 patterns (Amit, Gutfreund & Sompolinsky, Phys. Rev. Lett.
    55, 1530 (1985); replica-symmetric theory, N -> infinity). """
    return _out(ALPHA_AGS * _sizes("N", N, 1.0))


def mceliece(N):
    """``N / (4 ln N)``: with this many random +-1 patterns *every* stored pattern is a fixed point of
    the Hebbian network with probability -> 1 (McEliece, Posner, Rodemich & Venkatesh, IEEE Trans.
    Inf. Theory 33, 461 (1987)). Needs N >= 2."""
    a = _sizes("N", N, 2.0)
    return _out(a / (4.0 * np.log(a)))


def most_fixed_points(N):
    """``N / (2 ln N)``: a given (typical) stored pattern is a fixed point with probability -> 1, so
    most patterns are (McEliece et al. 1987). It is the KH2016 formula at n = 2.
    Needs N >= 2."""
    a = _sizes("N", N, 2.0)
    return _out(a / (2.0 * np.log(a)))


def double_factorial(k: int) -> int:
    """``k!! = k (k - 2) (k - 4) ...`` down to 1 or 2; ``(-1)!! = 0!! = 1``."""
    k = check_int("k", k, minimum=-1)
    out = 1
    while k > 1:
        out *= k
        k -= 2
    return out


def krotov_hopfield_2016(N, n: int):
    """``N^(n-1) / (2 (2n-3)!! ln N)``: Dense Associative Memory with F(x) = x^n stores this many random
    +-1 patterns with no errors in one-step recall from the pattern (Krotov & Hopfield, NeurIPS 2016,
    "Dense associative memory for pattern recognition", section 2).
    At n = 2 it equals :func:`most_fixed_points`. Needs N >= 2 and integer n >= 2.

    >>> round(krotov_hopfield_2016(100, 3), 1), round(krotov_hopfield_2016(100, 2), 2)
    (361.9, 10.86)
    """
    n = check_int("n", n, minimum=2)
    a = _sizes("N", N, 2.0)
    return _out(a ** (n - 1) / (2.0 * double_factorial(2 * n - 3) * np.log(a)))


def demircigil_exponent(rho: float = 0.0) -> float:
    """``alpha = I(1 - 2 rho) / 2`` with ``I(x) = ((1+x) ln(1+x) + (1-x) ln(1-x)) / 2``: Dense AM with
    F(x) = exp(x) corrects rho N flipped bits of each of ``exp(alpha' N)`` random patterns for every
    ``alpha' < alpha`` as N -> infinity (Demircigil, Heusel, Loewe, Upgang & Vermet, J. Stat. Phys. 168,
    288 (2017), theorem 3). At rho = 0, alpha = ln(2)/2: capacity 2^(N/2)."""
    rho = check_in_range("rho", rho, 0.0, 0.5, hi_open=True)
    x = 1.0 - 2.0 * rho
    t = (1.0 + x) * math.log1p(x) + ((1.0 - x) * math.log(1.0 - x) if x < 1.0 else 0.0)
    return 0.5 * t / 2.0


def demircigil(N, rho: float = 0.0):
    """``exp(alpha N)`` with ``alpha = demircigil_exponent(rho)``: the asymptotic exponential capacity of
    Dense AM with F = exp (Demircigil et al. 2017, ``K ~ exp(c N)``).
    An asymptotic rate, not a finite-N prediction: use it for the shape of the curve."""
    a = _sizes("N", N, 1.0)
    return _out(np.exp(demircigil_exponent(rho) * a))


def hidden_neuron_bound(N_h):
    """``N_h``: a two-layer network stores at most one memory per hidden (memory) neuron,
    ``N_mem <= N_h`` (KH 2021 eq. 9: ``N_mem ~ min(N_f^(n-1), N_h)``)."""
    return _out(_sizes("N_h", N_h, 1.0))


def threshold_no_flip_bound(N_v, N_h):
    """Lower bound on the probability that a binary hidden state of the threshold model is stable (no
    hidden bit flips):
    ``1 - N_h sqrt((N_h + 1) / N_v) exp(-N_v / (8 (N_h + 1))) / sqrt(pi / 2)``
    (Kafraj, Krotov & Latham, ICLR 2026, arXiv 2601.00984; Kafraj, Krotov & Latham 2026). Clipped at 0, where
    the bound says nothing. Broadcasts over arrays of N_v and N_h."""
    v = _sizes("N_v", N_v, 1.0)
    h = _sizes("N_h", N_h, 1.0)
    p = 1.0 - h * np.sqrt((h + 1.0) / v) * np.exp(-v / (8.0 * (h + 1.0))) / math.sqrt(math.pi / 2.0)
    return _out(np.clip(p, 0.0, 1.0))


def threshold_capacity_bits(N_v, p: float = 0.99, max_bits: int = 4096) -> int:
    """Largest ``N_h`` for which :func:`threshold_no_flip_bound` guarantees a stable fraction >= ``p``:
    the bound's prediction of the number of hidden bits, i.e. of ``2^N_h`` stable memories, a network
    of ``N_v`` visible neurons supports (0 when even N_h = 1 is not guaranteed). The bound falls
    monotonically with N_h, so this is a bisection."""
    v = float(_sizes("N_v", N_v, 1.0))
    p = check_in_range("p", p, 0.0, 1.0, hi_open=True)
    max_bits = check_int("max_bits", max_bits, minimum=1)
    if threshold_no_flip_bound(v, 1) < p:
        return 0
    lo, hi = 1, max_bits + 1
    if threshold_no_flip_bound(v, max_bits) >= p:
        return max_bits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if threshold_no_flip_bound(v, mid) >= p:
            lo = mid
        else:
            hi = mid
    return lo
