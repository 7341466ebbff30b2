"""``EnergyLayer`` (alias ``AssociativeMemoryLayer``): the general two-layer network of Krotov &
Hopfield 2021 (eq. 1-2, energy eq. 2, activations eq. 3) as a trainable module with learned synapses
``xi``, integrated a fixed number of RK4/Euler steps and trained by backpropagation through the steps.
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import integrators as _int
from .._validation import check_flag, DivergenceError, check_int, check_positive, describe
from ..lagrangians import Lagrangian, LogSumExp, Quadratic
from ..network import TwoLayerNetwork

__all__ = ["EnergyOutput", "EnergyLayer", "AssociativeMemoryLayer"]


_flag = check_flag


def _shape(t) -> tuple:
    return tuple(t.shape)


# -- energy layers: the general two-layer network with learned synapses --------------------------------
class EnergyOutput(NamedTuple):
    """``v`` (B, N_f) final feature state; ``h`` (B, N_h) final memory state; ``energy`` (steps + 1, B),
    KH eq. (2) (with the input-current term) at every step."""

    v: torch.Tensor
    h: torch.Tensor
    energy: torch.Tensor


class _Positive(nn.Module):
    """Parametrization keeping a learned Lagrangian parameter positive: stored as its log."""

    def forward(self, x):
        return x.exp()

    def right_inverse(self, y):
        return y.log()


class EnergyLayer(nn.Module):
    """A :class:`~assocmem.TwoLayerNetwork` (KH eq. 1-2) with learned ``xi``, run for ``steps`` fixed steps.

    The input is the initial feature state ``v0`` (B, N_f) (the memory layer starts at its steady
    state ``xi g(v0)``, KH eq. 5), optionally with an ``input_current`` I; the output is the feature
    state after ``steps`` steps of ``method`` ('rk4' or 'euler') with step ``dt``. Gradients flow by
    backpropagation through the steps to ``xi`` and, with ``learn_lagrangians=True``, to the
    Lagrangians' ``beta``/``gamma`` (kept positive; the Lagrangians are copied first). A Lagrangian
    parameter that is already an ``nn.Parameter`` is learned as given.

    Parameters
    ----------
    n_features, n_memories : N_f and N_h.
    lagrangian_v, lagrangian_h : default ``Quadratic()`` and ``LogSumExp(beta=1)`` (Model B, KH eq. 11).
    xi : initial synapses (N_h, N_f); default normal with standard deviation ``init_std``
        (default ``1 / sqrt(n_features)``).

    Example
    -------
    >>> import torch
    >>> from assocmem.nn import EnergyLayer
    >>> layer = EnergyLayer(8, 20, steps=5, dt=0.2)
    >>> out = layer(torch.randn(3, 8), return_energy=True)
    >>> out.v.shape, out.energy.shape
    (torch.Size([3, 8]), torch.Size([6, 3]))
    """

    def __init__(
        self,
        n_features: int,
        n_memories: int,
        lagrangian_v: Lagrangian | None = None,
        lagrangian_h: Lagrangian | None = None,
        *,
        steps: int = 10,
        dt: float = 0.1,
        method: str = "rk4",
        tau_f: float = 1.0,
        tau_h: float = 0.1,
        alpha: float = 1.0,
        learn_lagrangians: bool = False,
        xi: torch.Tensor | None = None,
        init_std: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        n_features = check_int("n_features", n_features, minimum=1)
        n_memories = check_int("n_memories", n_memories, minimum=1)
        self.steps = check_int("steps", steps, minimum=1)
        self.dt = float(check_positive("dt", dt))
        self.method = _int.check_method(method)
        if self.method not in _int.FIXED_STEP:
            raise ValueError(f"method: got {method!r}; expected a fixed-step method, one of {sorted(_int.FIXED_STEP)}")
        lv = Quadratic() if lagrangian_v is None else lagrangian_v
        lh = LogSumExp(beta=1.0) if lagrangian_h is None else lagrangian_h
        for name, lag in (("lagrangian_v", lv), ("lagrangian_h", lh)):
            if not isinstance(lag, Lagrangian):
                raise TypeError(f"{name}: got {describe(lag)}; expected an assocmem.lagrangians.Lagrangian")
        if _flag("learn_lagrangians", learn_lagrangians, False):
            lv, lh = self._learnable(lv, device, dtype), self._learnable(lh, device, dtype)
        if xi is None:
            std = 1.0 / math.sqrt(n_features) if init_std is None else float(check_positive("init_std", init_std))
            xi = torch.randn(n_memories, n_features, device=device, dtype=dtype) * std
        else:
            if not isinstance(xi, torch.Tensor) or _shape(xi) != (n_memories, n_features):
                raise ValueError(f"xi: got {describe(xi)}; expected a tensor of shape ({n_memories}, {n_features}) = (n_memories, n_features)")
            xi = xi.detach().to(device=device, dtype=dtype).clone()
        self.network = TwoLayerNetwork(nn.Parameter(xi), lv, lh, tau_f=tau_f, tau_h=tau_h, alpha=alpha)

    @staticmethod
    def _learnable(lag: Lagrangian, device, dtype) -> Lagrangian:
        lag = copy.deepcopy(lag)
        for name in ("beta", "gamma"):
            if name in lag.__dict__ and not isinstance(lag.__dict__[name], torch.Tensor):
                value = float(lag.__dict__.pop(name))
                lag.register_parameter(name, nn.Parameter(torch.tensor(value, device=device, dtype=dtype or torch.get_default_dtype())))
                parametrize.register_parametrization(lag, name, _Positive())
        return lag

    @property
    def xi(self) -> nn.Parameter:
        return self.network.xi

    @property
    def n_features(self) -> int:
        return self.network.n_features

    @property
    def n_memories(self) -> int:
        return self.network.n_memories

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_memories={self.n_memories}, steps={self.steps}, dt={self.dt}, method={self.method!r}"

    def forward(self, v0: torch.Tensor, input_current: torch.Tensor | None = None, clamp: torch.Tensor | None = None,
                *, return_energy: bool = False):
        """Integrate from ``v0`` (B, N_f) or (N_f,); returns the final ``v``, or an :class:`EnergyOutput`
        with ``return_energy``. ``input_current`` (B, N_f) or (N_f,) is I of KH eq. 1; ``clamp`` a bool
        mask of feature neurons held at their value in ``v0``. A non-finite state raises
        :class:`~assocmem.DivergenceError` (outside torch.compile)."""
        net = self.network
        xi = net.xi
        N = net.n_features
        if not isinstance(v0, torch.Tensor) or v0.ndim not in (1, 2) or v0.shape[-1] != N:
            raise ValueError(f"v0: got {describe(v0)}; expected shape ({N},) or (B, {N}) with N_f = {N} (xi is {_shape(xi)})")
        single = v0.ndim == 1
        v = v0.unsqueeze(0) if single else v0
        v = v.to(dtype=xi.dtype)
        B = v.shape[0]
        current = None
        if input_current is not None:
            if not isinstance(input_current, torch.Tensor) or input_current.shape[-1] != N or input_current.ndim not in (1, 2) \
                    or (input_current.ndim == 2 and input_current.shape[0] not in (1, B)):
                raise ValueError(f"input_current: got {describe(input_current)}; expected shape ({N},) or ({B}, {N}) to match v0")
            current = input_current.to(dtype=xi.dtype)
        if clamp is not None:
            if not isinstance(clamp, torch.Tensor) or clamp.dtype != torch.bool or clamp.shape[-1] != N or clamp.ndim not in (1, 2) \
                    or (clamp.ndim == 2 and clamp.shape[0] not in (1, B)):
                raise ValueError(f"clamp: got {describe(clamp)}; expected a bool mask of shape ({N},) or ({B}, {N})")
        tau_f = net.tau_f

        def func(state):
            dv, dh = net.derivatives(state[0], state[1])
            if current is not None:
                dv = dv + current / tau_f
            if clamp is not None:
                dv = dv.masked_fill(clamp, 0.0)
            return dv, dh

        def energy(v, h):
            e = net.energy(v, h)
            if current is not None:
                e = e - (current * net.lagrangian_v.activation(v)).sum(-1)
            return e

        h = net.lagrangian_v.activation(v) @ xi.T
        step = _int.FIXED_STEP[self.method]
        energies = [energy(v, h)] if return_energy else None
        for _ in range(self.steps):
            v, h = step(func, (v, h), self.dt)
            if energies is not None:
                energies.append(energy(v, h))
        if not torch.compiler.is_compiling() and not (bool(torch.isfinite(v).all()) and bool(torch.isfinite(h).all())):
            raise DivergenceError(
                f"EnergyLayer diverged within {self.steps} steps of dt = {self.dt}: non-finite feature or memory "
                "state; reduce dt, use method='rk4', or check that both Lagrangians are convex"
            )
        if single:
            v, h = v.squeeze(0), h.squeeze(0)
        if not return_energy:
            return v
        e = torch.stack(energies)
        return EnergyOutput(v, h, e.squeeze(1) if single else e)


AssociativeMemoryLayer = EnergyLayer
"""Alias of :class:`EnergyLayer`."""
