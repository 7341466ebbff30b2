"""Model B, the modern Hopfield network (KH 2021 eq. 11-16; Ramsauer et al. 2020): L_v = v.v/2,
L_h = logsumexp(beta h)/beta, one step ``v <- xi^T softmax(beta xi v)`` (KH eq. 16), i.e. attention,
through the retrieval engine of :mod:`assocmem.functional`.
"""
from __future__ import annotations

import torch

from ..functional import modern_energy, retrieve
from .._kernels import half_sq_norm
from .._validation import check_choice, check_positive
from ..bank import check_config
from ..lagrangians import Entmax, LogSumExp, Quadratic, Sparsemax
from .registry import register
from .base import AssociativeMemory

__all__ = ["ModernHopfield", "SEPARATIONS"]

#: separation functions of Model B: the memory Lagrangian LogSumExp, Sparsemax or Entmax
SEPARATIONS = ("softmax", "sparsemax", "entmax")


class ModernHopfield(AssociativeMemory):
    """Model B, modern Hopfield network / attention (KH eq. 11-16, Ramsauer et al. 2020).

    Energy (KH eq. 13 with inverse temperature beta): ``1/2 v.v - (1/beta) log sum_mu exp(beta xi_mu . v)``,
    the network of L_v = v.v/2 (``Quadratic``) and L_h = logsumexp(beta h)/beta (``LogSumExp``).
    One ``step`` is the update ``v <- xi^T softmax(beta xi v)`` (KH eq. 16), a concave-convex
    procedure step, so the energy never increases (also with clamped neurons).

    >>> import torch
    >>> from assocmem import ModernHopfield
    >>> g = torch.Generator().manual_seed(0)
    >>> xi = torch.randint(0, 2, (1000, 64), generator=g).float() * 2 - 1
    >>> m = ModernHopfield(xi, beta=0.5)
    >>> cue = xi[3].clone(); cue[32:] = 0                      # bottom half unknown
    >>> bool((torch.sign(m.recall(cue).state) == xi[3]).all())
    True
    """

    def __init__(self, patterns, beta: float = 1.0, dtype=None, device=None, *, separation: str = "softmax",
                 alpha: float = 1.5):
        beta = float(check_positive("beta", beta))
        separation = check_choice("separation", separation, SEPARATIONS)
        if separation == "softmax":
            lag = LogSumExp(beta)
        elif separation == "sparsemax":
            lag = Sparsemax(beta)
        else:
            lag = Entmax(alpha, beta)
        super().__init__(patterns, Quadratic(), lag, dtype=dtype, device=device)
        self.beta = beta
        #: the separation function: the memory layer's Lagrangian is LogSumExp (softmax), Sparsemax
        #: or Entmax(alpha) (Peters, Niculae & Martins 2019; Hu et al. 2023; Santos et al. 2024)
        self.separation = separation
        self.alpha = 2.0 if separation == "sparsemax" else (float(lag.alpha) if separation == "entmax" else 1.0)

    def _bank_config(self):
        if self.separation == "softmax":
            return {"beta": self.beta}, {"xi": self.xi}  # the 0.1 format, unchanged
        return {"beta": self.beta, "separation": self.separation, "alpha": self.alpha}, {"xi": self.xi}

    @classmethod
    def _from_bank(cls, config, tensors):
        c = check_config(config, ("beta",), optional=("separation", "alpha"))
        return cls(tensors["xi"], beta=c["beta"], separation=c.get("separation", "softmax"), alpha=c.get("alpha", 1.5))

    def _retrieve_kw(self):
        return {} if self.separation == "softmax" else {"separation": self.separation, "alpha": self.alpha}

    def _energy(self, x):
        if self.separation != "softmax":
            return super()._energy(x)  # 1/2 v.v - L_h(xi v) with the declared sparse Lagrangian
        # numerics: the retrieval engine's log-sum-exp (KH eq. 13), the same value as the declared energy
        return modern_energy(x, self.xi, self.beta)

    _step_writes_state = False

    def _step(self, x, generator, clamp, cue):
        out = retrieve(x, self._buffers["xi"], beta=self.beta, **self._retrieve_kw())
        if clamp is not None:
            out = torch.where(clamp, cue, out)
        return out

    _fused_energy = True

    def _step_with_energy(self, x, generator, clamp, cue):
        out, lse = retrieve(x, self.xi, beta=self.beta, return_lse=True, **self._retrieve_kw())
        if clamp is not None:
            out = torch.where(clamp, cue, out)
        e = half_sq_norm(x) - lse.to(x.dtype) / self.beta
        return out, e


register("modern", ModernHopfield, summary="modern Hopfield, v <- xi^T softmax(beta xi v) (KH eq. 16)")
