"""The classical Hopfield network (Hopfield 1982): Model A with F(x) = x^2 (KH 2021 eq. 8, n = 2),
Hebbian couplings ``T = xi^T xi / N`` with zero diagonal, energy ``-1/2 s^T T s``, recalled by
asynchronous sweeps of the sign of the local field (:mod:`assocmem.models.sweep`).
"""
from __future__ import annotations

import math

import torch

from ..bank import check_config
from ..lagrangians import Abs, Quadratic
from .registry import register
from .base import AssociativeMemory
from .sweep import FieldSweeps, hebbian_couplings

__all__ = ["ClassicalHopfield"]


class ClassicalHopfield(AssociativeMemory):
    """Hopfield (1982): Hebbian ``T = xi^T xi / N`` with zero diagonal, energy ``-1/2 s^T T s``.

    It is Model A with F(x) = x^2 (KH eq. 8, n = 2): the network of L_v = sum |v| (``Abs``) and
    L_h = sum h^2 / 2 (``Quadratic``) with synapses xi / sqrt(N), whose energy
    ``-1/(2N) sum_mu (xi_mu . s)^2`` differs from this one by the constant ``K/2`` that the zero
    diagonal removes. One ``step`` is an asynchronous sweep (each neuron in a random order takes the
    sign of its local field; a zero field keeps it), in exact integer arithmetic. A cue that requires
    grad is used by value (the sweep is not differentiable).

    >>> import torch
    >>> from assocmem import ClassicalHopfield
    >>> g = torch.Generator().manual_seed(0)
    >>> xi = torch.randint(0, 2, (5, 100), generator=g).float() * 2 - 1
    >>> m = ClassicalHopfield(xi)
    >>> cue = xi[0].clone(); cue[:10] *= -1
    >>> bool((m.recall(cue, generator=g).state == xi[0]).all())
    True
    """

    binary = True

    def __init__(self, patterns, dtype=None, device=None):
        super().__init__(patterns, Abs(), Quadratic(), dtype=dtype, device=device)
        # integer couplings xi^T xi with zero diagonal (exact in float32 while N K < 2^23)
        self.register_buffer("_t_int", hebbian_couplings(self.xi).contiguous(), persistent=False)

    def _bank_config(self):
        return {}, {"xi": self.xi}

    @classmethod
    def _from_bank(cls, config, tensors):
        check_config(config, ())
        return cls(tensors["xi"])

    @property
    def T(self) -> torch.Tensor:
        """The synapse matrix xi^T xi / N with zero diagonal."""
        return (self._t_int / self.n_features).to(self.xi.dtype)

    def _synapses(self) -> torch.Tensor:
        return self.xi / math.sqrt(self.n_features)

    def _energy(self, x):
        # numerics: the overlaps of +-1 states are integers, exact in float64; the zero diagonal of T
        # removes sum_i T_ii s_i^2 = K N from s^T (xi^T xi) s = sum_mu h_mu^2
        h = x.to(torch.float64) @ self.xi.to(torch.float64).T
        K, N = self.xi.shape
        return -(self.lagrangian_h.value(h) - 0.5 * K * N) / N

    def _sweep_kernel(self) -> FieldSweeps:
        return FieldSweeps(self._t_int)

    def _sweep_energy(self, kernel, state) -> torch.Tensor:
        # -1/2 s^T T s / N from the local fields u = T s the kernel keeps (exact integers)
        su = (state.s.to(torch.float64) * state.u.to(torch.float64)).sum(-1)
        return -0.5 * su / self.n_features


register("classical", ClassicalHopfield, binary=True,
                  summary="Hopfield 1982, T = xi^T xi / N (KH eq. 8, n = 2), asynchronous sign sweeps")
