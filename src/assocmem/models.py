"""Effective models of the feature layer, the memory neurons integrated out (KH 2021 section 3).

ClassicalHopfield (Hopfield 1982; KH eq. 8 with n = 2), DenseAssociativeMemory (Model A,
KH eq. 5-10, update rule of Krotov & Hopfield 2016), ModernHopfield (Model B, KH eq. 11-16) and
SphericalMemory (Model C, KH eq. 17-22). Each has ``energy``, ``step``, ``recall`` and
``as_network`` (the two-layer network of KH eq. 1 that it is the tau_h -> 0 limit of).
"""
from __future__ import annotations

import abc
import math

import numpy as np
import torch
from torch import nn

from . import functional as AF
from . import integrators as _int
from ._validation import (
    DivergenceError,
    all_finite,
    as_batch,
    check_choice,
    check_int,
    check_positive,
    check_tensor,
    describe,
    guard_result,
)
from .lagrangians import Abs, Exp, Lagrangian, LogSumExp, Power, Quadratic, RectifiedPower, Spherical
from .network import TwoLayerNetwork

__all__ = [
    "RecallResult",
    "AssociativeMemory",
    "ClassicalHopfield",
    "DenseAssociativeMemory",
    "ModernHopfield",
    "SphericalMemory",
]


class RecallResult:
    """Outcome of ``recall``: ``state`` (B, N) (or (N,) for one cue), ``steps`` taken, ``converged``
    (B,) bool (or a 0-d bool), ``energy`` trace (steps + 1, B) (or (steps + 1,)).

    ``energy`` may be passed as a callable that builds the trace; it is then evaluated when first
    read (Model B reuses the steps' log-sum-exps and computes only the final state's energy then),
    and that first read raises :class:`~assocmem.DivergenceError` where the final state's energy is
    NaN or +inf (a state whose magnitude overflows the dtype), as recall does for the other steps."""

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
        return (f"RecallResult(state={self.state!r}, steps={self.steps}, converged={self.converged!r}, "
                f"energy={self.energy!r})")


def _check_patterns(patterns, binary: bool) -> torch.Tensor:
    p = check_tensor("patterns", patterns, ndim=2, expected="shape (K, N): one stored pattern per row")
    if binary and not bool(((p == 1) | (p == -1)).all()):
        bad = p[(p != 1) & (p != -1)]
        raise ValueError(
            f"patterns: got values such as {float(bad[0])!r} in {describe(p)}; expected only -1 and +1 for a binary model"
        )
    return p


def _numpy_view(t: torch.Tensor):
    """Zero-copy numpy view of a CPU float32/float64 tensor that needs no graph, else None."""
    if t.is_cpu and (t.dtype is torch.float32 or t.dtype is torch.float64) and not (t.requires_grad and torch.is_grad_enabled()):
        return t.detach().numpy()
    return None


# The two per-step reductions of a recall go through numpy on CPU: a torch elementwise op on
# B x N >= 32k elements runs a parallel region, after which torch's OpenMP workers spin for ~6 ms
# and take a core from the retrieval kernel's next call (measured: recall went from 0.96x to 1.3x
# steps x one step; with OMP_WAIT_POLICY=PASSIVE set before torch loads it is 0.96x either way).
def _max_abs_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """max_j |new - old| per row, shape (B,)."""
    a, b = _numpy_view(new), _numpy_view(old)
    if a is not None and b is not None and a.size:
        return torch.from_numpy(np.abs(a - b).max(axis=1))
    return (new - old).abs().amax(-1) if new.numel() else new.new_zeros(new.shape[0])


def _half_sq_norm(x: torch.Tensor) -> torch.Tensor:
    """x.x / 2 per row, shape (B,)."""
    a = _numpy_view(x)
    if a is not None and a.ndim == 2:
        return torch.from_numpy(0.5 * np.einsum("ij,ij->i", a, a))
    return 0.5 * (x * x).sum(-1)


def _active_rows(converged, x, clamp, cue):
    """The rows of a recall still moving: their indices, states, clamps and cues (no copies when all are)."""
    active = (~converged).nonzero().flatten()
    if active.numel() == x.shape[0]:
        return active, x, clamp, cue
    return (active, x.index_select(0, active), None if clamp is None else clamp.index_select(0, active),
            cue.index_select(0, active))


