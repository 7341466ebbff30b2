"""The recall loop shared by every synchronous model and every memory source: iterate one update
until no state moves by more than ``tol`` (or ``max_steps``), keep finished rows fixed, record the
energy trace, and stop with a DivergenceError naming the step where a state or energy blows up.

``RecallResult`` is the one result type of recall (state, steps, converged, energy); the network's
trajectories and the biologically plausible models' results extend it with their own fields.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._kernels import max_abs_change
from ._validation import DivergenceError, all_finite

__all__ = ["RecallResult", "recall_loop", "check_finite", "active_rows", "max_abs_change"]


class RecallResult:
    """Outcome of ``recall``: ``state`` (B, N) (or (N,) for one cue), ``steps`` taken, ``converged``
    (B,) bool (or a 0-d bool), ``energy`` trace (steps + 1, B) (or (steps + 1,)).

    ``energy`` may be passed as a callable that builds the trace; it is then evaluated when first
    read (Model B reuses the steps' log-sum-exps and computes only the final state's energy then),
    and that first read raises :class:`~assocmem.DivergenceError` where the final state's energy is
    NaN or +inf (a state whose magnitude overflows the dtype), as recall does for the other steps.
    Subclasses add fields (e.g. the firing rates of a biologically plausible model)."""

    __slots__ = ("state", "steps", "converged", "_energy")

    def __init__(self, state: torch.Tensor, steps: int, converged: torch.Tensor, energy):
        self.state = state
        self.steps = steps
        self.converged = converged
        self._energy = energy

    @property
    def energy(self) -> torch.Tensor:
        if callable(self._energy):
            self._energy = self._energy()
        return self._energy

    @energy.setter
    def energy(self, value) -> None:
        self._energy = value

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(state={self.state!r}, steps={self.steps}, converged={self.converged!r}, "
                f"energy={self.energy!r})")


def active_rows(converged, x, clamp, cue):
    """The rows of a recall still moving: their indices, states, clamps and cues (no copies when all are)."""
    active = (~converged).nonzero().flatten()
    if active.numel() == x.shape[0]:
        return active, x, clamp, cue
    return (active, x.index_select(0, active), None if clamp is None else clamp.index_select(0, active),
            None if cue is None else cue.index_select(0, active))


def check_finite(step: int, x: torch.Tensor | None, e: torch.Tensor | None) -> None:
    """Raise DivergenceError naming the step if the states ``x`` or energies ``e`` (either may be
    None: already checked) hold NaN or +-inf (an energy of -inf is allowed)."""
    for what, t in (("feature state", x), ("energy", e)):
        if t is None or not t.is_floating_point() or all_finite(t):
            continue
        if what == "energy" and not bool((torch.isnan(t) | (t == float("inf"))).any()):
            continue  # -inf energies are allowed
        rows = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(-1).nonzero().flatten().tolist()
        raise DivergenceError(f"recall produced non-finite values in the {what} at step {step} for batch element(s) {rows[:10]}")


def recall_loop(step_with_energy: Callable, energy: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                max_steps: int, tol: float, clamp: torch.Tensor | None = None, cue: torch.Tensor | None = None,
                single: bool = False, change: Callable = max_abs_change, result=RecallResult) -> RecallResult:
    """Iterate ``step_with_energy(x_active, clamp_active, cue_active) -> (next states, energy of the
    states given)`` from ``x`` (B, N) until every row moved by at most ``tol`` (``change``, max |dx|
    by default) or ``max_steps`` steps. Rows that converged are not updated further. The energy of
    each step's input comes from the step itself (Model B's softmax gives the log-sum-exp for free),
    so only the final states' ``energy`` is computed, when the trace is first read.

    Returns ``result(state, steps, converged, energy trace)`` (for one cue, ``single``, without the
    batch axis). Raises DivergenceError naming the step where a state or energy is NaN or +inf."""
    B = x.shape[0]
    cue = x if cue is None else cue
    converged = torch.zeros(B, dtype=torch.bool, device=x.device)
    rows = []  # rows[t]: energy of x_t for the rows still moving at step t + 1, NaN for the others
    steps = 0
    for s in range(1, max_steps + 1):
        active, xa, ca, cuea = active_rows(converged, x, clamp, cue)
        new, e_in = step_with_energy(xa, ca, cuea)
        check_finite(s - 1, None, e_in)  # xa was checked when it was produced (or validated)
        check_finite(s, new, None)
        done = change(new, xa) <= tol
        if active.numel() == B:
            rows.append(e_in)
            x, converged = new, done
        else:
            rows.append(torch.full((B,), float("nan"), dtype=e_in.dtype, device=e_in.device).index_copy(0, active, e_in))
            x = x.index_copy(0, active, new)
            converged = converged.index_copy(0, active, done)
        steps = s
        if bool(converged.all()):
            break
    if x is cue:  # no step taken: the result must not be the caller's tensor
        x = x.clone()
    final = x

    def trace() -> torch.Tensor:
        e_final = energy(final)
        check_finite(steps, None, e_final)  # the states were checked in the loop
        tr = torch.stack(rows + [e_final]) if rows else e_final.unsqueeze(0)
        tr = torch.where(torch.isnan(tr), e_final.expand_as(tr), tr)  # finished rows keep their energy
        return tr[:, 0] if single else tr

    if single:
        return result(x[0], steps, converged[0], trace)
    return result(x, steps, converged, trace)
