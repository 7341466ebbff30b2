"""The general two-layer network of feature and memory neurons, KH 2021 equations (1)-(4), as the
two-layer case of :class:`~assocmem.hierarchy.Network` (layers "v" and "h", one synapse ``xi``).

    tau_f dv/dt = f @ xi - alpha v + I,   f = dL_h/dh        (KH 1, 3; alpha = 1 except Model C, KH 19)
    tau_h dh/dt = g @ xi.T - h,           g = dL_v/dv
    E = [(v - I).g - L_v] + [h.f - L_h] - f @ xi . g          (KH 2)
    dE/dt = -tau_f v'^T Hess(L_v) v' - tau_h h'^T Hess(L_h) h'  (KH 4)

Networks of any number of layers (Krotov 2021, "Hierarchical Associative Memory") are
:class:`Network`, :class:`Layer`, :class:`Synapse` and :class:`ConvSynapse`, also importable from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .integrators import check_method, step_count
from ._validation import (
    check_int,
    check_positive,
    check_tensor,
    describe,
)
from .bank import check_config, decode_scalar, encode_scalar
from .hierarchy import ConvSynapse, Layer, Network, NetworkTrajectory, Synapse, _Syn
from .lagrangians import Lagrangian, from_spec

__all__ = ["TwoLayerNetwork", "Trajectory", "Network", "Layer", "Synapse", "ConvSynapse", "NetworkTrajectory"]


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

    @property
    def states(self) -> dict:
        """``{"v": v, "h": h}``: the trajectory as a :class:`NetworkTrajectory` names it."""
        return {"v": self.v, "h": self.h}

    @property
    def final(self) -> dict:
        return {"v": self.v[-1], "h": self.h[-1]}


class TwoLayerNetwork(Network):
    """Feature neurons ``v`` (N_f) and memory neurons ``h`` (N_h) coupled by ``xi`` (N_h, N_f).

    The :class:`Network` with layers "v" (``Layer(lagrangian_v, N_f, tau_f, alpha)``) and "h"
    (``Layer(lagrangian_h, N_h, tau_h)``) joined by ``Synapse("h", "v", xi)``: every method also
    takes the network form (a dict of states, e.g. ``net.energy({"v": v, "h": h})``; other
    arguments by keyword), and ``layers`` / ``synapses`` are views of the parameters, which live
    in ``xi``, ``lagrangian_v``, ``lagrangian_h``, ``tau_f``, ``tau_h``, ``alpha``, ``input_current``.

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
        nn.Module.__init__(self)  # the parts are the attributes below, not Network's layers / synapses
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
        self._set_topology(("v", "h"), ((xi_t.shape[1],), (xi_t.shape[0],)), (_Syn(1, 0, "dense"),))

    #: the bank's pattern tensor (Network's is "synapse0")
    _bank_patterns_key = "xi"

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

    @property
    def _shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.xi.shape[1],), (self.xi.shape[0],))

    def _parts(self):
        return ((self.lagrangian_v, self.lagrangian_h), (self.tau_f, self.tau_h), (self.alpha, 1.0), (self.xi,),
                (self.input_current, None))

    def _layer_labels(self) -> tuple[str, ...]:
        return ("feature layer v", "memory layer h")

    @property
    def layers(self) -> dict:
        """``{"v": Layer(lagrangian_v, N_f, tau_f, alpha), "h": Layer(lagrangian_h, N_h, tau_h)}``,
        built on access around this network's own parameters."""
        return {"v": Layer(self.lagrangian_v, self.n_features, self.tau_f, self.alpha),
                "h": Layer(self.lagrangian_h, self.n_memories, self.tau_h)}

    @property
    def synapses(self) -> list:
        """``[Synapse("h", "v", xi)]``, built on access around this network's ``xi``."""
        return [Synapse("h", "v", self.xi)]

    def _check_current(self, current) -> torch.Tensor:
        t = check_tensor("input_current", current, ndim=(1, 2), expected=f"shape ({self.n_features},) or (B, {self.n_features})")
        if t.shape[-1] != self.n_features:
            raise ValueError(
                f"input_current: got {describe(t)}; expected last dimension N_f = {self.n_features}"
            )
        return t.to(dtype=self.xi.dtype, device=self.xi.device)

    def _call_currents(self, input_current, B):
        """Currents of one call: None (the network's own) or the dict of the network form."""
        return None if input_current is None else self._currents(input_current, B)

    # -- the equations (two tensors, or the network form: a dict of states) ------------------------
    def activations(self, v, h=None):
        """(g, f) = (dL_v/dv, dL_h/dh), KH eq. (3)."""
        if isinstance(v, dict):
            return Network.activations(self, v)
        return self.lagrangian_v.activation(v), self.lagrangian_h.activation(h)

    def derivatives(self, v, h=None, clamp=None, out=None, *, input_current=None):
        """(dv/dt, dh/dt) of KH eq. (1). Clamped feature neurons (mask True) have dv/dt = 0.

        ``out``: an optional pair of tensors shaped like ``v`` and ``h`` that receive the derivatives
        (returned); autograd does not record writes into them. ``input_current``: a dict
        ``{"v": I}`` replacing the network's own for this call."""
        if isinstance(v, dict):
            return Network.derivatives(self, v, clamp if h is None else h, input_current)
        if input_current is not None:
            return self._derivs((v, h), None if clamp is None else (clamp, None),
                                self._currents(input_current, v.shape[0] if v.ndim == 2 else None), out)
        return self._derivs2(v, h, clamp, out, self.input_current)

    def _derivs(self, xs, clamp=None, currents=None, out=None, parts=None):
        """:meth:`Network._derivs` for two layers, written out (half the Python of the general loop
        on small networks, where that is most of a call); the same operations in the same order."""
        if (clamp is not None and clamp[1] is not None) or (currents is not None and currents[1] is not None):
            return Network._derivs(self, xs, clamp, currents, out, parts)
        return self._derivs2(xs[0], xs[1], None if clamp is None else clamp[0], out,
                             self.input_current if currents is None else currents[0])

    def _derivs2(self, v, h, clamp, out, current):
        g, f = self.lagrangian_v.activation(v), self.lagrangian_h.activation(h)
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
            if current is not None:
                dv.add_(current, alpha=1.0 / tf)  # dv is this call's own buffer
        else:
            dv = f @ xi
            if a == 1.0:
                dv = dv - v
            else:
                dv = dv - a * v
            if current is not None:
                dv = dv + current
            dv = dv / tf
            dh = (g @ xi.T - h) / th
            if out is not None:
                dv, dh = out[0].copy_(dv), out[1].copy_(dh)
        if clamp is not None:
            dv = dv.masked_fill(clamp, 0.0) if out is None else dv.masked_fill_(clamp, 0.0)
        return dv, dh

    def energy(self, v, h=None, *, input_current=None) -> torch.Tensor:
        """E(v, h) of KH eq. (2), shape (B,)."""
        if isinstance(v, dict):
            return Network.energy(self, v, input_current if h is None else h)
        if input_current is not None:
            return self._energy((v, h), self._currents(input_current, v.shape[0] if v.ndim == 2 else None))
        return self._energy((v, h))

    def _energy(self, xs, currents=None, parts=None):
        """:meth:`Network._energy` for two layers, written out (the same operations in the same order)."""
        if currents is not None and currents[1] is not None:
            return Network._energy(self, xs, currents, parts)
        v, h = xs
        g, f = self.lagrangian_v.activation(v), self.lagrangian_h.activation(h)
        e = self.lagrangian_v.legendre(v) + self.lagrangian_h.legendre(h) - ((f @ self.xi) * g).sum(-1)
        current = self.input_current if currents is None else currents[0]
        if current is not None:
            e = e - (current * g).sum(-1)
        return e

    def energy_rate(self, v, h=None, clamp=None, *, input_current=None) -> torch.Tensor:
        """dE/dt from KH eq. (4): -tau_f v'^T Hess(L_v) v' - tau_h h'^T Hess(L_h) h', shape (B,)."""
        if isinstance(v, dict):
            return Network.energy_rate(self, v, clamp if h is None else h, input_current)
        cur = self._call_currents(input_current, v.shape[0] if v.ndim == 2 else None)
        return self._energy_rate((v, h), None if clamp is None else (clamp, None), cur)

    def fixed_point_residual(self, v, h=None):
        """Per batch element, max |h - xi g| and max |alpha v - xi^T f - I| (zero at a fixed point);
        in the network form, a dict of per-layer residuals."""
        if isinstance(v, dict):
            return Network.fixed_point_residual(self, v)
        rv, rh = self._residuals((v, h))
        return rh, rv

    # -- integration -------------------------------------------------------------------------------
    def rk4_step(self, v, h=None, dt: float | None = None, clamp: torch.Tensor | None = None):
        """One classical fourth-order Runge-Kutta step of KH eq. (1) from ``v`` (B, N_f) and ``h``
        (B, N_h); returns the new ``(v, h)``. ``clamp`` as in :meth:`simulate` (a bool mask).

        The arithmetic of :func:`assocmem.integrators.rk4_step` on :meth:`derivatives`, laid out for
        speed: the four stage derivatives go into one (4, M) buffer and each stage input into one
        flat buffer (M = B (N_f + N_h)), so that a stage input is one call and the weighted sum
        ``y + dt/6 (k1 + 2 k2 + 2 k3 + k4)`` is one matrix-vector product. Where autograd has to see
        the step (a parameter or the state requires grad) it is the generic step."""
        if isinstance(v, dict):
            return Network.rk4_step(self, v, h if dt is None else dt, clamp)
        if dt is None:
            raise TypeError("rk4_step: missing dt; expected rk4_step(v, h, dt)")
        dt = float(check_positive("dt", dt))
        xi = self.xi
        if not (isinstance(v, torch.Tensor) and isinstance(h, torch.Tensor) and v.ndim == 2 and h.ndim == 2
                and v.shape[1] == xi.shape[1] and h.shape == (v.shape[0], xi.shape[0]) and v.dtype == h.dtype == xi.dtype):
            raise ValueError(
                f"v, h: got {describe(v)} and {describe(h)}; expected shapes (B, {xi.shape[1]}) and (B, {xi.shape[0]}) "
                f"in xi's dtype {xi.dtype}"
            )
        clamp = self._batch_args(clamp, v.shape[0])
        return self._rk4((v, h), dt, None if clamp is None else (clamp, None), (self.input_current, None))

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
        *,
        input_current=None,
    ) -> Trajectory:
        """Integrate KH eq. (1) from ``v0`` (B, N_f) or (N_f,) until ``t_max`` or convergence.

        ``h0`` defaults to the memory layer's steady state for the cue, ``xi g(v0)`` (KH eq. 5).
        Fixed-step methods take steps of ``dt`` (default ``min(tau_f, tau_h) / 10``); adaptive
        methods (torchdiffeq) run with ``rtol``/``atol`` and check convergence every ``dt``. At most
        :data:`assocmem.integrators.MAX_STEPS` steps: a larger ``t_max / dt`` raises ValueError.
        Integration stops early once every batch element has ``max |dv/dt|, |dh/dt| < tol``
        (default ``tol``: 1e-6 in float64, 1e-3 in float32 and below, where rounding of the currents
        alone leaves derivatives of order eps |h| / tau_h).
        ``clamp``: boolean mask (N_f,) or (B, N_f) of feature neurons held at their value in ``v0``.
        States are recorded every ``record_every`` steps, and always at the start and end.
        A non-finite state raises :class:`~assocmem.DivergenceError` naming the step and layer.
        With a dict ``v0`` (the network form, other arguments by keyword) this is
        :meth:`Network.simulate` and returns a :class:`NetworkTrajectory`.
        """
        if isinstance(v0, dict):
            if h0 is not None:
                raise TypeError("simulate: with a dict of states, give every layer in the dict and t_max and the rest by keyword")
            return Network.simulate(self, v0, t_max=t_max, method=method, dt=dt, tol=tol, record_every=record_every,
                                    clamp=clamp, input_current=input_current, rtol=rtol, atol=atol)
        method = check_method(method)
        t_max = float(check_positive("t_max", t_max))
        dt = self._default_dt() if dt is None else float(check_positive("dt", dt))
        step_count(t_max, dt)
        if tol is not None:
            check_positive("tol", tol)
        check_int("record_every", record_every, minimum=1)
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
        currents = self._currents(input_current, B)
        ts, (vs, hs), es, converged, steps, nfe = self._integrate(
            (v, h), t_max, method, dt, tol, record_every, None if clamp is None else (clamp, None), currents, rtol, atol)
        return Trajectory(t=ts, v=torch.stack(vs), h=torch.stack(hs), energy=torch.stack(es), converged=converged,
                          steps=steps, nfe=nfe)