class AssociativeMemory(nn.Module, abc.ABC):
    """Common verbs of every effective model: ``energy``, ``step``, ``recall``, ``as_network``.

    ``patterns`` (K, N) is stored as the buffer ``xi``. Subclasses define ``_energy(x)`` and
    ``_step(x, generator, clamp, cue)`` on validated (B, N) batches.
    """

    binary: bool = False
    #: whether ``_step`` may write into the state it is given (asynchronous sweeps do); ``step``
    #: then hands it a copy, and skips the copy (a torch op per call) for models that never write
    _step_writes_state: bool = True

    def __init__(self, patterns, dtype: torch.dtype | None = None, device=None):
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
        if self.binary and not bool(((t == 1) | (t == -1)).all()):
            raise ValueError(f"{name}: got {describe(x)} with entries other than -1 and +1; expected a binary (+-1) state")
        return t, single

    def _prepare_clamp(self, clamp, B: int) -> torch.Tensor | None:
        if clamp is None:
            return None
        c = check_tensor("clamp", clamp, ndim=(1, 2), floating=False, finite=False, dtype=torch.bool).to(self.xi.device)
        if c.shape[-1] != self.n_features or (c.ndim == 2 and c.shape[0] not in (1, B)):
            raise ValueError(f"clamp: got {describe(clamp)}; expected a bool mask of shape ({self.n_features},) or ({B}, {self.n_features})")
        return c.expand(B, -1) if c.ndim == 2 else c.unsqueeze(0).expand(B, -1)

    # -- public verbs -------------------------------------------------------------------------------
    def energy(self, x) -> torch.Tensor:
        """Effective energy of each state, shape (B,) (a 0-d tensor for one state)."""
        t, single = self._prepare("x", x)
        e = guard_result("energy", self._energy(t), allow_inf=True)  # +-inf: the true value overflows
        return e[0] if single else e

    def step(self, x, generator: torch.Generator | None = None, clamp=None) -> torch.Tensor:
        """One update of every state: an asynchronous sweep (binary models) or a synchronous update."""
        t, single = self._prepare("x", x)
        c = self._prepare_clamp(clamp, t.shape[0])
        out = guard_result("step", self._step(t.clone() if self._step_writes_state else t, generator, c, t))
        return out[0] if single else out

    def recall(self, cue, max_steps: int = 100, tol: float = 1e-6, clamp=None,
               generator: torch.Generator | None = None) -> RecallResult:
        """Iterate ``step`` from ``cue`` until no state changes by more than ``tol`` (binary models: a
        sweep with no flip) or ``max_steps``. ``clamp`` marks feature neurons held at their cue value.
        Energies are recorded after every step; finished states are not updated further."""
        x, single = self._prepare("cue", cue)
        max_steps = check_int("max_steps", max_steps, minimum=0)
        tol = float(check_positive("tol", tol, allow_zero=True))
        B = x.shape[0]
        c = self._prepare_clamp(clamp, B)
        cue_t = x
        if self._fused_energy:  # writes no state in place: no copy (a torch copy of B x N wakes torch's
            # OpenMP workers, whose spinning slowed the first step's kernel threads by ~30 %)
            return self._recall_fused(x, single, max_steps, tol, c, cue_t, generator)
        x = x.clone()
        e = self._energy(x)
        self._check_finite(0, x, e)
        energies = [e]
        converged = torch.zeros(B, dtype=torch.bool, device=x.device)
        steps = 0
        for s in range(1, max_steps + 1):
            active, xa, ca, cuea = _active_rows(converged, x, c, cue_t)
            new = self._step(xa.clone(), generator, ca, cuea)
            done = _max_abs_change(new, xa) <= tol
            ea = self._energy(new)
            self._check_finite(s, new, ea)
            e = energies[-1].clone()
            if active.numel() == B:
                x = new
                e = ea
                converged = done
            else:
                x = x.index_copy(0, active, new)
                e = e.index_copy(0, active, ea)
                converged = converged.index_copy(0, active, done)
            energies.append(e)
            steps = s
            if bool(converged.all()):
                break
        energy = torch.stack(energies)
        if single:
            return RecallResult(x[0], steps, converged[0], energy[:, 0])
        return RecallResult(x, steps, converged, energy)

    # Models whose step computes the energy of its input on the way (Model B: the softmax's
    # log-sum-exp) set ``_fused_energy`` and define ``_step_with_energy``; recall then costs
    # ``steps`` steps, and only the final states' energy is computed, when the trace is first read.
    _fused_energy = False

    def _step_with_energy(self, x, generator, clamp, cue):
        """Return ``(next state, energy of x)``; models that set ``_fused_energy`` compute both in one
        pass, this general form evaluates them separately."""
        return self._step(x.clone(), generator, clamp, cue), self._energy(x)

    def _recall_fused(self, x, single, max_steps, tol, c, cue_t, generator) -> RecallResult:
        B = x.shape[0]
        converged = torch.zeros(B, dtype=torch.bool, device=x.device)
        rows = []  # rows[t]: energy of x_t for the rows still moving at step t + 1, NaN for the others
        steps = 0
        for s in range(1, max_steps + 1):
            active, xa, ca, cuea = _active_rows(converged, x, c, cue_t)
            new, e_in = self._step_with_energy(xa, generator, ca, cuea)
            self._check_finite(s - 1, None, e_in)  # xa was checked when it was produced (or validated)
            self._check_finite(s, new, None)
            done = _max_abs_change(new, xa) <= tol
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
        if x is cue_t:  # no step taken: the result must not be the caller's tensor
            x = x.clone()
        final = x

        def trace() -> torch.Tensor:
            e_final = self._energy(final)
            self._check_finite(steps, None, e_final)  # the states were checked in the loop
            tr = torch.stack(rows + [e_final]) if rows else e_final.unsqueeze(0)
            tr = torch.where(torch.isnan(tr), e_final.expand_as(tr), tr)  # finished rows keep their energy
            return tr[:, 0] if single else tr

        if single:
            return RecallResult(x[0], steps, converged[0], trace)
        return RecallResult(x, steps, converged, trace)

    @staticmethod
    def _check_finite(step: int, x: torch.Tensor | None, e: torch.Tensor | None) -> None:
        """Raise DivergenceError naming the step if the states ``x`` or energies ``e`` (either may be
        None: already checked) hold NaN or +-inf (an energy of -inf is allowed)."""
        for what, t in (("feature state", x), ("energy", e)):
            if t is None or not t.is_floating_point() or all_finite(t):
                continue
            if what == "energy" and not bool((torch.isnan(t) | (t == float("inf"))).any()):
                continue  # -inf energies are allowed
            rows = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(-1).nonzero().flatten().tolist()
            raise DivergenceError(f"recall produced non-finite values in the {what} at step {step} for batch element(s) {rows[:10]}")

    def save(self, path, *, layout: str = "auto"):
        """Write this model as a memory bank (atomic, checksummed); ``assocmem.load(path)`` reads it
        back. Returns the :class:`~assocmem.bank.MemoryBank` (``.append(patterns)`` adds patterns)."""
        from .bank import save

        return save(self, path, layout=layout)

    @abc.abstractmethod
    def as_network(self, tau_f: float = 1.0, tau_h: float = 0.01) -> TwoLayerNetwork:
        """The equivalent two-layer network (KH eq. 1) with this model's Lagrangians."""

    @abc.abstractmethod
    def _energy(self, x):
        """Effective energy of validated states (B, N) -> (B,)."""

    @abc.abstractmethod
    def _step(self, x, generator, clamp, cue):
        """One update of validated states (B, N)."""


