"""What every effective model shares (KH 2021 section 3): patterns, the two Lagrangians it declares,
the effective energy derived from them, ``E(v) = L_v.legendre(v) - L_h(W g(v))`` (KH eq. 2 with the
memory currents slaved, h = W g), the two-layer network of KH eq. 1 it is the tau_h -> 0 limit of,
and the verbs ``energy``, ``step``, ``recall`` with their input checks and ``RecallResult``.
"""
from __future__ import annotations

import abc

import torch
from torch import nn

from .._kernels import half_sq_norm, max_abs_change
from .._validation import (
    all_finite,
    as_batch,
    check_int,
    check_positive,
    check_tensor,
    describe,
    guard_result,
)
from ..bank import Storable
from ..recall import RecallResult, active_rows, check_finite, recall_loop
from ..lagrangians import Lagrangian
from ..network import TwoLayerNetwork
from .sweep import run_sweeps

__all__ = ["RecallResult", "AssociativeMemory"]

# the recall loop's two per-step reductions, kept under their former names for the modules that use them
_max_abs_change = max_abs_change
_half_sq_norm = half_sq_norm


def _check_patterns(patterns, binary: bool) -> torch.Tensor:
    p = check_tensor("patterns", patterns, ndim=2, expected="shape (K, N): one stored pattern per row")
    if binary and not bool(((p == 1) | (p == -1)).all()):
        bad = p[(p != 1) & (p != -1)]
        raise ValueError(
            f"patterns: got values such as {float(bad[0])!r} in {describe(p)}; expected only -1 and +1 for a binary model"
        )
    return p


_active_rows = active_rows


