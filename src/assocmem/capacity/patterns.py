"""Random patterns and corrupted cues of the capacity lab: +-1, {0, 1} with a coding level, or Gaussian
patterns, flipped, occluded or noisy cues, and the nested pattern banks that give a trial the same
pattern mu whatever K is asked (so that the criterion is monotone in K up to sampling)."""
from __future__ import annotations

import torch

from .._validation import check_choice, check_in_range, check_int, check_positive, check_tensor

__all__ = ["PATTERN_KINDS", "random_patterns", "corrupt"]

PATTERN_KINDS = ("pm1", "binary", "gaussian")
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