# ---------------------------------------------------------------------------------------------------
# Binary models: asynchronous sweeps where each neuron takes the sign of lower energy (KH2016 rule)
# ---------------------------------------------------------------------------------------------------
def _sweep_order(n: int, generator: torch.Generator | None, device) -> list[int]:
    return torch.randperm(n, generator=generator).tolist()


class ClassicalHopfield(AssociativeMemory):
    """Hopfield (1982): Hebbian ``T = xi^T xi / N`` with zero diagonal, energy ``-1/2 s^T T s``.

    It is Model A with F(x) = x^2 (KH eq. 8, n = 2): the energy equals ``-1/(2N) sum_mu (xi_mu . s)^2``
    up to the constant ``K/2`` that the zero diagonal removes.

    >>> import torch
    >>> from assocmem import ClassicalHopfield
    >>> g = torch.Generator().manual_seed(0)
    >>> xi = torch.randint(0, 2, (5, 100), generator=g).float() * 2 - 1
    >>> m = ClassicalHopfield(xi)
    >>> cue = xi[0].clone(); cue[:10] *= -1
    >>> bool((m.recall(cue, generator=g).state == xi[0]).all())
    True
    """

    binary = True

    def __init__(self, patterns, dtype=None, device=None):
        super().__init__(patterns, dtype=dtype, device=device)
        K, N = self.xi.shape
        # integer-valued couplings so that ties (zero local field) are exact
        work = torch.float64 if (N * K >= 2**23 or self.xi.dtype == torch.float64) else torch.float32
        t = self.xi.to(work).T @ self.xi.to(work)
        t.fill_diagonal_(0)
        self.register_buffer("_t_int", t.contiguous(), persistent=False)

    @property
    def T(self) -> torch.Tensor:
        """The synapse matrix xi^T xi / N with zero diagonal."""
        return (self._t_int / self.n_features).to(self.xi.dtype)

    def _energy(self, x):
        w = self._t_int
        xs = x.to(w.dtype)
        return (-0.5 * ((xs @ w) * xs).sum(-1) / self.n_features).to(torch.float64)

    def _step(self, x, generator, clamp, cue):
        # The sequential sweep, blocked: the local fields are integers (exact in the work dtype), so
        # updating the fields of a block's b neurons flip by flip and everyone else's once per block
        # (one matrix product) gives exactly the numbers of one flip at a time over all N fields.
        w = self._t_int
        s = x.to(w.dtype)
        u = s @ w  # local fields
        order = torch.tensor(_sweep_order(self.n_features, generator, x.device), device=x.device)
        for k in range(0, self.n_features, 64):
            idx = order[k:k + 64]
            rows = w.index_select(0, idx)  # (b, N) couplings of the block's neurons
            wbb = rows.index_select(1, idx)  # (b, b) couplings within the block
            ub = u.index_select(1, idx).T.contiguous()  # (b, B) their fields
            sb = s.index_select(1, idx).T.contiguous()  # (b, B) their states
            cb = None if clamp is None else clamp.index_select(1, idx).T.contiguous()
            d = torch.zeros_like(sb)  # (b, B) changes of state
            for j in range(idx.numel()):
                old = sb[j]
                new = torch.add(old, ub[j], alpha=2.0).sign_()  # sign of the field; a zero field keeps the state
                if cb is not None:
                    new = torch.where(cb[j], old, new)
                torch.sub(new, old, out=d[j])
                ub.addr_(wbb[j], d[j])
            s.index_copy_(1, idx, (sb + d).T)
            u.addmm_(d.T, rows)
        return s.to(x.dtype)

    def as_network(self, tau_f: float = 1.0, tau_h: float = 0.01, lagrangian_v: Lagrangian | None = None) -> TwoLayerNetwork:
        """Two-layer network with L_v = sum |v| (or ``lagrangian_v``), L_h = sum h^2/2, synapses xi/sqrt(N)."""
        return TwoLayerNetwork(self.xi / math.sqrt(self.n_features), lagrangian_v or Abs(), Quadratic(), tau_f=tau_f, tau_h=tau_h)