class AssociativeMemory(Storable, nn.Module, abc.ABC):
    """Common verbs of every effective model: ``energy``, ``step``, ``recall``, ``as_network``.

    ``patterns`` (K, N) is stored as the buffer ``xi``. A model declares its feature and memory
    Lagrangians (``lagrangian_v``, ``lagrangian_h``, from :mod:`assocmem.lagrangians`) and its
    synapses (``xi``, or a scaled copy); the effective energy ``L_v.legendre(v) - L_h(W g(v))`` (KH
    2021 section 3) and :meth:`as_network` follow from them. Subclasses supply ``_step(x, generator,
    clamp, cue)`` on validated (B, N) batches and override only numerics (``_memory_energy`` in log
    space or float64, exact integer energies). Binary models (``binary`` true, states +-1) recall by
    the asynchronous sweeps of :mod:`assocmem.models.sweep`; they define ``_sweep_kernel()``.
    """

    binary: bool = False
    #: whether ``_step`` may write into the state it is given (asynchronous sweeps do); ``step``
    #: then hands it a copy, and skips the copy (a torch op per call) for models that never write
    _step_writes_state: bool = True
    #: the decay alpha of the feature layer in :meth:`as_network` (KH eq. 19; 1 in KH eq. 1)
    _network_alpha: float = 1.0

    def __init__(self, patterns, lagrangian_v: Lagrangian, lagrangian_h: Lagrangian, dtype: torch.dtype | None = None,
                 device=None):
        super().__init__()
        p = _check_patterns(patterns, self.binary)
        if dtype is not None or device is not None:
            p = p.to(dtype=dtype or p.dtype, device=device)
        #: dtype the patterns came in; float16/bfloat16 patterns are held and computed in float32
        #: (so that every product and sum accumulates in float32) and saved back in this dtype
        self.storage_dtype = p.dtype
        if p.dtype in (torch.float16, torch.bfloat16):
            p = p.float()
        self.register_buffer("xi", p.contiguous())
        for name, lag in (("lagrangian_v", lagrangian_v), ("lagrangian_h", lagrangian_h)):
            if not isinstance(lag, Lagrangian):
                raise TypeError(f"{name}: got {describe(lag)}; expected a Lagrangian of assocmem.lagrangians")
        #: feature-layer Lagrangian L_v (its activation g is the state's read-out)
        self.lagrangian_v = lagrangian_v
        #: memory-layer Lagrangian L_h = sum_mu F(h_mu) (or log-sum-exp for Model B)
        self.lagrangian_h = lagrangian_h

    # -- shapes and input checks --------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.xi.shape[1]

    @property
    def n_memories(self) -> int:
        return self.xi.shape[0]

    @property
    def patterns(self) -> torch.Tensor:
        return self.xi

    def _prepare(self, name: str, x) -> tuple[torch.Tensor, bool]:
        xi = self._buffers["xi"]  # not through nn.Module.__getattr__: this runs on every call
        n = xi.shape[1]
        if (type(x) is torch.Tensor and x.ndim == 2 and x.shape[1] == n and x.shape[0] > 0
                and x.dtype is xi.dtype and x.device == xi.device and all_finite(x)):
            t, single = x, False  # a ready batch: the checks below would find nothing (~20 us saved per call)
        else:
            t = check_tensor(name, x, ndim=(1, 2), expected=lambda: f"shape ({n},) or (B, {n})")
            t, single = as_batch(name, t, n)
            if t.dtype != xi.dtype or t.device != xi.device:
                t = t.to(dtype=xi.dtype, device=xi.device)
        if self.binary:
            if not bool(((t == 1) | (t == -1)).all()):
                raise ValueError(f"{name}: got {describe(x)} with entries other than -1 and +1; expected a binary (+-1) state")
            # an asynchronous sweep is not differentiable: a cue that requires grad is used by value
            t = t.detach()
        return t, single

    def _prepare_clamp(self, clamp, B: int) -> torch.Tensor | None:
        if clamp is None:
            return None
        c = check_tensor("clamp", clamp, ndim=(1, 2), floating=False, finite=False, dtype=torch.bool).to(self.xi.device)
        if c.shape[-1] != self.n_features or (c.ndim == 2 and c.shape[0] not in (1, B)):
            raise ValueError(f"clamp: got {describe(clamp)}; expected a bool mask of shape ({self.n_features},) or ({B}, {self.n_features})")
        return c.expand(B, -1) if c.ndim == 2 else c.unsqueeze(0).expand(B, -1)

    # -- the declared network: synapses, energy, two-layer network ----------------------------------
    def _synapses(self) -> torch.Tensor:
        """The synapses W of the memory currents h = W g(v) (KH eq. 1): ``xi`` unless a model scales it."""
        return self._buffers["xi"]

    def _memory_energy(self, h: torch.Tensor) -> torch.Tensor:
        """L_h(h), the memory layer's Lagrangian at the slaved currents; models override the numerics."""
        return self.lagrangian_h.value(h)

    def _energy(self, x):
        """Effective energy of validated states (B, N) -> (B,): KH eq. 2 at h = W g(v)."""
        g = self.lagrangian_v.activation(x)
        return self.lagrangian_v.legendre(x) - self._memory_energy(g @ self._synapses().T)

    def as_network(self, tau_f: float = 1.0, tau_h: float = 0.01, lagrangian_v: Lagrangian | None = None) -> TwoLayerNetwork:
        """The two-layer network (KH eq. 1) with this model's synapses and Lagrangians (``lagrangian_v``
        replaces the feature Lagrangian, e.g. ``Tanh(b)`` for a smooth binary model)."""
        lv = self.lagrangian_v if lagrangian_v is None else lagrangian_v
        return TwoLayerNetwork(self._synapses(), lv, self.lagrangian_h, tau_f=tau_f, tau_h=tau_h, alpha=self._network_alpha)

    # -- public verbs -------------------------------------------------------------------------------
    def energy(self, x) -> torch.Tensor:
        """Effective energy of each state, shape (B,) (a 0-d tensor for one state)."""
        t, single = self._prepare("x", x)
        e = guard_result("energy", self._energy(t), allow_inf=True)  # +-inf: the true value overflows
        return e[0] if single else e

    def step(self, x, generator: torch.Generator | None = None, clamp=None) -> torch.Tensor:
        """One update of every state: an asynchronous sweep (binary models) or a synchronous update.
        Binary models use a cue that requires grad by value (the sweep is not differentiable)."""
        t, single = self._prepare("x", x)
        c = self._prepare_clamp(clamp, t.shape[0])
        if self.binary:
            out = run_sweeps(self._sweep_kernel(), t, 1, generator, clamp=c).state
        else:
            out = guard_result("step", self._step(t.clone() if self._step_writes_state else t, generator, c, t))
        return out[0] if single else out

    def recall(self, cue, max_steps: int = 100, tol: float = 1e-6, clamp=None,
               generator: torch.Generator | None = None) -> RecallResult:
        """Iterate ``step`` from ``cue`` until no state changes by more than ``tol`` (binary models: a
        sweep with no flip) or ``max_steps``. ``clamp`` marks feature neurons held at their cue value.
        Energies are recorded after every step; finished states are not updated further. Binary
        models use a cue that requires grad by value (their sweeps are not differentiable): the
        result carries no graph."""
        x, single = self._prepare("cue", cue)
        max_steps = check_int("max_steps", max_steps, minimum=0)
        tol = float(check_positive("tol", tol, allow_zero=True))
        B = x.shape[0]
        c = self._prepare_clamp(clamp, B)
        cue_t = x
        if self.binary:
            return self._recall_sweeps(x, single, max_steps, tol, c, generator)
        # the one recall loop (assocmem.recall.recall_loop) for every synchronous model; models whose
        # step yields its input's energy on the way (Model B's log-sum-exp) pay for no extra energy
        return self._recall_fused(x, single, max_steps, tol, c, cue_t, generator)

    # -- binary models: the sweep engine ----------------------------------------------------------------
    def _sweep_kernel(self):
        """The sweep kernel of a binary model (:class:`~assocmem.models.sweep.OverlapSweeps` or
        :class:`~assocmem.models.sweep.FieldSweeps`)."""
        raise TypeError(f"{type(self).__name__} is not a binary model")

    def _sweep_energy(self, kernel, state) -> torch.Tensor:
        """Energy of the sweep kernel's rows (float64), from the overlaps it keeps."""
        return -self._memory_energy(kernel.overlaps(state))

    def _recall_sweeps(self, x, single, max_steps, tol, clamp, generator) -> RecallResult:
        # a sweep changes a state by 0 or by 2 in some entry: with tol >= 2 every row ends after one
        run = run_sweeps(self._sweep_kernel(), x, max_steps, generator, clamp=clamp,
                                energy=self._sweep_energy, stop_on_flip=tol < 2.0)
        if single:
            return RecallResult(run.state[0], run.steps, run.converged[0], run.energy[:, 0])
        return RecallResult(run.state, run.steps, run.converged, run.energy)

    # Models whose step computes the energy of its input on the way (Model B: the softmax's
    # log-sum-exp) set ``_fused_energy`` and define ``_step_with_energy``; recall then costs
    # ``steps`` steps, and only the final states' energy is computed, when the trace is first read.
    _fused_energy = False

    def _step_with_energy(self, x, generator, clamp, cue):
        """Return ``(next state, energy of x)``; models that set ``_fused_energy`` compute both in one
        pass, this general form evaluates them separately."""
        return self._step(x.clone(), generator, clamp, cue), self._energy(x)

    def _recall_fused(self, x, single, max_steps, tol, c, cue_t, generator) -> RecallResult:
        if not self._fused_energy:
            self._check_finite(0, x, None)  # a cue that is itself non-finite fails at step 0

        def step(xa, ca, cuea):
            return self._step_with_energy(xa, generator, ca, cuea)

        return recall_loop(step, self._energy, x, max_steps, tol, clamp=c, cue=cue_t, single=single)

    _check_finite = staticmethod(check_finite)

    def _step(self, x, generator, clamp, cue):
        """One update of validated states (B, N); binary models sweep instead."""
        raise TypeError(f"{type(self).__name__} defines no synchronous step")
