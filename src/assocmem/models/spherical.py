"""Model C, spherical memory (KH 2021 eq. 17-22): the feature layer is divisively normalised, L_v =
||v|| (g = v/||v||), L_h = sum F(h) as in Model A; one step ``v <- normalise(xi^T F'(xi v/||v||))``
(the tau_f = alpha = dt limit of KH eq. 22), shortened where a non-convex F would raise the energy.
"""
from __future__ import annotations

import torch

from .._validation import check_choice, check_int, check_positive
from ..bank import check_config
from ..lagrangians import Spherical
from .registry import register
from .base import AssociativeMemory
from .dense import F_CHOICES, hidden_lagrangian

__all__ = ["SphericalMemory"]


class SphericalMemory(AssociativeMemory):
    """Model C, spherical memory (KH eq. 17-22): L_v = ||v|| (g = v/||v||), L_h = sum F(h).

    Energy (KH eq. 21): ``-sum_mu F(xi_mu . v/||v||)``; it depends on the direction of v only, and
    states are kept on the unit sphere. One ``step`` is the synchronous update
    ``v <- normalise(xi^T F'(xi v/||v||))``, the tau_f = alpha = dt limit of KH eq. 22; for convex F
    it never increases the energy, and for non-convex F (odd powers) a step that would is shortened
    along the arc towards the update (halving up to 30 times), so the energy never increases.
    With ``clamp`` the clamped coordinates keep the cue's normalised values and the update moves the
    free coordinates on the remaining sphere. ``alpha`` is the decay of the continuous dynamics
    (KH eq. 19), used by :meth:`as_network`.
    """

    def __init__(self, patterns, F: str = "power", n: int = 3, alpha: float = 1.0, beta: float = 1.0,
                 dtype=None, device=None):
        F = check_choice("F", F, F_CHOICES)
        n = check_int("n", n, minimum=2)
        alpha = float(check_positive("alpha", alpha, allow_zero=True))
        beta = float(check_positive("beta", beta))
        super().__init__(patterns, Spherical(), hidden_lagrangian(F, n, beta), dtype=dtype, device=device)
        self.F, self.n, self.alpha, self.beta = F, n, alpha, beta
        self._network_alpha = alpha

    def _bank_config(self):
        return {"F": self.F, "n": self.n, "alpha": self.alpha, "beta": self.beta}, {"xi": self.xi}

    @classmethod
    def _from_bank(cls, config, tensors):
        c = check_config(config, ("F", "n", "alpha", "beta"))
        return cls(tensors["xi"], F=c["F"], n=c["n"], alpha=c["alpha"], beta=c["beta"])

    def _normalise(self, x):
        return self.lagrangian_v.activation(x)

    def _memory_energy(self, h):
        return self.lagrangian_h.value(h.to(torch.float64))  # x^n in float64: no float32 overflow

    def _energy(self, x):
        # the Legendre term of L_v = ||v|| is exactly 0 (KH eq. 20); left out so that rounding adds nothing
        return -self._memory_energy(self._normalise(x) @ self.xi.T)

    def _project(self, u, clamp, cue_dir, fallback=None):
        """Unit vector with the clamped coordinates of ``cue_dir`` and the free part along ``u``.
        Where the free part of ``u`` is zero (no direction to take), the free part of ``fallback``
        (the current state) is kept, so that the result stays a unit vector."""
        if clamp is None:
            return self._normalise(u)
        free = u.masked_fill(clamp, 0.0)
        if fallback is not None:
            none = (free == 0).all(-1, keepdim=True)
            free = torch.where(none, fallback.masked_fill(clamp, 0.0), free)
        fixed = cue_dir.masked_fill(~clamp, 0.0)
        room = torch.sqrt(torch.clamp(1.0 - (fixed * fixed).sum(-1, keepdim=True), min=0.0))
        return fixed + self._normalise(free) * room

    def _merit(self, u):
        """A monotone transform of -E for unit vectors u: log sum exp(beta h) for F = exp (no
        overflow at large beta), sum F(h) in float64 otherwise."""
        h = u @ self.xi.T
        if self.F == "exp":
            return torch.logsumexp(self.beta * h, -1)
        return self.lagrangian_h.value(h.to(torch.float64))

    def _update_direction(self, u):
        """xi^T F'(xi u) up to a positive factor per row, scaled so nothing overflows."""
        h = u @ self.xi.T
        if self.F == "exp":
            w = torch.softmax(self.beta * h, -1)
        else:
            m = h.abs().amax(-1, keepdim=True)
            w = self.lagrangian_h.activation(h / torch.where(m > 0, m, torch.ones_like(m)))
        return w @ self.xi

    def _step(self, x, generator, clamp, cue):
        cue_dir = self._normalise(cue)
        u = self._project(x, clamp, cue_dir)
        e0 = -self._merit(u)
        cand = self._project(self._update_direction(u), clamp, cue_dir, fallback=u)
        e1 = -self._merit(cand)
        bad = e1 > e0
        if bool(bad.any()):  # shorten non-descending steps along the arc (non-convex F only)
            t = 1.0
            trial = cand
            for _ in range(30):
                t *= 0.5
                trial = torch.where(bad.unsqueeze(-1), self._project(u + t * (cand - u), clamp, cue_dir, fallback=u), trial)
                cand = torch.where(bad.unsqueeze(-1), trial, cand)
                e1 = torch.where(bad, -self._merit(trial), e1)
                bad = e1 > e0
                if not bool(bad.any()):
                    break
            cand = torch.where(bad.unsqueeze(-1), u, cand)
        return cand


register("spherical", SphericalMemory,
                  summary="spherical memory, v <- normalise(xi^T F'(xi v/|v|)) (KH eq. 22)")
