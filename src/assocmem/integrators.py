"""Integrators for the neural dynamics, picked by name from one registry.

Fixed-step ``euler`` and ``rk4`` are our own (one derivative call per stage, no extra copies);
adaptive solvers (``dopri5``, ``bosh3``, ``adaptive_heun``, ``fehlberg2``, ``dopri8``) run through
torchdiffeq. A state is a tuple of tensors; ``func(state) -> derivatives`` is autonomous.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ._validation import check_choice

State = tuple[torch.Tensor, ...]
Func = Callable[[State], State]

__all__ = ["FIXED_STEP", "ADAPTIVE", "METHODS", "euler_step", "rk4_step", "adaptive_advance", "check_method"]


def euler_step(func: Func, y: State, dt: float, k1: State | None = None) -> State:
    """y + dt f(y). ``k1`` (f at y) may be passed when already computed."""
    k1 = func(y) if k1 is None else k1
    return tuple(torch.add(a, k, alpha=dt) for a, k in zip(y, k1))


def rk4_step(func: Func, y: State, dt: float, k1: State | None = None) -> State:
    """Classical fourth-order Runge-Kutta: four derivative evaluations and fused axpy updates."""
    k1 = func(y) if k1 is None else k1
    half = 0.5 * dt
    k2 = func(tuple(torch.add(a, k, alpha=half) for a, k in zip(y, k1)))
    k3 = func(tuple(torch.add(a, k, alpha=half) for a, k in zip(y, k2)))
    k4 = func(tuple(torch.add(a, k, alpha=dt) for a, k in zip(y, k3)))
    out = []
    for a, q1, q2, q3, q4 in zip(y, k1, k2, k3, k4):
        s = q2.add(q3)  # new buffer, reused for the weighted sum
        s.mul_(2.0).add_(q1).add_(q4)
        out.append(a.add(s, alpha=dt / 6.0))
    return tuple(out)


FIXED_STEP: dict[str, Callable[..., State]] = {"euler": euler_step, "rk4": rk4_step}
ADAPTIVE: tuple[str, ...] = ("dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8")
METHODS: tuple[str, ...] = tuple(FIXED_STEP) + ADAPTIVE


def check_method(method) -> str:
    return check_choice("method", method, METHODS)


def adaptive_advance(
    func: Func, y: State, t0: float, t1: float, method: str, rtol: float, atol: float, first_step: float | None
) -> tuple[State, int]:
    """Advance from t0 to t1 with a torchdiffeq adaptive solver. Returns the state and the number of
    function evaluations used."""
    from torchdiffeq import odeint

    calls = [0]

    def f(t, state):
        calls[0] += 1
        return func(state)

    ts = torch.tensor([t0, t1], dtype=y[0].dtype, device=y[0].device)
    opts = {"first_step": first_step} if first_step else {}
    sol = odeint(f, tuple(y), ts, method=method, rtol=rtol, atol=atol, options=opts)
    return tuple(s[-1] for s in sol), calls[0]


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)
