"""The general two-layer network of feature and memory neurons, KH 2021 equations (1)-(4).

    tau_f dv/dt = f @ xi - alpha v + I,   f = dL_h/dh        (KH 1, 3; alpha = 1 except Model C, KH 19)
    tau_h dh/dt = g @ xi.T - h,           g = dL_v/dv
    E = [(v - I).g - L_v] + [h.f - L_h] - f @ xi . g          (KH 2)
    dE/dt = -tau_f v'^T Hess(L_v) v' - tau_h h'^T Hess(L_h) h'  (KH 4)
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
from torch import nn

from . import integrators as _int
from ._validation import (
    DivergenceError,
    check_int,
    check_positive,
    check_tensor,
    describe,
)
from .bank import Storable, check_config, decode_scalar, encode_scalar
from .lagrangians import Lagrangian, from_spec

__all__ = ["TwoLayerNetwork", "Trajectory"]


@dataclass
class Trajectory:
    """A recorded integration. ``t`` (T,), ``v`` (T, B, N_f), ``h`` (T, B, N_h), ``energy`` (T, B);
    ``converged`` (B,) bool at the end; ``steps`` integration steps taken (intervals for adaptive
    methods); ``nfe`` derivative evaluations."""

    t: torch.Tensor
    v: torch.Tensor
    h: torch.Tensor
    energy: torch.Tensor
    converged: torch.Tensor
    steps: int
    nfe: int

    @property
    def final_v(self) -> torch.Tensor:
        return self.v[-1]

    @property
    def final_h(self) -> torch.Tensor:
        return self.h[-1]


class TwoLayerNetwork(Storable, nn.Module):
    """Feature neurons ``v`` (N_f) and memory neurons ``h`` (N_h) coupled by ``xi`` (N_h, N_f).

    Parameters
    ----------
    xi : (N_h, N_f) tensor; row mu is memory mu. An ``nn.Parameter`` is kept as one (trainable).
    lagrangian_v, lagrangian_h : :class:`~assocmem.lagrangians.Lagrangian` of each layer.
    tau_f, tau_h : positive time constants.
    input_current : optional ``I``, shape (N_f,) or (B, N_f).
    alpha : decay coefficient of the feature layer (KH 19); the energy argument of KH 4 needs
        alpha = 1 unless Hess(L_v) v = 0 (the spherical Lagrangian), where any alpha >= 0 works.

    Example
    -------
    >>> import torch
    >>> from assocmem import TwoLayerNetwork
    >>> from assocmem.lagrangians import Quadratic, LogSumExp
    >>> xi = torch.sign(torch.randn(5, 40, generator=torch.Generator().manual_seed(0)))
    >>> net = TwoLayerNetwork(xi, Quadratic(), LogSumExp(beta=1.0), tau_f=1.0, tau_h=0.1)
    >>> traj = net.simulate(xi[:2] * 0.5, t_max=20.0, dt=0.05)
    >>> bool(traj.converged.all()), torch.allclose(traj.final_v, xi[:2], atol=1e-3)
    (True, True)
    """

    def __init__(
        self,
        xi,
        lagrangian_v: Lagrangian,
        lagrangian_h: Lagrangian,
        tau_f: float = 1.0,
        tau_h: float = 1.0,
        input_current=None,
        alpha: float = 1.0,
    ):
        super().__init__()
        xi_t = check_tensor("xi", xi, ndim=2, expected="shape (N_h, N_f): one row per memory neuron")
        for name, lag in (("lagrangian_v", lagrangian_v), ("lagrangian_h", lagrangian_h)):
            if not isinstance(lag, Lagrangian):
                raise TypeError(f"{name}: got {describe(lag)}; expected an assocmem.lagrangians.Lagrangian")
        self.tau_f = check_positive("tau_f", tau_f)
        self.tau_h = check_positive("tau_h", tau_h)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        if isinstance(xi, nn.Parameter):
            self.xi = xi
        else:  # float16/bfloat16 synapses are held and integrated in float32 (float32 accumulation)
            self.register_buffer("xi", xi_t.float() if xi_t.dtype in (torch.float16, torch.bfloat16) else xi_t)
        self.lagrangian_v = lagrangian_v
        self.lagrangian_h = lagrangian_h
        if input_current is not None:
            input_current = self._check_current(input_current)
        self.register_buffer("input_current", input_current)

    # -- memory bank (what a bank stores: assocmem.bank) --------------------------------------------
    def _bank_config(self):
        tensors = {"xi": self.xi}
        cfg = {
            "lagrangian_v": self.lagrangian_v.spec(tensors, "lagrangian_v"),
            "lagrangian_h": self.lagrangian_h.spec(tensors, "lagrangian_h"),
            "tau_f": encode_scalar("tau_f", self.tau_f, tensors),
            "tau_h": encode_scalar("tau_h", self.tau_h, tensors),
            "alpha": encode_scalar("alpha", self.alpha, tensors),
            "xi_parameter": isinstance(self.xi, nn.Parameter),
            "input_current": self.input_current is not None,
        }
        if self.input_current is not None:
            tensors["input_current"] = self.input_current
        return cfg, tensors

    @classmethod
    def _from_bank(cls, config, tensors):
        c = check_config(config, ("lagrangian_v", "lagrangian_h", "tau_f", "tau_h", "alpha", "xi_parameter",
                                  "input_current"))
        xi = nn.Parameter(tensors["xi"].clone()) if c["xi_parameter"] else tensors["xi"]
        return cls(
            xi,
            from_spec(c["lagrangian_v"], tensors),
            from_spec(c["lagrangian_h"], tensors),
            tau_f=decode_scalar(c["tau_f"], tensors),
            tau_h=decode_scalar(c["tau_h"], tensors),
            alpha=decode_scalar(c["alpha"], tensors),
            input_current=tensors["input_current"] if c["input_current"] else None,
        )

    # -- shapes ----------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.xi.shape[1]

    @property
    def n_memories(self) -> int:
        return self.xi.shape[0]

    def _check_current(self, current) -> torch.Tensor:
        t = check_tensor("input_current", current, ndim=(1, 2), expected=f"shape ({self.n_features},) or (B, {self.n_features})")
        if t.shape[-1] != self.n_features:
            raise ValueError(
                f"input_current: got {describe(t)}; expected last dimension N_f = {self.n_features}"
            )
        return t.to(dtype=self.xi.dtype, device=self.xi.device)

    def _current(self, b: int | None = None):
        return self.input_current

    # -- the equations -----------------------------------------------------------------------------
    def activations(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, f) = (dL_v/dv, dL_h/dh), KH eq. (3)."""
        return self.lagrangian_v.activation(v), self.lagrangian_h.activation(h)

    def derivatives(self, v: torch.Tensor, h: torch.Tensor, clamp: torch.Tensor | None = None, out=None):
        """(dv/dt, dh/dt) of KH eq. (1). Clamped feature neurons (mask True) have dv/dt = 0.

        ``out``: an optional pair of tensors shaped like ``v`` and ``h`` that receive the derivatives
        (returned); autograd does not record writes into them."""
        g, f = self.activations(v, h)
        xi = self.xi
        tf, th, a = self.tau_f, self.tau_h, self.alpha
        if (v.ndim == 2 and h.ndim == 2 and f.ndim == 2 and g.ndim == 2
                and not isinstance(tf, torch.Tensor) and not isinstance(th, torch.Tensor) and not isinstance(a, torch.Tensor)):
            # one fused product per layer: (f xi - alpha v) / tau_f and (g xi^T - h) / tau_h
            if out is None:
                dv = torch.addmm(v, f, xi, beta=-a / tf, alpha=1.0 / tf)
                dh = torch.addmm(h, g, xi.T, beta=-1.0 / th, alpha=1.0 / th)
            else:
                dv = torch.addmm(v, f, xi, beta=-a / tf, alpha=1.0 / tf, out=out[0])
                dh = torch.addmm(h, g, xi.T, beta=-1.0 / th, alpha=1.0 / th, out=out[1])
            if self.input_current is not None:
                dv.add_(self.input_current, alpha=1.0 / tf)  # dv is this call's own buffer
        else:
            dv = f @ xi
            if a == 1.0:
                dv = dv - v
            else:
                dv = dv - a * v
            if self.input_current is not None:
                dv = dv + self.input_current
            dv = dv / tf
            dh = (g @ xi.T - h) / th
            if out is not None:
                dv, dh = out[0].copy_(dv), out[1].copy_(dh)
        if clamp is not None:
            dv = dv.masked_fill(clamp, 0.0) if out is None else dv.masked_fill_(clamp, 0.0)
        return dv, dh

    def energy(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """E(v, h) of KH eq. (2), shape (B,)."""
        g, f = self.activations(v, h)
        e = self.lagrangian_v.legendre(v) + self.lagrangian_h.legendre(h) - ((f @ self.xi) * g).sum(-1)
        if self.input_current is not None:
            e = e - (self.input_current * g).sum(-1)
        return e

    def energy_rate(self, v: torch.Tensor, h: torch.Tensor, clamp: torch.Tensor | None = None) -> torch.Tensor:
        """dE/dt from KH eq. (4): -tau_f v'^T Hess(L_v) v' - tau_h h'^T Hess(L_h) h', shape (B,)."""
        dv, dh = self.derivatives(v, h, clamp)
        return -self.tau_f * self.lagrangian_v.curvature(v, dv) - self.tau_h * self.lagrangian_h.curvature(h, dh)

    def fixed_point_residual(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per batch element, max |h - xi g| and max |alpha v - xi^T f - I| (zero at a fixed point)."""
        g, f = self.activations(v, h)
        rh = (h - g @ self.xi.T).abs().amax(-1)
        rv = self.alpha * v - f @ self.xi
        if self.input_current is not None:
            rv = rv - self.input_current
        return rh, rv.abs().amax(-1)

    # -- integration -------------------------------------------------------------------------------
    def rk4_step(self, v: torch.Tensor, h: torch.Tensor, dt: float, clamp: torch.Tensor | None = None):
        """One classical fourth-order Runge-Kutta step of KH eq. (1) from ``v`` (B, N_f) and ``h``
        (B, N_h); returns the new ``(v, h)``. ``clamp`` as in :meth:`simulate` (a bool mask).

        The arithmetic of :func:`assocmem.integrators.rk4_step` on :meth:`derivatives`, laid out for
        speed: the four stage derivatives go into one (4, M) buffer and each stage input into one
        flat buffer (M = B (N_f + N_h)), so that a stage input is one call and the weighted sum
        ``y + dt/6 (k1 + 2 k2 + 2 k3 + k4)`` is one matrix-vector product. Where autograd has to see
        the step (a parameter or the state requires grad) it is the generic step."""
        dt = float(check_positive("dt", dt))
        xi = self.xi
        if not (isinstance(v, torch.Tensor) and isinstance(h, torch.Tensor) and v.ndim == 2 and h.ndim == 2
                and v.shape[1] == xi.shape[1] and h.shape == (v.shape[0], xi.shape[0]) and v.dtype == h.dtype == xi.dtype):
            raise ValueError(
                f"v, h: got {describe(v)} and {describe(h)}; expected shapes (B, {xi.shape[1]}) and (B, {xi.shape[0]}) "
                f"in xi's dtype {xi.dtype}"
            )
        clamp = self._batch_args(clamp, v.shape[0])
        if not self._flat_ok(v, h):
            return _int.rk4_step(lambda s: self.derivatives(s[0], s[1], clamp), (v, h), dt)
        work = _rk4_work(v.shape[0], self.n_features, self.n_memories, v.dtype, v.device)
        self.derivatives(v, h, clamp, out=work.k(0))
        return work.split(self._rk4_flat(work.flat(v, h), dt, clamp, work))

    def _batch_args(self, clamp, B: int) -> torch.Tensor | None:
        """For a batch of B states: ``clamp`` as a (B, N_f) bool mask on xi's device (None stays
        None), and a check that a per-row input current has B rows; a clear error otherwise."""
        if self.input_current is not None and self.input_current.ndim == 2 and self.input_current.shape[0] not in (1, B):
            raise ValueError(f"input_current: got {describe(self.input_current)}; expected batch size {B} to match the state")
        if clamp is None:
            return None
        clamp = check_tensor("clamp", clamp, ndim=(1, 2), floating=False, finite=False, dtype=torch.bool)
        clamp = clamp.to(self.xi.device)
        if clamp.shape[-1] != self.n_features or (clamp.ndim == 2 and clamp.shape[0] not in (1, B)):
            raise ValueError(f"clamp: got {describe(clamp)}; expected a bool mask of shape ({self.n_features},) or ({B}, {self.n_features})")
        return clamp.expand(B, -1)

    def _flat_ok(self, v: torch.Tensor, h: torch.Tensor) -> bool:
        """Whether the flat-buffer RK4 step may run: nothing the step computes needs a gradient."""
        if not torch.is_grad_enabled():
            return True
        return not (v.requires_grad or h.requires_grad or _any_requires_grad(self))

    def _rk4_flat(self, y: torch.Tensor, dt: float, clamp, work: "_RK4Work") -> torch.Tensor:
        """RK4 on the flat state ``y`` (M,) whose stage-1 derivative is already in ``work.K[0]``;
        returns the new flat state (a new tensor)."""
        rows, Y, yv, yh, half = work.rows, work.Y, work.yv, work.yh, 0.5 * dt
        for i, c in ((1, half), (2, half), (3, dt)):
            torch.add(y, rows[i - 1], alpha=c, out=Y)
            self.derivatives(yv, yh, clamp, out=work.k(i))
        return torch.addmv(y, work.K.T, work.weights(dt))

    def simulate(
        self,
        v0,
        h0=None,
        t_max: float = 10.0,
        method: str = "rk4",
        dt: float | None = None,
        tol: float | None = None,
        record_every: int = 1,
        clamp=None,
        rtol: float = 1e-7,
        atol: float = 1e-9,
    ) -> Trajectory:
        """Integrate KH eq. (1) from ``v0`` (B, N_f) or (N_f,) until ``t_max`` or convergence.

        ``h0`` defaults to the memory layer's steady state for the cue, ``xi g(v0)`` (KH eq. 5).
        Fixed-step methods take steps of ``dt`` (default ``min(tau_f, tau_h) / 10``); adaptive
        methods (torchdiffeq) run with ``rtol``/``atol`` and check convergence every ``dt``.
        Integration stops early once every batch element has ``max |dv/dt|, |dh/dt| < tol``
        (default ``tol``: 1e-6 in float64, 1e-3 in float32 and below, where rounding of the currents
        alone leaves derivatives of order eps |h| / tau_h).
        ``clamp``: boolean mask (N_f,) or (B, N_f) of feature neurons held at their value in ``v0``.
        States are recorded every ``record_every`` steps, and always at the start and end.
        A non-finite state raises :class:`~assocmem.DivergenceError` naming the step and layer.
        """
        method = _int.check_method(method)
        t_max = float(check_positive("t_max", t_max))
        tau_min = float(min(float(self.tau_f), float(self.tau_h)))
        dt = tau_min / 10.0 if dt is None else float(check_positive("dt", dt))
        if tol is None:
            tol = 1e-6 if self.xi.dtype == torch.float64 else 1e-3
        tol = float(check_positive("tol", tol))
        record_every = check_int("record_every", record_every, minimum=1)
        xi = self.xi
        v0 = check_tensor("v0", v0, ndim=(1, 2), expected=f"shape ({self.n_features},) or (B, {self.n_features})")
        single = v0.ndim == 1
        v = (v0.unsqueeze(0) if single else v0).to(dtype=xi.dtype, device=xi.device)
        if v.shape[-1] != self.n_features:
            raise ValueError(f"v0: got {describe(v0)}; expected last dimension N_f = {self.n_features} (xi is {tuple(xi.shape)})")
        B = v.shape[0]
        if h0 is None:
            h = self.lagrangian_v.activation(v) @ xi.T
        else:
            h = check_tensor("h0", h0, ndim=(1, 2)).to(dtype=xi.dtype, device=xi.device)
            if h.ndim == 1:
                h = h.unsqueeze(0).expand(B, -1)
            if h.shape != (B, self.n_memories):
                raise ValueError(f"h0: got {describe(h0)}; expected shape ({B}, {self.n_memories}) to match v0 and xi")
            h = h.clone()
        clamp = self._batch_args(clamp, B)

        def func(state):
            return self.derivatives(state[0], state[1], clamp)

        # rk4 without autograd: the flat-buffer step (see rk4_step); v and h are views of one state y
        work = _rk4_work(B, self.n_features, self.n_memories, xi.dtype, xi.device) if method == "rk4" and self._flat_ok(v, h) else None
        if work is not None:
            v, h = work.split(work.flat(v, h))
        ts, vs, hs, es = [0.0], [v], [h], [self.energy(v, h)]
        self._check_finite(0, 0.0, v, h, es[0])
        n_steps = max(1, math.ceil(t_max / dt - 1e-9))
        nfe = 0
        t = 0.0
        converged = torch.zeros(B, dtype=torch.bool, device=xi.device)
        steps = 0
        adaptive = method in _int.ADAPTIVE
        stepper = None if adaptive else _int.FIXED_STEP[method]
        for k in range(1, n_steps + 1):
            k1 = func((v, h)) if work is None else self.derivatives(v, h, clamp, out=work.k(0))
            nfe += 1
            speed = torch.maximum(torch.linalg.vector_norm(k1[0], math.inf, -1), torch.linalg.vector_norm(k1[1], math.inf, -1))
            fastest = float(speed.detach().max())  # the one synchronisation per step; NaN if anything is NaN
            if fastest < tol:
                converged = speed < tol
                break
            if not math.isfinite(fastest):
                # non-finite derivatives: the state the last step produced is checked here (the
                # same step number and time as a check right after that step would report)
                self._check_finite(steps, t, v, h, None)
            step_dt = min(dt, t_max - t)
            if adaptive:
                (v, h), calls = _int.adaptive_advance(func, (v, h), t, t + step_dt, method, rtol, atol, None)
                nfe += calls
            elif work is not None:
                v, h = work.split(self._rk4_flat(v._base, step_dt, clamp, work))
                nfe += 3
            else:
                v, h = stepper(func, (v, h), step_dt, k1)
                nfe += 3 if method == "rk4" else 0
            t += step_dt
            steps = k
            if k % record_every == 0 or k == n_steps:
                e = self.energy(v, h)
                # a sum is non-finite whenever a term is: one synchronisation; the detailed check
                # (which names the layer and rows) runs only then
                if not math.isfinite(float((v.sum() + h.sum() + e.sum()).detach())):
                    self._check_finite(k, t, v, h, e)
                ts.append(t)
                vs.append(v)
                hs.append(h)
                es.append(e)
        else:
            dv, dh = func((v, h))
            nfe += 1
            converged = torch.maximum(dv.abs().amax(-1), dh.abs().amax(-1)) < tol
        if ts[-1] != t:
            ts.append(t)
            vs.append(v)
            hs.append(h)
            es.append(self.energy(v, h))
        return Trajectory(
            t=torch.tensor(ts, dtype=xi.dtype, device=xi.device),
            v=torch.stack(vs),
            h=torch.stack(hs),
            energy=torch.stack(es),
            converged=converged,
            steps=steps,
            nfe=nfe,
        )

    @staticmethod
    def _check_finite(step: int, t: float, v, h, e) -> None:
        for layer, x in (("feature layer v", v), ("memory layer h", h), ("energy", e)):
            if x is None:
                continue
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero().flatten().tolist()
                raise DivergenceError(
                    f"integration diverged at step {step} (t = {t:.6g}): non-finite values in the {layer} "
                    f"for batch element(s) {rows[:10]}{'...' if len(rows) > 10 else ''}; "
                    "reduce dt, use an adaptive method, or check that both Lagrangians are convex"
                )


def _any_requires_grad(module: nn.Module) -> bool:
    """``any(p.requires_grad for p in module.parameters())`` without building the generator chain
    (2 us of a 30 us step)."""
    for p in module._parameters.values():
        if p is not None and p.requires_grad:
            return True
    return any(m is not None and _any_requires_grad(m) for m in module._modules.values())


#: scratch of RK4 steps up to this size (bytes) is kept per thread between calls
_KEEP_SCRATCH_BYTES = 1 << 20
_scratch = threading.local()


def _rk4_work(B: int, n_f: int, n_h: int, dtype, device) -> "_RK4Work":
    """Scratch buffers for an RK4 step. Building them is ~15 tensor calls (~15 us), as much as the
    step's own overhead on a small network, so small ones (<= 1 MiB) are kept, per thread (a step
    in another thread must not write into them), the last four shapes."""
    key = (B, n_f, n_h, dtype, device)
    kept = getattr(_scratch, "works", None)
    if kept is None:
        kept = _scratch.works = {}
    work = kept.get(key)
    if work is None:
        work = _RK4Work(B, n_f, n_h, dtype, device)
        if work.K.numel() * 5 // 4 * work.K.element_size() <= _KEEP_SCRATCH_BYTES:
            if len(kept) >= 4:
                kept.pop(next(iter(kept)))
            kept[key] = work
    return work


class _RK4Work:
    """Scratch buffers of :meth:`TwoLayerNetwork.rk4_step` for batch size B: stage derivatives
    ``K`` (4, M) with (B, N_f) / (B, N_h) views per stage, one stage-input buffer ``Y`` (M,) with
    its views, and the RK4 weights per dt."""

    def __init__(self, B: int, n_f: int, n_h: int, dtype, device):
        self.s = B * n_f
        self.shapes = ((B, n_f), (B, n_h))
        M = self.s + B * n_h
        self.K = torch.empty(4, M, dtype=dtype, device=device)
        self.rows = self.K.unbind(0)
        self.kv = self.K[:, : self.s].view(4, B, n_f).unbind(0)
        self.kh = self.K[:, self.s:].view(4, B, n_h).unbind(0)
        self.Y = torch.empty(M, dtype=dtype, device=device)
        self.yv, self.yh = self.split(self.Y)
        self._w: dict[float, torch.Tensor] = {}

    def flat(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(v, h) as one flat state: the tensor they are views of when they came from :meth:`split`
        (a chain of steps), else a concatenated copy."""
        y = v._base
        if (y is not None and y is h._base and y.ndim == 1 and y.numel() == self.Y.numel()
                and v.data_ptr() == y.data_ptr() and h.data_ptr() == y.data_ptr() + self.s * y.element_size()
                and v.is_contiguous() and h.is_contiguous()):
            return y
        return torch.cat((v.reshape(-1), h.reshape(-1)))

    def k(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv[i], self.kh[i]

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (v, h) views of a flat state (contiguous, ``_base`` y: what :meth:`flat` recognises)."""
        (B, n_f), (_, n_h) = self.shapes
        o = y.storage_offset()
        return y.as_strided((B, n_f), (n_f, 1), o), y.as_strided((B, n_h), (n_h, 1), o + self.s)

    def weights(self, dt: float) -> torch.Tensor:
        w = self._w.get(dt)
        if w is None:
            if len(self._w) >= 8:
                self._w.clear()
            w = self._w[dt] = torch.tensor([dt / 6.0, dt / 3.0, dt / 3.0, dt / 6.0], dtype=self.K.dtype, device=self.K.device)
        return w