_F_CHOICES = ("power", "rectified_power", "exp")


def hidden_lagrangian(F: str, n: int, beta: float) -> Lagrangian:
    """L_h = sum F(h) for the interaction names of Models A and C: x^n, max(x, 0)^n, exp(beta x)/beta."""
    F = check_choice("F", F, _F_CHOICES)
    if F == "power":
        return Power(n)
    if F == "rectified_power":
        return RectifiedPower(n)
    return Exp(beta)


class DenseAssociativeMemory(AssociativeMemory):
    """Model A, Dense Associative Memory (Krotov & Hopfield 2016; KH eq. 8):
    ``E = -sum_mu F(xi_mu . s)`` with F = x^n (``"power"``), max(x, 0)^n (``"rectified_power"``)
    or exp(beta x)/beta (``"exp"``).

    Binary by default: one ``step`` is an asynchronous sweep in which every neuron takes the sign
    that gives the lower energy (ties keep the current sign), so the energy never increases. The
    comparison is done exactly in integer arithmetic where it fits, otherwise normalised (power) or
    in log space (exp), so large n and beta do not overflow. Energies are returned in float64.

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
        super().__init__(patterns, dtype=dtype, device=device)
        self.F = check_choice("F", F, _F_CHOICES)
        self.n = check_int("n", n, minimum=2)
        self.beta = float(check_positive("beta", beta))
        if lagrangian_v is not None and not isinstance(lagrangian_v, Lagrangian):
            raise TypeError(f"lagrangian_v: got {describe(lagrangian_v)}; expected a Lagrangian such as Tanh(beta=50) or None")
        self.lagrangian_v = lagrangian_v
        self.tau_f = float(check_positive("tau_f", tau_f))
        self.dt = float(check_positive("dt", dt))
        K, N = self.xi.shape
        if self.binary:
            bits = self.n * math.log2(N + 1) + math.log2(K) + 1
            if self.F == "exp":
                self._mode, work = "log", torch.float64 if self.xi.dtype == torch.float64 else torch.float32
            elif bits < 23:
                self._mode, work = "exact", torch.float32
            elif bits < 52:
                self._mode, work = "exact", torch.float64
            else:
                self._mode, work = "normalised", torch.float64
            self._work = work
            self.register_buffer("_xi_t", self.xi.to(work).T.contiguous(), persistent=False)

    def lagrangian_h(self) -> Lagrangian:
        """The memory-layer Lagrangian L_h = sum F(h) of this model."""
        return hidden_lagrangian(self.F, self.n, self.beta)

    # sum_mu F(a_mu) for (B, K) arguments a, in float64 for energies
    def _F_sum(self, a: torch.Tensor) -> torch.Tensor:
        if self.F == "power":
            return a.pow(self.n).sum(-1)
        if self.F == "rectified_power":
            return torch.clamp(a, min=0).pow(self.n).sum(-1)
        return torch.exp(torch.logsumexp(self.beta * a, -1)) / self.beta

    def _energy(self, x):
        if not self.binary:
            g = self.lagrangian_v.activation(x)
            return self.lagrangian_v.legendre(x) - self._F_sum(g @ self.xi.T)
        h = x.to(torch.float64) @ self.xi.to(torch.float64).T
        return -self._F_sum(h)

    def _preference(self, hp: torch.Tensor, hn: torch.Tensor) -> torch.Tensor:
        """Positive where s_i = +1 gives the lower energy: sum F(hp) - sum F(hn) (or a monotone proxy)."""
        if self._mode == "log":
            return torch.logsumexp(self.beta * hp, -1) - torch.logsumexp(self.beta * hn, -1)
        if self._mode == "normalised":
            scale = torch.maximum(hp.abs().amax(-1, keepdim=True), hn.abs().amax(-1, keepdim=True)).clamp_min(1.0)
            hp, hn = hp / scale, hn / scale
        if self.F == "power":
            return (hp.pow(self.n) - hn.pow(self.n)).sum(-1)
        return (torch.clamp(hp, min=0).pow(self.n) - torch.clamp(hn, min=0).pow(self.n)).sum(-1)

    def _step(self, x, generator, clamp, cue):
        if not self.binary:
            return self._continuous_step(x, clamp, cue)
        xt = self._xi_t  # (N, K)
        s = x.to(self._work)
        h = s @ xt  # (B, K): overlaps with every memory
        if self._mode == "normalised":
            for i in _sweep_order(self.n_features, generator, x.device):
                col = xt[i]
                old = s[:, i]
                # h with s_i = +1 and with s_i = -1
                hp = h + (1.0 - old).unsqueeze(-1) * col
                hn = h - (1.0 + old).unsqueeze(-1) * col
                pref = self._preference(hp, hn)
                new = torch.where(pref > 0, 1.0, torch.where(pref < 0, -1.0, old)).to(s.dtype)
                if clamp is not None:
                    new = torch.where(clamp[:, i], old, new)
                h.addr_(new - old, col)
                s[:, i] = new
            return s.to(x.dtype)
        # Flipping s_i moves the overlaps to hq = h - 2 s_i xi_i, so the preference for +1 is
        # s_i (G(h) - G(hq)) with G = sum_mu F (exact integers) or logsumexp(beta .): the same numbers
        # as G(h with s_i = +1) - G(h with s_i = -1). G(h) is carried per cue and taken from G(hq)
        # when a cue flips, so each neuron costs one G evaluation instead of two.
        if self._mode == "log":
            def G(a):
                return torch.logsumexp(self.beta * a, -1)
        elif self.F == "power":
            def G(a):
                return a.pow(self.n).sum(-1)
        else:
            def G(a):
                return torch.clamp(a, min=0).pow(self.n).sum(-1)
        g = G(h)
        for i in _sweep_order(self.n_features, generator, x.device):
            old = s[:, i]
            hq = torch.addr(h, old, xt[i], alpha=-2.0)
            gq = G(hq)
            pref = old * (g - gq)
            new = torch.where(pref > 0, 1.0, torch.where(pref < 0, -1.0, old)).to(s.dtype)
            if clamp is not None:
                new = torch.where(clamp[:, i], old, new)
            flip = new != old
            if bool(flip.any()):
                h = torch.where(flip.unsqueeze(-1), hq, h)
                g = torch.where(flip, gq, g)
                s[:, i] = new
        return s.to(x.dtype)

    # continuous Model A: effective ODE of KH eq. (1) with tau_h -> 0
    def _velocity(self, state):
        (v,) = state
        g = self.lagrangian_v.activation(v)
        f = self.lagrangian_h().activation(g @ self.xi.T)
        return ((f @ self.xi - v) / self.tau_f,)

    def _continuous_step(self, v, clamp, cue):
        if clamp is None:
            func = self._velocity
        else:
            def func(state):
                return (self._velocity(state)[0].masked_fill(clamp, 0.0),)
        (out,) = _int.rk4_step(func, (v,), self.dt)
        return out

    def as_network(self, tau_f: float = 1.0, tau_h: float = 0.01, lagrangian_v: Lagrangian | None = None) -> TwoLayerNetwork:
        """Two-layer network with L_v = ``lagrangian_v`` (default: this model's, or sum |v|) and L_h = sum F(h)."""
        lv = lagrangian_v or self.lagrangian_v or Abs()
        return TwoLayerNetwork(self.xi, lv, self.lagrangian_h(), tau_f=tau_f, tau_h=tau_h)


class ModernHopfield(AssociativeMemory):
    """Model B, modern Hopfield network / attention (KH eq. 11-16, Ramsauer et al. 2020).

    Energy (KH eq. 13 with inverse temperature beta): ``1/2 v.v - (1/beta) log sum_mu exp(beta xi_mu . v)``.
    One ``step`` is the update ``v <- xi^T softmax(beta xi v)`` (KH eq. 16), a concave-convex
    procedure step, so the energy never increases (also with clamped neurons).

    >>> import torch
    >>> from assocmem import ModernHopfield
    >>> g = torch.Generator().manual_seed(0)
    >>> xi = torch.randint(0, 2, (1000, 64), generator=g).float() * 2 - 1
    >>> m = ModernHopfield(xi, beta=0.5)
    >>> cue = xi[3].clone(); cue[32:] = 0                      # bottom half unknown
    >>> bool((torch.sign(m.recall(cue).state) == xi[3]).all())
    True
    """

    def __init__(self, patterns, beta: float = 1.0, dtype=None, device=None):
        super().__init__(patterns, dtype=dtype, device=device)
        self.beta = float(check_positive("beta", beta))

    def _energy(self, x):
        return AF.modern_energy(x, self.xi, self.beta)

    _step_writes_state = False

    def _step(self, x, generator, clamp, cue):
        out = AF.retrieve(x, self._buffers["xi"], beta=self.beta)
        if clamp is not None:
            out = torch.where(clamp, cue, out)
        return out

    _fused_energy = True

    def _step_with_energy(self, x, generator, clamp, cue):
        out, lse = AF.retrieve(x, self.xi, beta=self.beta, return_lse=True)
        if clamp is not None:
            out = torch.where(clamp, cue, out)
        e = _half_sq_norm(x) - lse.to(x.dtype) / self.beta
        return out, e

    def as_network(self, tau_f: float = 1.0, tau_h: float = 0.01) -> TwoLayerNetwork:
        """Two-layer network with L_v = sum v^2/2 and L_h = logsumexp(beta h)/beta (KH eq. 11)."""
        return TwoLayerNetwork(self.xi, Quadratic(), LogSumExp(self.beta), tau_f=tau_f, tau_h=tau_h)


class SphericalMemory(AssociativeMemory):
    """Model C, spherical memory (KH eq. 17-22): L_v = ||v|| (g = v/||v||), L_h = sum F(h).

    Energy (KH eq. 21): ``-sum_mu F(xi_mu . v/||v||)``; it depends on the direction of v only, and
    states are kept on the unit sphere. One ``step`` is the synchronous update
    ``v <- normalise(xi^T F'(xi v/||v||))``, the tau_f = alpha = dt limit of KH eq. 22; for convex F
    it never increases the energy, and for non-convex F (odd powers) a step that would is shortened
    along the arc towards the update (halving up to 30 times), so the energy never increases.
    With ``clamp`` the clamped coordinates keep the cue's normalised values and the update moves the
    free coordinates on the remaining sphere. ``alpha`` is the decay of the continuous dynamics
    (KH eq. 19), used by :meth:`as_network`.
    """

    def __init__(self, patterns, F: str = "power", n: int = 3, alpha: float = 1.0, beta: float = 1.0,
                 dtype=None, device=None):
        super().__init__(patterns, dtype=dtype, device=device)
        self.F = check_choice("F", F, _F_CHOICES)
        self.n = check_int("n", n, minimum=2)
        self.alpha = float(check_positive("alpha", alpha, allow_zero=True))
        self.beta = float(check_positive("beta", beta))
        self._lh = hidden_lagrangian(self.F, self.n, self.beta)

    def _normalise(self, x):
        return Spherical().activation(x)

    def _energy(self, x):
        return -self._lh.value((self._normalise(x) @ self.xi.T).to(torch.float64))  # x^n: no float32 overflow

    def _project(self, u, clamp, cue_dir, fallback=None):
        """Unit vector with the clamped coordinates of ``cue_dir`` and the free part along ``u``.
        Where the free part of ``u`` is zero (no direction to take), the free part of ``fallback``
        (the current state) is kept, so that the result stays a unit vector."""
        if clamp is None:
            return self._normalise(u)
        free = u.masked_fill(clamp, 0.0)
        if fallback is not None:
            none = (free == 0).all(-1, keepdim=True)
            free = torch.where(none, fallback.masked_fill(clamp, 0.0), free)
        fixed = cue_dir.masked_fill(~clamp, 0.0)
        room = torch.sqrt(torch.clamp(1.0 - (fixed * fixed).sum(-1, keepdim=True), min=0.0))
        return fixed + self._normalise(free) * room

    def _merit(self, u):
        """A monotone transform of -E for unit vectors u: log sum exp(beta h) for F = exp (no
        overflow at large beta), sum F(h) in float64 otherwise."""
        h = u @ self.xi.T
        if self.F == "exp":
            return torch.logsumexp(self.beta * h, -1)
        return self._lh.value(h.to(torch.float64))

    def _update_direction(self, u):
        """xi^T F'(xi u) up to a positive factor per row, scaled so nothing overflows."""
        h = u @ self.xi.T
        if self.F == "exp":
            w = torch.softmax(self.beta * h, -1)
        else:
            m = h.abs().amax(-1, keepdim=True)
            w = self._lh.activation(h / torch.where(m > 0, m, torch.ones_like(m)))
        return w @ self.xi

    def _step(self, x, generator, clamp, cue):
        cue_dir = self._normalise(cue)
        u = self._project(x, clamp, cue_dir)
        e0 = -self._merit(u)
        cand = self._project(self._update_direction(u), clamp, cue_dir, fallback=u)
        e1 = -self._merit(cand)
        bad = e1 > e0
        if bool(bad.any()):  # shorten non-descending steps along the arc (non-convex F only)
            t = 1.0
            trial = cand
            for _ in range(30):
                t *= 0.5
                trial = torch.where(bad.unsqueeze(-1), self._project(u + t * (cand - u), clamp, cue_dir, fallback=u), trial)
                cand = torch.where(bad.unsqueeze(-1), trial, cand)
                e1 = torch.where(bad, -self._merit(trial), e1)
                bad = e1 > e0
                if not bool(bad.any()):
                    break
            cand = torch.where(bad.unsqueeze(-1), u, cand)
        return cand

    def as_network(self, tau_f: float = 1.0, tau_h: float = 0.01) -> TwoLayerNetwork:
        """Two-layer network with L_v = ||v||, L_h = sum F(h) and decay alpha (KH eq. 19)."""
        return TwoLayerNetwork(self.xi, Spherical(), self._lh, tau_f=tau_f, tau_h=tau_h, alpha=self.alpha)
