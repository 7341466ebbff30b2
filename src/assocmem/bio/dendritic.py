"""The excitatory/inhibitory dendritic associative memory after Kafraj, Krotov, Bicknell & Latham (ICMNS
2025 abstract; Kafraj, Krotov, Bicknell & Latham 2025): rate dynamics of two excitatory and three inhibitory populations
obeying Dale's law, non-silent memory neurons, and dendritic nonlinearities that keep recall perfect.
The equations are written out in :class:`DendriticEIMemory` and in docs/bio.md.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import integrators as _int
from ..bank import Storable, check_config
from ..recall import RecallResult
from .._validation import DivergenceError, check_choice, check_int, check_positive, check_tensor, describe
from ._threads import single_thread_if_small

__all__ = ["DendriticEIMemory", "DendriticRecallResult", "POPULATIONS"]

#: population names in state order
POPULATIONS = ("feature", "memory", "shunt", "ff", "fb")


class DendriticRecallResult(RecallResult):
    """Outcome of :meth:`DendriticEIMemory.recall`, a :class:`~assocmem.recall.RecallResult`:
    ``state`` (B, N_f) the {0,1} read-out of the feature neurons (rate above the feature bias b),
    ``steps`` integration steps, ``converged`` (B,) bool (every rate changing by less than ``tol``
    per ms), ``energy`` None (the E/I rate network has no energy function: its weights are not
    symmetric); and ``rates`` a dict population -> (B, size) rates at the end, ``t`` (1,) the time
    reached (ms), a tensor like the other results' recorded times. A single cue (N_f,) gives
    unbatched tensors."""

    __slots__ = ("rates", "t")

    def __init__(self, state, rates, converged, steps, t):
        super().__init__(state, steps, converged, None)
        self.rates = rates
        self.t = torch.as_tensor([float(t)], dtype=torch.float64)


class DendriticEIMemory(Storable, nn.Module):
    """Associative memory of binary patterns with excitatory (E) and inhibitory (I) populations.

    Populations (rates in Hz, time in ms):

    - ``feature`` (E, N_f), threshold-linear with a positive bias: no feature neuron is silent;
    - ``memory`` (E, K), one per stored pattern, baseline rate ``r0 > 0``;
    - ``shunt`` (I, K), shunting interneurons paired with the memory neurons (divisive normalisation);
    - ``ff`` (I, 1), feedforward inhibition tracking the mean feature rate;
    - ``fb`` (I, 1), feedback inhibition tracking the dendritic output of the memory layer.

    With ``phi_p(u) = min(max(u, 0), max_rate_p)`` and patterns ``xi`` (K, N_f) in {0, 1}:

        h_mu   = sum_i xi_mu,i x_i - a_mu N_f y_ff                     (memory dendrite, a_mu = |xi_mu| / N_f)
        F(h_mu) = max(h_mu / h_ref_mu, 0)^n                           (supralinear dendritic nonlinearity)
        D(m)   = max(m - theta_d, 0)  ("nonlinear")  or  m  ("linear") (feedback dendrites)
        tau_E dx_i/dt  = -x_i  + phi(b + w sum_mu xi_mu,i D(m_mu) - (w a sqrt(K)) y_fb)
        tau_E dm_mu/dt = -m_mu + phi(r0 + r1 F(h_mu) / (kappa + sum_nu q_nu / q1))
        tau_s dq_mu/dt = -q_mu + phi(q1 F(h_mu))                      (fast shunting interneurons)
        tau_I dy_ff/dt = -y_ff + phi(mean_i x_i)
        tau_I dy_fb/dt = -y_fb + phi(sum_mu D(m_mu) / sqrt(K))

    Every synapse keeps its sign: E->E weights are the patterns (>= 0); the mean subtraction that
    signed patterns would need comes from ``ff`` (onto memory and shunt dendrites) and ``fb`` (onto
    feature neurons); ``shunt`` divides the memory neurons' drive. The feature bias
    ``b = x_off + a (x_on - x_off)`` and gain ``w = (x_on - x_off) / d_ref`` put a recalled
    pattern's features at about ``x_on`` (on) and ``x_off`` (off); ``d_ref = r0 + r1/(1 + kappa) -
    theta_d`` is the recalled memory neuron's dendritic output, and ``h_ref_mu = (x_on - x_off) N_f
    a_mu (1 - a_mu)`` its drive (``a`` the mean coding level), so that F = 1 at recall for every
    memory (a per-neuron dendritic gain). Non-cued memory neurons fire at about ``r0``,
    below the dendritic threshold ``theta_d``, so with nonlinear feedback dendrites they add no
    crosstalk; with ``dendrites="linear"`` their summed baseline activity is mean-subtracted only on
    average, and its fluctuation across features (``~ w r0 sqrt(K a (1-a))``) corrupts recall.

    A cue (values in [0, 1]; 0.5 = unknown) sets the initial feature rates
    ``x_off + (x_on - x_off) cue``; memory neurons start at ``r0``, the inhibitory populations at
    their steady state for the cue. The read-out is ``x_i > b``.

    >>> import torch
    >>> from assocmem.bio import DendriticEIMemory
    >>> g = torch.Generator().manual_seed(0)
    >>> xi = torch.randint(0, 2, (150, 60), generator=g).float()      # K = 2.5 N_f
    >>> dm = DendriticEIMemory(xi, n=6)
    >>> cue = xi[:10].clone(); cue[:, :6] = 1 - cue[:, :6]           # 10 % of bits flipped
    >>> r = dm.recall(cue)
    >>> bool((r.state == xi[:10]).all()), bool(r.rates["memory"].min() >= dm.r0)
    (True, True)
    """

    def __init__(self, patterns, n: int = 6, dendrites: str = "nonlinear", *,
                 r0: float = 1.0, r1: float = 20.0, theta_d: float = 4.0, kappa: float = 0.01,
                 x_off: float = 2.0, x_on: float = 20.0, q1: float | None = None,
                 max_rate_e: float = 50.0, max_rate_i: float = 200.0,
                 tau_e: float = 10.0, tau_i: float = 5.0, tau_s: float = 1.0, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        p = check_tensor("patterns", patterns, ndim=2, expected="shape (K, N_f): one {0,1} pattern per row")
        if not bool(((p == 0) | (p == 1)).all()):
            bad = p[(p != 0) & (p != 1)][0]
            raise ValueError(
                f"patterns: got the value {float(bad)!r} in {describe(p)}; expected binary patterns with entries 0 and 1 "
                "(map +-1 patterns with (p + 1) / 2)"
            )
        if dtype is not None or device is not None:
            p = p.to(dtype=dtype or p.dtype, device=device)
        K, N = p.shape
        a_mu = p.mean(-1)
        if bool(((a_mu == 0) | (a_mu == 1)).any()):
            bad = int(((a_mu == 0) | (a_mu == 1)).nonzero()[0])
            raise ValueError(f"patterns: pattern {bad} is all {int(a_mu[bad])}s; expected every pattern to have at least one 0 and one 1")
        self.register_buffer("xi", p.contiguous())
        # the transpose as its own contiguous buffer: a transposed view makes some BLAS builds
        # take a slow path for these small batched products
        self.register_buffer("_xi_t", p.T.contiguous(), persistent=False)
        self.register_buffer("a_mu", a_mu)
        self.n = check_int("n", n, minimum=1)
        self.dendrites = check_choice("dendrites", dendrites, ("nonlinear", "linear"))
        for name, val in (("r0", r0), ("r1", r1), ("theta_d", theta_d), ("kappa", kappa), ("x_off", x_off),
                          ("max_rate_e", max_rate_e), ("max_rate_i", max_rate_i),
                          ("tau_e", tau_e), ("tau_i", tau_i), ("tau_s", tau_s)):
            check_positive(name, val)
        if not x_on > x_off:
            raise ValueError(f"x_on: got {x_on!r}; expected a rate above x_off = {x_off!r}")
        if not r0 < theta_d:
            raise ValueError(f"theta_d: got {theta_d!r}; expected a dendritic threshold above the baseline r0 = {r0!r}")
        self.r0, self.r1, self.theta_d, self.kappa = float(r0), float(r1), float(theta_d), float(kappa)
        self.x_off, self.x_on = float(x_off), float(x_on)
        self.tau_e, self.tau_i, self.tau_s = float(tau_e), float(tau_i), float(tau_s)
        self.max_rate_e, self.max_rate_i = float(max_rate_e), float(max_rate_i)
        self.a = float(a_mu.mean())
        self.d_ref = self.r0 + self.r1 / (1.0 + self.kappa) - self.theta_d
        if self.d_ref <= 0:
            raise ValueError(f"theta_d: got {theta_d!r}; expected it below r0 + r1/(1 + kappa) = {self.r0 + self.r1 / (1 + self.kappa):.4g} so that a recalled memory drives its features")
        gap = self.x_on - self.x_off
        self.b = self.x_off + self.a * gap
        self.w = gap / self.d_ref
        self.register_buffer("h_ref", gap * N * a_mu * (1.0 - a_mu))
        self.sqrt_k = math.sqrt(K)
        # largest dendritic drive a memory can get: its on-features at the E ceiling, the rest silent,
        # h_max_mu = max_rate_e N_f a_mu (1 - a_mu); the shunt is scaled so that it cannot saturate first
        self.F_max = max((self.max_rate_e / gap) ** self.n, 1.0)
        if q1 is None:
            q1 = self.max_rate_i / self.F_max
        self.q1 = float(check_positive("q1", q1))

    # -- structure ----------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.xi.shape[1]

    @property
    def n_memories(self) -> int:
        return self.xi.shape[0]

    @property
    def populations(self) -> dict:
        """name -> {"type": "E" or "I", "size": int, "max_rate": float} (Hz)."""
        K, N = self.xi.shape
        e, i = self.max_rate_e, self.max_rate_i
        return {
            "feature": {"type": "E", "size": N, "max_rate": e},
            "memory": {"type": "E", "size": K, "max_rate": e},
            "shunt": {"type": "I", "size": K, "max_rate": i},
            "ff": {"type": "I", "size": 1, "max_rate": i},
            "fb": {"type": "I", "size": 1, "max_rate": i},
        }

    def connectivity(self) -> list:
        """Every projection as ``(pre, post, weights, sign)``: ``weights`` (size_pre, size_post) >= 0,
        ``sign`` +1 (excitatory) or -1 (inhibitory). The effective input of a post neuron is
        ``sign * rates_pre @ weights`` (through the post neuron's dendritic nonlinearity where it has
        one: F on memory and shunt dendrites, D on feature and fb dendrites for memory input);
        ``shunt -> memory`` acts divisively (shunting)."""
        xi, K, N = self.xi, self.n_memories, self.n_features
        ones = lambda r, c: torch.ones(r, c, dtype=xi.dtype, device=xi.device)  # noqa: E731
        ff_w = (self.a_mu * N).unsqueeze(0)
        return [
            ("feature", "memory", xi.T.clone(), +1),
            ("feature", "shunt", xi.T.clone(), +1),
            ("feature", "ff", ones(N, 1) / N, +1),
            ("memory", "feature", self.w * xi.clone(), +1),
            ("memory", "fb", ones(K, 1) / self.sqrt_k, +1),
            ("ff", "memory", ff_w.clone(), -1),
            ("ff", "shunt", ff_w.clone(), -1),
            ("fb", "feature", ones(1, N) * (self.w * self.a * self.sqrt_k), -1),
            ("shunt", "memory", ones(K, K) / self.q1, -1),
        ]

    # -- the equations ------------------------------------------------------------------------------
    def _phi(self, u, ceiling):
        return u.clamp(min=0.0, max=ceiling)

    def _F(self, h):
        return torch.clamp(h / self.h_ref, min=0.0).pow(self.n)

    def _D(self, m):
        if self.dendrites == "linear":
            return m
        return torch.clamp(m - self.theta_d, min=0.0)

    def _dendrite(self, x, y_ff):
        """Memory (and shunt) dendritic current h (B, K)."""
        return x @ self._xi_t - (self.a_mu * self.n_features) * y_ff

    def derivatives(self, state, drive: torch.Tensor | None = None):
        """Time derivatives (per ms) of the state tuple (x, m, q, y_ff, y_fb); ``drive`` (B, N_f) is
        an external input current to the feature neurons (the cue during the cue period)."""
        x, m, q, y_ff, y_fb = state
        E, I = self.max_rate_e, self.max_rate_i
        Fh = self._F(self._dendrite(x, y_ff))
        Dm = self._D(m)
        u = self.b + self.w * (Dm @ self.xi) - (self.w * self.a * self.sqrt_k) * y_fb
        if drive is not None:
            u = u + drive
        dx = (-x + self._phi(u, E)) / self.tau_e
        shunt = self.kappa + q.sum(-1, keepdim=True) / self.q1
        dm = (-m + self._phi(self.r0 + self.r1 * Fh / shunt, E)) / self.tau_e
        dq = (-q + self._phi(self.q1 * Fh, I)) / self.tau_s
        dff = (-y_ff + self._phi(x.mean(-1, keepdim=True), I)) / self.tau_i
        dfb = (-y_fb + self._phi(Dm.sum(-1, keepdim=True) / self.sqrt_k, I)) / self.tau_i
        return dx, dm, dq, dff, dfb

    def initial_state(self, cue: torch.Tensor):
        """Feature rates set by the cue, memory neurons at baseline r0, inhibition at steady state."""
        I = self.max_rate_i
        x = self.x_off + (self.x_on - self.x_off) * cue
        y_ff = self._phi(x.mean(-1, keepdim=True), I)
        q = self._phi(self.q1 * self._F(self._dendrite(x, y_ff)), I)
        m = torch.full((cue.shape[0], self.n_memories), self.r0, dtype=x.dtype, device=x.device)
        y_fb = self._phi(self._D(m).sum(-1, keepdim=True) / self.sqrt_k, I)
        return x, m, q, y_ff, y_fb

    # -- recall -------------------------------------------------------------------------------------
    def recall(self, cue, t_max: float = 400.0, dt: float = 0.5, method: str = "rk4",
               tol: float = 1e-3, t_cue: float = 30.0) -> DendriticRecallResult:
        """Integrate the rate dynamics from ``cue`` (B, N_f) with values in [0, 1] with the package's
        fixed-step integrators (``rk4`` or ``euler``). For the first ``t_cue`` ms the cue also enters
        as an input current ``(x_on - x_off) (cue - a)`` to the feature neurons (which holds them at
        their cued rates while no memory is active); then the input is removed and the network runs
        on its own until every rate changes by less than ``tol`` Hz/ms or ``t_max`` ms (finished
        cues are not integrated further). The fixed point reached does not depend on the input."""
        c = check_tensor("cue", cue, ndim=(1, 2), expected=f"shape ({self.n_features},) or (B, {self.n_features}) with values in [0, 1]")
        single = c.ndim == 1
        c = c.unsqueeze(0) if single else c
        if c.shape[-1] != self.n_features:
            raise ValueError(f"cue: got {describe(c)}; expected last dimension N_f = {self.n_features}")
        if bool(((c < 0) | (c > 1)).any()):
            raise ValueError(f"cue: got values in [{float(c.min())!r}, {float(c.max())!r}]; expected values in [0, 1] (0.5 = unknown bit)")
        c = c.to(dtype=self.xi.dtype, device=self.xi.device)
        with single_thread_if_small(c.shape[0] * self.n_memories * self.n_features):
            return self._recall(c, single, t_max, dt, method, tol, t_cue)

    def _recall(self, c, single, t_max, dt, method, tol, t_cue) -> DendriticRecallResult:
        t_max = float(check_positive("t_max", t_max))
        dt = float(check_positive("dt", dt))
        tol = float(check_positive("tol", tol))
        method = check_choice("method", method, tuple(_int.FIXED_STEP))
        t_cue = float(check_positive("t_cue", t_cue, allow_zero=True))
        stepper = _int.FIXED_STEP[method]
        state = self.initial_state(c)
        drive = (self.x_on - self.x_off) * (c - self.a)
        cue_steps = math.ceil(t_cue / dt - 1e-9) if t_cue > 0 else 0

        def driven(s):
            return self.derivatives(s, drive)

        for k in range(cue_steps):
            state = stepper(driven, state, dt)
        B = c.shape[0]
        converged = torch.zeros(B, dtype=torch.bool, device=c.device)
        active = torch.arange(B, device=c.device)
        cur = state
        steps, t = cue_steps, cue_steps * dt
        n_steps = max(1, math.ceil(t_max / dt - 1e-9))
        for k in range(1, n_steps + 1):
            k1 = self.derivatives(cur)
            speed = torch.stack([d.abs().amax(-1) for d in k1]).amax(0)
            done = speed < tol
            if bool(done.any()):
                idx = active[done]
                converged[idx] = True
                state = tuple(s.index_copy(0, idx, c_[done]) for s, c_ in zip(state, cur))
                keep = ~done
                active = active[keep]
                if active.numel() == 0:
                    break
                cur = tuple(c_[keep] for c_ in cur)
                k1 = tuple(d[keep] for d in k1)
            cur = stepper(self.derivatives, cur, dt, k1)
            steps, t = cue_steps + k, (cue_steps + k) * dt
            if not all(bool(torch.isfinite(s).all()) for s in cur):
                raise DivergenceError(f"DendriticEIMemory.recall: non-finite rates at step {k} (t = {t:g} ms); reduce dt")
        if active.numel():
            state = tuple(s.index_copy(0, active, c_) for s, c_ in zip(state, cur))
        x = state[0]
        out = (x > self.b).to(self.xi.dtype)
        rates = dict(zip(POPULATIONS, state))
        if single:
            return DendriticRecallResult(out[0], {k: v[0] for k, v in rates.items()}, converged[0], steps, t)
        return DendriticRecallResult(out, rates, converged, steps, t)

    # -- memory bank ---------------------------------------------------------------------------------
    _BANK_KEYS = ("n", "dendrites", "r0", "r1", "theta_d", "kappa", "x_off", "x_on", "max_rate_e", "max_rate_i",
                  "tau_e", "tau_i", "tau_s", "q1")

    def _bank_config(self):
        cfg = {k: getattr(self, k) for k in self._BANK_KEYS}
        # q1 defaults to max_rate_i / F_max of the patterns: stored as None then, so that a bank with
        # appended patterns rebuilds exactly what the constructor gives for all of them
        cfg["q1"] = None if self.q1 == self.max_rate_i / self.F_max else self.q1
        return cfg, {"xi": self.xi}

    @classmethod
    def _from_bank(cls, config, tensors):
        c = check_config(config, cls._BANK_KEYS)
        return cls(tensors["xi"], **{k: c[k] for k in cls._BANK_KEYS})

    def extra_repr(self) -> str:
        return (f"n_features={self.n_features}, n_memories={self.n_memories}, n={self.n}, dendrites={self.dendrites!r}, "
                f"r0={self.r0}, r1={self.r1}, theta_d={self.theta_d}")
