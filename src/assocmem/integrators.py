"""Integrators for the neural dynamics (KH 2021 eq. 1 and its many-layer form), picked by name from one registry.

Fixed-step ``euler`` and ``rk4`` are our own (one derivative call per stage, no extra copies);
adaptive solvers (``dopri5``, ``bosh3``, ``adaptive_heun``, ``fehlberg2``, ``dopri8``) run through
torchdiffeq. A state is a tuple of tensors; ``func(state) -> derivatives`` is autonomous.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ._validation import DivergenceError, check_choice

State = tuple[torch.Tensor, ...]
Func = Callable[[State], State]

__all__ = [
    "FIXED_STEP", "ADAPTIVE", "METHODS", "MAX_STEPS", "MAX_ADAPTIVE_STEPS",
    "euler_step", "rk4_step", "adaptive_advance", "check_method", "step_count",
]


def _axpy(y: State, k: State, dt: float) -> State:
    """y + dt k for every tensor of the state: one multi-tensor (``_foreach``) call."""
    if len(y) == 1:
        return (torch.add(y[0], k[0], alpha=dt),)
    return tuple(torch._foreach_add(list(y), list(k), alpha=dt))


def euler_step(func: Func, y: State, dt: float, k1: State | None = None) -> State:
    """y + dt f(y). ``k1`` (f at y) may be passed when already computed."""
    k1 = func(y) if k1 is None else k1
    return _axpy(y, k1, dt)


def rk4_step(func: Func, y: State, dt: float, k1: State | None = None) -> State:
    """Classical fourth-order Runge-Kutta: four derivative evaluations and fused axpy updates.

    Besides the four evaluations a step costs seven multi-tensor calls (one per stage input, four
    for ``y + dt/6 ((k1 + k4) + 2 (k2 + k3))``), whatever the number of tensors in the state."""
    k1 = func(y) if k1 is None else k1
    half = 0.5 * dt
    k2 = func(_axpy(y, k1, half))
    k3 = func(_axpy(y, k2, half))
    k4 = func(_axpy(y, k3, dt))
    if len(y) == 1:
        s = k1[0].add(k4[0])  # new buffer, reused for the weighted sum
        s.add_(k2[0].add(k3[0]), alpha=2.0)
        return (y[0].add(s, alpha=dt / 6.0),)
    s = torch._foreach_add(list(k1), list(k4))
    torch._foreach_add_(s, torch._foreach_add(list(k2), list(k3)), alpha=2.0)
    return tuple(torch._foreach_add(list(y), s, alpha=dt / 6.0))


FIXED_STEP: dict[str, Callable[..., State]] = {"euler": euler_step, "rk4": rk4_step}
ADAPTIVE: tuple[str, ...] = ("dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8")
METHODS: tuple[str, ...] = tuple(FIXED_STEP) + ADAPTIVE


def check_method(method) -> str:
    return check_choice("method", method, METHODS)


#: most steps of ``dt`` (for adaptive methods: intervals of ``dt``, each of at most
#: ``MAX_ADAPTIVE_STEPS`` solver steps) that one integration from 0 to ``t_max`` may take
MAX_STEPS = 10_000_000


def step_count(t_max: float, dt: float) -> int:
    """The number of steps of ``dt`` that cover ``[0, t_max]`` (the last one may be shorter).

    Raises ValueError naming ``dt`` and ``t_max`` when that is more than :data:`MAX_STEPS`: such an
    integration would not return in any useful time (``dt = 1e-30`` means 10^30 steps)."""
    ratio = t_max / dt
    if not ratio <= MAX_STEPS:  # also catches inf
        raise ValueError(
            f"dt, t_max: got dt = {dt:.6g} and t_max = {t_max:.6g}, i.e. {ratio:.3g} steps; expected at most "
            f"{MAX_STEPS:,} steps (assocmem.integrators.MAX_STEPS): increase dt or decrease t_max"
        )
    return max(1, math.ceil(ratio - 1e-9))


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
    opts["max_num_steps"] = MAX_ADAPTIVE_STEPS
    try:
        sol = odeint(f, tuple(y), ts, method=method, rtol=rtol, atol=atol, options=opts)
    except AssertionError as e:  # torchdiffeq's "underflow in dt" / "max_num_steps exceeded": a blow-up
        sizes = ", ".join(f"{float(s.detach().abs().max()):.3g}" if s.numel() else "empty" for s in y)
        raise DivergenceError(
            f"adaptive solver {method!r} could not advance from t = {t0:.6g} to t = {t1:.6g} ({e}): the dynamics "
            f"are blowing up (largest |value| per layer at t = {t0:.6g}: {sizes}); check that every layer's Lagrangian "
            "is convex and its activation bounded"
        ) from None
    return tuple(s[-1] for s in sol), calls[0]


#: steps an adaptive solver may take within one ``dt`` interval before the integration is declared divergent
MAX_ADAPTIVE_STEPS = 10_000


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)
