"""Model A, Dense Associative Memory (Krotov & Hopfield 2016; KH 2021 eq. 5-10): the memory
Lagrangian L_h = sum F(h) with F = x^n, max(x, 0)^n or exp(beta x)/beta, binary (+-1 states,
asynchronous sweeps of :mod:`assocmem.models.sweep`) or continuous (a feature Lagrangian such as
Tanh, the effective dynamics of KH eq. 1 with tau_h -> 0).
"""
from __future__ import annotations

import torch

from ..integrators import rk4_step
from .._validation import check_choice, check_int, check_positive, describe
from ..bank import check_config
from ..lagrangians import Abs, Exp, Lagrangian, Power, RectifiedPower, from_spec
from .registry import register
from .base import AssociativeMemory
from .sweep import OverlapSweeps

__all__ = ["DenseAssociativeMemory", "hidden_lagrangian", "F_CHOICES"]

#: the names of the interaction functions F of Models A and C
F_CHOICES = ("power", "rectified_power", "exp")


def hidden_lagrangian(F: str, n: int, beta: float) -> Lagrangian:
    """L_h = sum F(h) for the interaction names of Models A and C: x^n, max(x, 0)^n, exp(beta x)/beta."""
    F = check_choice("F", F, F_CHOICES)
    if F == "power":
        return Power(n)
    if F == "rectified_power":
        return RectifiedPower(n)
    return Exp(beta)


class DenseAssociativeMemory(AssociativeMemory):
    """Model A, Dense Associative Memory (Krotov & Hopfield 2016; KH eq. 8):
    ``E = -sum_mu F(xi_mu . s)`` with F = x^n (``"power"``), max(x, 0)^n (``"rectified_power"``)
    or exp(beta x)/beta (``"exp"``): the network of L_v = sum |v| and L_h = sum F(h).

    Binary by default: one ``step`` is an asynchronous sweep in which every neuron takes the sign
    that gives the lower energy (ties keep the current sign), so the energy never increases. The
    comparison is exact in integer arithmetic where it fits the float64 mantissa, otherwise normalised
    (power) or in log space (exp), so large n and beta do not overflow (see
    :mod:`assocmem.models.sweep`). Energies are returned in float64. A cue that requires grad is used
    by value (the sweep is not differentiable).

    With ``lagrangian_v`` (e.g. ``Tanh(beta=50)``) the model is continuous: the effective dynamics
    ``tau_f dv/dt = xi^T F'(xi g(v)) - v`` (KH eq. 1 with tau_h -> 0), one ``step`` being an RK4 step
    of size ``dt``; its energy is ``legendre_v(v) - sum_mu F(xi_mu . g(v))`` (KH eq. 2 at h = xi g).

    >>> import torch
    >>> from assocmem import DenseAssociativeMemory
    >>> g = torch.Generator().manual_seed(0)
    >>> xi = torch.randint(0, 2, (150, 100), generator=g).float() * 2 - 1   # K = 1.5 N
    >>> m = DenseAssociativeMemory(xi, F="power", n=3)
    >>> cue = xi[7].clone(); cue[:10] *= -1
    >>> bool((m.recall(cue, generator=g).state == xi[7]).all())
    True
    """

    def __init__(self, patterns, F: str = "power", n: int = 3, beta: float = 1.0,
                 lagrangian_v: Lagrangian | None = None, tau_f: float = 1.0, dt: float = 0.1,
                 dtype=None, device=None):
        self.binary = lagrangian_v is None
        F = check_choice("F", F, F_CHOICES)
        n = check_int("n", n, minimum=2)
        beta = float(check_positive("beta", beta))
        if lagrangian_v is not None and not isinstance(lagrangian_v, Lagrangian):
            raise TypeError(f"lagrangian_v: got {describe(lagrangian_v)}; expected a Lagrangian such as Tanh(beta=50) or None")
        super().__init__(patterns, Abs() if self.binary else lagrangian_v, hidden_lagrangian(F, n, beta),
                         dtype=dtype, device=device)
        self.F, self.n, self.beta = F, n, beta
        self.tau_f = float(check_positive("tau_f", tau_f))
        self.dt = float(check_positive("dt", dt))
        self._sweeps = None
        if self.binary:
            k = self._sweep_kernel()
            #: the sweep's arithmetic: "exact", "scaled", "log" or "direct", and its dtype
            self._mode, self._work = k.mode, k.work

    def _bank_config(self):
        tensors = {"xi": self.xi}
        lv = None if self.binary else self.lagrangian_v.spec(tensors, "lagrangian_v")
        return {"F": self.F, "n": self.n, "beta": self.beta, "tau_f": self.tau_f, "dt": self.dt, "lagrangian_v": lv}, tensors

    @classmethod
    def _from_bank(cls, config, tensors):
        c = check_config(config, ("F", "n", "beta", "tau_f", "dt", "lagrangian_v"))
        lv = None if c["lagrangian_v"] is None else from_spec(c["lagrangian_v"], tensors)
        return cls(tensors["xi"], F=c["F"], n=c["n"], beta=c["beta"], lagrangian_v=lv, tau_f=c["tau_f"], dt=c["dt"])

    # -- numerics of the declared energy ------------------------------------------------------------------
    def _memory_energy(self, h):
        if self.F == "exp":  # sum exp(beta h) / beta through log space: +inf only when the sum itself overflows
            return torch.exp(torch.logsumexp(self.beta * h, -1)) / self.beta
        return self.lagrangian_h.value(h)

    def _energy(self, x):
        if not self.binary:
            return super()._energy(x)
        # +-1 states: exact integer overlaps in float64
        return -self._memory_energy(x.to(torch.float64) @ self.xi.to(torch.float64).T)

    def _sweep_kernel(self) -> OverlapSweeps:
        xi = self._buffers["xi"]
        k = self._sweeps
        if k is None or k.device != xi.device or k.source is not xi:
            k = OverlapSweeps(xi, self.lagrangian_h)
            k.source = xi
            self._sweeps = k
        return k

    # -- continuous Model A: effective ODE of KH eq. (1) with tau_h -> 0 ------------------------------
    def _velocity(self, state):
        (v,) = state
        g = self.lagrangian_v.activation(v)
        f = self.lagrangian_h.activation(g @ self.xi.T)
        return ((f @ self.xi - v) / self.tau_f,)

    def _step(self, v, generator, clamp, cue):
        if clamp is None:
            func = self._velocity
        else:
            def func(state):
                return (self._velocity(state)[0].masked_fill(clamp, 0.0),)
        (out,) = rk4_step(func, (v,), self.dt)
        return out


register("dense", DenseAssociativeMemory, binary=True,
                  summary="Dense AM, F(x) = x^n, max(x, 0)^n or exp(beta x)/beta (KH eq. 8), binary sweeps")
register("dense-power", DenseAssociativeMemory, fixed={"F": "power"}, binary=True,
                  summary="Dense AM, F(x) = x^n (KH eq. 8), binary sweeps (KH 2016 rule)")
register("dense-exp", DenseAssociativeMemory, fixed={"F": "exp"}, binary=True,
                  summary="Dense AM, F(x) = exp(beta x) / beta, binary sweeps")
