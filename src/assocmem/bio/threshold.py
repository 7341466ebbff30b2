"""The threshold model of Kafraj, Krotov & Latham (ICLR 2026): a two-layer network whose hidden layer
is a Heaviside threshold, so a memory is a binary combination of hidden neurons (Kafraj, Krotov & Latham 2026).
It is KH eq. (1) after the change of variables v = sqrt(N_v/N_h) u (see :class:`ThresholdMemory`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..bank import Storable, check_config
from ..recall import RecallResult
from .._validation import check_in_range, check_int, check_positive, check_tensor, describe
from ..lagrangians import Heaviside, Quadratic
from ..network import TwoLayerNetwork
from ._threads import single_thread_if_small

__all__ = ["ThresholdMemory", "ThresholdRecallResult", "stability_bound", "MAX_ENUMERATED_HIDDEN"]

#: exhaustive enumeration of the 2^N_h binary hidden states is refused above this many hidden units
MAX_ENUMERATED_HIDDEN = 24


def stability_bound(n_visible: int, n_hidden: int) -> float:
    """Kafraj, Krotov & Latham's lower bound on the probability that a binary hidden state has no
    unstable bit (Kafraj, Krotov & Latham 2026), clipped to [0, 1]:
    ``1 - N_h sqrt((N_h+1)/N_v) exp(-N_v / (8 (N_h+1))) / sqrt(pi/2)``."""
    n_v = check_int("n_visible", n_visible, minimum=1)
    n_h = check_int("n_hidden", n_hidden, minimum=1)
    p = 1.0 - n_h * math.sqrt((n_h + 1) / n_v) * math.exp(-n_v / (8.0 * (n_h + 1))) / math.sqrt(math.pi / 2)
    return min(1.0, max(0.0, p))


class ThresholdRecallResult(RecallResult):
    """Outcome of :meth:`ThresholdMemory.recall`, a :class:`~assocmem.recall.RecallResult`:
    ``state`` the visible currents v (B, N_v) at the end, ``steps`` integration steps,
    ``converged`` (B,) bool, ``energy`` (T, B) the energy of KH eq. (2) of the equivalent network
    at the recorded times (non-increasing); and ``hidden`` the binary hidden state Θ(h - θ)
    (B, N_h), ``t`` (T,) the recorded times. A single cue (N_v,) gives unbatched tensors."""

    __slots__ = ("hidden", "t")

    def __init__(self, state, hidden, converged, steps, t, energy):
        super().__init__(state, steps, converged, energy)
        self.hidden = hidden
        self.t = t


def _binary(name: str, s, n: int) -> tuple[torch.Tensor, bool]:
    t = check_tensor(name, s, ndim=(1, 2), expected=f"binary hidden states of shape ({n},) or (B, {n})")
    single = t.ndim == 1
    t = t.unsqueeze(0) if single else t
    if t.shape[-1] != n:
        raise ValueError(f"{name}: got {describe(t)}; expected last dimension N_h = {n}")
    if not bool(((t == 0) | (t == 1)).all()):
        bad = t[(t != 0) & (t != 1)][0]
        raise ValueError(f"{name}: got the value {float(bad)!r}; expected binary hidden states with entries 0 and 1")
    return t, single


class ThresholdMemory(Storable, nn.Module):
    """Threshold associative memory (Kafraj, Krotov & Latham 2026), with ``xi`` (N_h, N_v):

        tau_v dv_i/dt  = -v_i  + (1/sqrt(N_h)) sum_mu xi_{mu i} Θ(h_mu - θ)
        tau_h dh_mu/dt = -h_mu + (sqrt(N_h)/N_v) sum_i xi_{mu i} v_i

    With ``v = c u``, ``c = sqrt(N_v/N_h)``, these are KH eq. (1) with symmetric synapses
    ``xi / sqrt(N_v)``, ``L_v = sum u^2/2`` and ``L_h = sum max(h - θ, 0)`` (activation Θ(h - θ)):
    ``tau_v du/dt = Θ(h - θ) @ (xi/sqrt(N_v)) - u`` and ``tau_h dh/dt = u @ (xi/sqrt(N_v)).T - h``.
    Both Lagrangians are convex, so the energy of KH eq. (2) never increases; the integration is
    done by :class:`~assocmem.TwoLayerNetwork` (``self.network``). A fixed point has
    ``s = Θ(J s - θ)`` with ``J = xi xi^T / N_v``, and visible memory ``v = xi^T s / sqrt(N_h)``.

    >>> import torch
    >>> from assocmem.bio import ThresholdMemory
    >>> tm = ThresholdMemory.random(800, 8, generator=torch.Generator().manual_seed(0))
    >>> s = torch.tensor([[1., 0., 1., 1., 0., 0., 1., 0.]])
    >>> bool(tm.is_stable(s).all())
    True
    >>> noisy = tm.memory(s) + 2.0 * torch.randn(1, 800, generator=torch.Generator().manual_seed(1))
    >>> bool((tm.recall(noisy).hidden == s).all())
    True
    """

    def __init__(self, xi, theta: float = 0.5, tau_v: float = 20.0, tau_h: float = 1.0):
        super().__init__()
        xi = check_tensor("xi", xi, ndim=2, expected="shape (N_h, N_v): one row per hidden neuron")
        self.register_buffer("xi", xi.detach().clone())
        self.theta = check_in_range("theta", theta, 0.0, 1.0, lo_open=True, hi_open=True)
        self.tau_v = float(check_positive("tau_v", tau_v))
        self.tau_h = float(check_positive("tau_h", tau_h))

    @classmethod
    def random(cls, n_visible: int, n_hidden: int, generator: torch.Generator | None = None, *,
               theta: float = 0.5, tau_v: float = 20.0, tau_h: float = 1.0,
               dtype: torch.dtype = torch.float32, device=None) -> "ThresholdMemory":
        """``xi`` i.i.d. standard normal, shape (n_hidden, n_visible)."""
        n_v = check_int("n_visible", n_visible, minimum=1)
        n_h = check_int("n_hidden", n_hidden, minimum=1)
        xi = torch.randn(n_h, n_v, generator=generator, dtype=dtype)
        return cls(xi.to(device) if device is not None else xi, theta=theta, tau_v=tau_v, tau_h=tau_h)

    # -- shapes and the equivalent network ----------------------------------------------------------
    @property
    def n_visible(self) -> int:
        return self.xi.shape[1]

    @property
    def n_hidden(self) -> int:
        return self.xi.shape[0]

    @property
    def scale(self) -> float:
        """c = sqrt(N_v / N_h): visible currents are v = c u, u those of the KH network."""
        return math.sqrt(self.n_visible / self.n_hidden)

    @property
    def J(self) -> torch.Tensor:
        """The hidden-to-hidden coupling at the fixed point, ``xi xi^T / N_v`` (N_h, N_h)."""
        return self.xi @ self.xi.T / self.n_visible

    @property
    def network(self) -> TwoLayerNetwork:
        """The KH eq. (1) network in the variables (u, h): synapses xi/sqrt(N_v), L_v quadratic,
        L_h = sum max(h - θ, 0), time constants (tau_v, tau_h)."""
        return TwoLayerNetwork(self.xi / math.sqrt(self.n_visible), Quadratic(), Heaviside(self.theta),
                               tau_f=self.tau_v, tau_h=self.tau_h)

    def derivatives(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dv/dt, dh/dt) written straight from the equations of Kafraj, Krotov & Latham 2026 (a reference
        for the change of variables; :meth:`recall` integrates the equivalent network)."""
        n_h, n_v = self.xi.shape
        s = (h > self.theta).to(h.dtype)
        dv = (-v + s @ self.xi / math.sqrt(n_h)) / self.tau_v
        dh = (-h + math.sqrt(n_h) / n_v * v @ self.xi.T) / self.tau_h
        return dv, dh

    # -- memories and their stability -------------------------------------------------------------
    def _visible(self, name: str, v) -> tuple[torch.Tensor, bool]:
        t = check_tensor(name, v, ndim=(1, 2), expected=f"visible states of shape ({self.n_visible},) or (B, {self.n_visible})")
        single = t.ndim == 1
        t = t.unsqueeze(0) if single else t
        if t.shape[-1] != self.n_visible:
            raise ValueError(f"{name}: got {describe(t)}; expected last dimension N_v = {self.n_visible}")
        return t.to(dtype=self.xi.dtype, device=self.xi.device), single

    def memory(self, s) -> torch.Tensor:
        """Visible memory of binary hidden states ``s`` (B, N_h): ``xi^T s / sqrt(N_h)``, (B, N_v)."""
        t, single = _binary("s", s, self.n_hidden)
        out = t.to(dtype=self.xi.dtype, device=self.xi.device) @ self.xi / math.sqrt(self.n_hidden)
        return out[0] if single else out

    def hidden_input(self, v) -> torch.Tensor:
        """Steady-state hidden currents for visible ``v``: ``h = (sqrt(N_h)/N_v) xi v``, (B, N_h)."""
        t, single = self._visible("v", v)
        out = t @ self.xi.T * (math.sqrt(self.n_hidden) / self.n_visible)
        return out[0] if single else out

    def encode(self, v) -> torch.Tensor:
        """Binary hidden state the visible ``v`` switches on: ``Θ(h(v) - θ)``, (B, N_h)."""
        return (self.hidden_input(v) > self.theta).to(self.xi.dtype)

    def is_stable(self, s) -> torch.Tensor:
        """(B,) bool: True where the binary hidden state ``s`` is a fixed point, ``s = Θ(J s - θ)``.
        Such a fixed point is stable: the Jacobian there is -diag(1/tau_v, 1/tau_h) (Θ' = 0)."""
        t, single = _binary("s", s, self.n_hidden)
        t = t.to(dtype=self.xi.dtype, device=self.xi.device)
        ok = ((t @ self.J > self.theta).to(t.dtype) == t).all(-1)
        return ok[0] if single else ok

    def all_states(self) -> torch.Tensor:
        """Every binary hidden state, (2^N_h, N_h), in binary counting order. Refused (ValueError)
        for N_h > 24 (more than 16.7 million states): sample states instead."""
        n = self.n_hidden
        if n > MAX_ENUMERATED_HIDDEN:
            raise ValueError(
                f"n_hidden: got N_h = {n}; exhaustive enumeration of the 2^N_h hidden states needs N_h <= "
                f"{MAX_ENUMERATED_HIDDEN}; sample states instead, e.g. "
                "stable_fraction(states=torch.randint(0, 2, (100000, N_h)))"
            )
        codes = torch.arange(2**n, device=self.xi.device)
        bits = 2 ** torch.arange(n - 1, -1, -1, device=self.xi.device)
        return ((codes.unsqueeze(-1) & bits) > 0).to(self.xi.dtype)

    def stable_fraction(self, states=None, chunk: int = 65536) -> float:
        """Fraction of binary hidden states that are fixed points: all 2^N_h of them (N_h <= 24) or
        the given (B, N_h) sample."""
        chunk = check_int("chunk", chunk, minimum=1)
        if states is None:
            if self.n_hidden > MAX_ENUMERATED_HIDDEN:
                self.all_states()  # raises the explanatory error
            total, stable = 2**self.n_hidden, 0
            n = self.n_hidden
            bits = 2 ** torch.arange(n - 1, -1, -1, device=self.xi.device)
            J = self.J
            for start in range(0, total, chunk):
                codes = torch.arange(start, min(total, start + chunk), device=self.xi.device)
                s = ((codes.unsqueeze(-1) & bits) > 0).to(self.xi.dtype)
                stable += int(((s @ J > self.theta).to(s.dtype) == s).all(-1).sum())
            return stable / total
        t, _ = _binary("states", states, self.n_hidden)
        return float(self.is_stable(t).to(torch.float64).mean())

    # -- recall -------------------------------------------------------------------------------------
    def recall(self, cue=None, t_max: float | None = None, dt: float | None = None, method: str = "rk4",
               tol: float | None = None, h0=None, *, v0=None) -> ThresholdRecallResult:
        """Run the dynamics from the visible currents ``cue`` (B, N_v) (``v0=`` is the older spelling) (hidden currents start at their
        steady state for ``v0`` unless ``h0`` is given) until every state has converged or ``t_max``
        (default ``40 tau_v``). ``dt`` defaults to ``min(tau_v, tau_h) / 2`` (RK4 is accurate there: the fastest rate is 1/tau_h); ``tol`` bounds
        ``|du/dt|`` and ``|dh/dt|`` at convergence (TwoLayerNetwork.simulate's default)."""
        if v0 is not None:
            if cue is not None:
                raise TypeError("recall: got both cue and v0 (the older name of cue); pass one")
            cue = v0
        if cue is None:
            raise TypeError("recall: missing the cue (visible currents of shape (N_v,) or (B, N_v))")
        v, single = self._visible("cue", cue)
        t_max = 40.0 * self.tau_v if t_max is None else float(check_positive("t_max", t_max))
        dt = min(self.tau_v, self.tau_h) / 2.0 if dt is None else float(check_positive("dt", dt))
        c = self.scale
        net = self.network
        if h0 is not None:
            h0 = check_tensor("h0", h0, ndim=(1, 2))
        with single_thread_if_small(v.shape[0] * self.n_visible * self.n_hidden):
            traj = net.simulate(v / c, h0=h0, t_max=t_max, dt=dt, method=method, tol=tol,
                                record_every=max(1, int(round(self.tau_v / dt))))
        state = traj.final_v * c
        hidden = (traj.final_h > self.theta).to(self.xi.dtype)
        if single:
            return ThresholdRecallResult(state[0], hidden[0], traj.converged[0], traj.steps, traj.t, traj.energy[:, 0])
        return ThresholdRecallResult(state, hidden, traj.converged, traj.steps, traj.t, traj.energy)

    # -- learning -----------------------------------------------------------------------------------
    def fit(self, images, epochs: int = 10, lr: float = 1e-2, batch_size: int = 128, beta: float = 50.0,
            n_passes: int = 2, generator: torch.Generator | None = None, progress: bool = True) -> list[float]:
        """Learn ``xi`` so that the network reconstructs ``images`` (n, N_v), with the steep sigmoid
        ``sigma(beta (h - θ))`` in place of Θ (Kafraj, Krotov & Latham 2026). One pass maps visible ``x`` to
        ``s = sigma(beta (h(x) - θ))`` (the hidden steady state) and back to ``x' = xi^T s / sqrt(N_h)``
        (the visible steady state); ``n_passes`` passes are unrolled from the image and each
        reconstruction's squared error to the image is averaged, so the image's hidden code is also
        trained to be self-consistent (a fixed point). Adam, mini-batches drawn with ``generator``.
        Returns the mean loss of every epoch; ``xi`` is updated in place."""
        x = check_tensor("images", images, ndim=2, expected=f"shape (n, {self.n_visible}): one image per row")
        if x.shape[1] != self.n_visible:
            raise ValueError(f"images: got {describe(x)}; expected {self.n_visible} columns (N_v)")
        epochs = check_int("epochs", epochs, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        n_passes = check_int("n_passes", n_passes, minimum=1)
        lr = float(check_positive("lr", lr))
        beta = float(check_positive("beta", beta))
        x = x.to(dtype=self.xi.dtype, device=self.xi.device)
        n_h, n_v = self.xi.shape
        enc, dec = math.sqrt(n_h) / n_v, 1.0 / math.sqrt(n_h)
        xi = self.xi.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([xi], lr=lr)
        history: list[float] = []
        from tqdm.auto import tqdm

        bar = tqdm(range(epochs), desc="ThresholdMemory.fit", disable=not progress)
        for _ in bar:
            order = torch.randperm(x.shape[0], generator=generator).to(x.device)
            total, count = 0.0, 0
            for start in range(0, x.shape[0], batch_size):
                xb = x.index_select(0, order[start:start + batch_size])
                cur, loss = xb, 0.0
                for _p in range(n_passes):
                    s = torch.sigmoid(beta * (enc * cur @ xi.T - self.theta))
                    cur = dec * s @ xi
                    loss = loss + ((cur - xb) ** 2).sum(-1).mean()
                loss = loss / n_passes
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * xb.shape[0]
                count += xb.shape[0]
            if not math.isfinite(total):
                raise FloatingPointError("ThresholdMemory.fit: the loss became non-finite; lower lr or beta")
            history.append(total / count)
            bar.set_postfix(loss=f"{history[-1]:.4g}")
        with torch.no_grad():
            self.xi.copy_(xi.detach())
        return history

    # -- memory bank: xi (N_h, N_v), one row per hidden neuron; appending adds hidden neurons ------
    def _bank_config(self):
        return {"theta": self.theta, "tau_v": self.tau_v, "tau_h": self.tau_h}, {"xi": self.xi}

    @classmethod
    def _from_bank(cls, config, tensors):
        c = check_config(config, ("theta", "tau_v", "tau_h"))
        return cls(tensors["xi"], theta=c["theta"], tau_v=c["tau_v"], tau_h=c["tau_h"])

    def extra_repr(self) -> str:
        return (f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, theta={self.theta}, "
                f"tau_v={self.tau_v}, tau_h={self.tau_h}")
