"""The capacity experiment at one size N: every random choice fixed per trial (nested pattern banks,
probe slots, corruptions), and ``evaluate`` mapping (trials, K per trial) to criterion values in one
batched computation. The binary models (classical, Dense AM, KH eq. 8) run the models' own sweep
engine (:mod:`assocmem.models.sweep`) for all trials at once, each trial with its own patterns; the
continuous ones (Model B, KH eq. 16; Model C, KH eq. 22) the models themselves, one per trial; the
threshold (Kafraj, Krotov & Latham 2026) and E/I dendritic models those of :mod:`assocmem.bio`."""
from __future__ import annotations

import math

import torch

from ..bio import DendriticEIMemory, ThresholdMemory
from ..models import by_name, hidden_lagrangian
from ..models.sweep import FieldSweeps, OverlapSweeps, hebbian_couplings, run_sweeps
from ..theory import krotov_hopfield_2016
from .patterns import _apply_corruption, _Bank, _blank_value, _mix
from .settings import _Spec

__all__ = ["classical_stable", "classical_async_recall", "dense_async_recall"]

# +-1 state models: {0,1} patterns of coding level a are stored as biased +-1 patterns 2x - 1
_PM1_MODELS = ("classical", "dense")


def classical_stable(probes: torch.Tensor, stored: torch.Tensor, n_stored: torch.Tensor) -> torch.Tensor:
    """Which probe patterns are fixed points of the Hebbian network storing ``stored``.

    probes (S, P, N) and stored (S, H, N) hold +-1 (zero rows are padding), n_stored (S,) the number of
    real stored rows. The local field of probe x is ``T x`` with ``T = stored^T stored`` minus its
    diagonal (= n_stored): one matrix product, no dynamics. x is a fixed point of the asynchronous sign
    update iff no field disagrees in sign with x (a zero field keeps the sign, as in the model)."""
    S, P, N = probes.shape
    H = stored.shape[1]
    # integer fields, exact in float32 below 2^24 (|field| <= N (H + P))
    work = torch.float64 if N * (max(H, 1) + P) >= 2 ** 23 else torch.float32
    x = probes.to(work)
    st = stored.to(work)
    if 2 * P * H * N <= H * N * N + P * N * N:
        fields = torch.bmm(torch.bmm(x, st.transpose(1, 2)), st)
    else:
        fields = torch.bmm(x, torch.bmm(st.transpose(1, 2), st))
    fields = fields - n_stored.to(work).view(S, 1, 1) * x
    return ((fields * x) >= 0).all(-1)


def classical_async_recall(T: torch.Tensor, s0: torch.Tensor, row_trial: torch.Tensor, max_steps: int,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``ClassicalHopfield.recall`` for many rows at once, each with its own couplings: the models'
    sweep engine (:class:`~assocmem.models.sweep.FieldSweeps`). T (S, N, N) integer couplings with
    zero diagonal (:func:`~assocmem.models.sweep.hebbian_couplings`), s0 (R, N) +-1 start states,
    row_trial (R,) which T each row uses. Returns (final states, converged)."""
    run = run_sweeps(FieldSweeps(T), s0, max_steps, generator, group=row_trial)
    return run.state, run.converged


def dense_async_recall(xi: torch.Tensor, n_stored: torch.Tensor, s0: torch.Tensor, row_trial: torch.Tensor,
                       max_steps: int, generator: torch.Generator, F: str = "power", n: int = 3,
                       beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``DenseAssociativeMemory.recall`` (binary, KH2016 update rule) for many rows at once: the models'
    sweep engine (:class:`~assocmem.models.sweep.OverlapSweeps`). xi (S, H, N) +-1 stored patterns per
    trial (rows at or beyond n_stored[t] are padding and take no part), s0 (R, N) +-1 start states,
    row_trial (R,) the trial of each row. Returns (final states, converged)."""
    run = run_sweeps(OverlapSweeps(xi, hidden_lagrangian(F, n, beta), n_stored), s0, max_steps, generator, group=row_trial)
    return run.state, run.converged


class _Experiment:
    """Everything random about an experiment at size N is fixed here, per trial: the pattern bank
    (nested: pattern mu is the same for every K), the probe slots and their corruptions. ``evaluate``
    then maps (trials, K per trial) to criterion values in one batched computation."""

    def __init__(self, spec: _Spec, N: int):
        self.spec, self.N = spec, N
        self.device = torch.device(spec.device) if spec.device else torch.device("cpu")
        self.calls = 0
        S, P = spec.trials, spec.probes
        self.load_is_bits = spec.model == "threshold"
        if self.load_is_bits:  # the load is N_h; a bank row is a hidden neuron's weights xi_mu (N_v,)
            self.banks = [_Bank("gaussian", N, 0.5, spec.seed, t) for t in range(S)]
        else:
            self.banks = [_Bank(spec.patterns, N, spec.coding_level, spec.seed, t) for t in range(S)]
        self.u = torch.empty(S, P)
        self.flip = torch.zeros(S, P, N, dtype=torch.bool)
        self.noise = torch.zeros(S, P, N) if spec.noise else None
        m = int(round(spec.flip * N))
        for t in range(S):
            g = torch.Generator().manual_seed(_mix(spec.seed, t, 29))
            self.u[t] = torch.rand(P, generator=g)
            if m:
                o = torch.rand(P, N, generator=g).argsort(-1)[:, :m]
                self.flip[t].scatter_(1, o, True)
            if self.noise is not None:
                self.noise[t] = torch.randn(P, N, generator=g)
        self.n_occ = int(round(spec.occlude * N))
        # binary-state +-1 models take {0,1} patterns of coding level a as biased +-1 patterns 2x - 1
        self.value_kind = "pm1" if spec.model in _PM1_MODELS else spec.patterns
        self.hidden_bits = None
        if self.load_is_bits:
            self.hidden_bits = {}

    # ---- helpers -----------------------------------------------------------------------------
    def k_max(self) -> int:
        s = self.spec
        if s.k_max is not None:
            return s.k_max
        if s.model == "classical":
            return max(2 * self.N, 16) if s.n_hidden is None else max(4 * s.n_hidden, 16)
        if s.model == "threshold":
            return self.N
        if s.model == "dense" and s.F != "exp":
            kh = krotov_hopfield_2016(self.N, s.n)
            cap = int(min(2 ** 20, max(64, math.ceil(20 * kh))))
            return cap if s.n_hidden is None else min(cap, max(4 * s.n_hidden, 16))
        if s.model == "dendritic-ei":
            return 100 * self.N
        return 2 ** 16 if s.n_hidden is None else max(4 * s.n_hidden, 16)

    def _generator(self) -> torch.Generator:
        self.calls += 1
        return torch.Generator().manual_seed(_mix(self.spec.seed, self.N, self.calls, 31))

    def _stack(self, trials: list[int], K: list[int], rows: int | None = None):
        """Patterns (S', Km, N) of the given trials, zero-padded beyond each trial's K."""
        Km = max(K) if rows is None else rows
        out = torch.zeros(len(trials), Km, self.N, dtype=torch.float32)
        for j, (t, k) in enumerate(zip(trials, K)):
            out[j, :k] = self.banks[t].get(k)[:Km].to(torch.float32)
        if self.value_kind != self.spec.patterns:
            out = torch.where(torch.arange(Km).view(1, Km, 1) < torch.tensor(K).view(-1, 1, 1), 2.0 * out - 1.0, out)
        return out

    def _probe_index(self, trials: list[int], K: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(S', P') indices of the probed patterns and a validity mask: every pattern when K <= P,
        else P patterns drawn uniformly (the same slots for every K: floor(u K))."""
        P = self.spec.probes
        Pm = min(P, max(K))
        idx = torch.zeros(len(trials), Pm, dtype=torch.long)
        ok = torch.zeros(len(trials), Pm, dtype=torch.bool)
        for j, (t, k) in enumerate(zip(trials, K)):
            if k <= P:
                idx[j, :k] = torch.arange(k)
                ok[j, :k] = True
            else:
                idx[j] = (self.u[t, :Pm] * k).long().clamp_max(k - 1)
                ok[j] = True
        return idx, ok

    def _cues(self, trials, targets):
        S_, P_, N = targets.shape
        fl = self.flip[trials, :P_] if self.spec.flip else None
        nz = self.noise[trials, :P_] if self.noise is not None else None
        return _apply_corruption(targets, fl, self.n_occ, self.spec.noise, nz, self.value_kind,
                                 _blank_value(self.spec.model, self.value_kind))

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self, trials: list[int], K: list[int]) -> torch.Tensor:
        """Criterion value per listed trial, trial t storing K[j] patterns (hidden bits for threshold)."""
        m = self.spec.model
        if m == "classical":
            return self._eval_classical(trials, K)
        if m == "dense":
            return self._eval_dense(trials, K)
        if m == "modern":
            return self._eval_modern(trials, K)
        if m == "spherical":
            return self._eval_spherical(trials, K)
        if m == "threshold":
            return self._eval_threshold(trials, K)
        return self._eval_dendritic(trials, K)

    def _stored_counts(self, K):
        nh = self.spec.n_hidden
        return [k if nh is None else min(k, nh) for k in K]

    def _targets(self, trials, K):
        idx, ok = self._probe_index(trials, K)
        pats = self._stack(trials, K)
        targets = torch.gather(pats, 1, idx.unsqueeze(-1).expand(-1, -1, self.N))
        return pats, targets, ok

    def _score(self, final, targets, ok, binary: bool):
        """Per-trial criterion value from final states (S', P', N) and their targets."""
        c = self.spec.criterion
        okf = ok.to(final.device).to(torch.float64)
        if c == "overlap":
            if binary and self.value_kind == "pm1":
                ov = (final * targets).mean(-1)
            elif self.value_kind == "binary":
                a = self.spec.coding_level
                ov = ((final - a) * (targets - a)).mean(-1) / (a * (1 - a))
            else:
                ov = torch.nn.functional.cosine_similarity(final, targets, dim=-1)
            return (ov.to(torch.float64) * okf).sum(-1) / okf.sum(-1)
        hit = self._recovered(final, targets)
        return (hit.to(torch.float64) * okf).sum(-1) / okf.sum(-1)

    def _recovered(self, final, targets):
        kind = self.value_kind
        if kind == "pm1":  # continuous states are read out by their sign
            return (torch.where(final >= 0, 1.0, -1.0) == targets).all(-1)
        if kind == "binary":
            return ((final > 0.5).to(targets.dtype) == targets).all(-1)
        return torch.nn.functional.cosine_similarity(final, targets, dim=-1) >= 0.99

    def _eval_classical(self, trials, K):
        sp = self.spec
        H = self._stored_counts(K)
        pats = self._stack(trials, K)
        stored = pats[:, : max(H)].clone()
        for j, hcount in enumerate(H):
            stored[j, hcount:] = 0
        n_st = torch.tensor(H)
        dev = self.device
        if sp.criterion == "stability":  # every stored pattern, one matrix product
            ok = torch.arange(pats.shape[1]).unsqueeze(0) < torch.tensor(K).unsqueeze(1)
            st = classical_stable(pats.to(dev), stored.to(dev), n_st.to(dev)).cpu()
            return (st & ok).sum(-1).double() / ok.sum(-1).double()
        idx, ok = self._probe_index(trials, K)
        targets = torch.gather(pats, 1, idx.unsqueeze(-1).expand(-1, -1, self.N))
        cues = self._cues(trials, targets)
        S_, P_, N = cues.shape
        row_trial = torch.arange(S_).repeat_interleave(P_)
        final, _ = classical_async_recall(hebbian_couplings(stored.to(dev)), cues.reshape(-1, N).to(dev),
                                          row_trial.to(dev), sp.max_steps, self._generator())
        return self._score(final.reshape(S_, P_, N).cpu(), targets, ok, True)

    def _eval_dense(self, trials, K):
        sp = self.spec
        H = self._stored_counts(K)
        pats, targets, ok = self._targets(trials, K)
        stored = pats[:, : max(H)]
        cues = targets if sp.criterion == "stability" else self._cues(trials, targets)
        S_, P_, N = cues.shape
        row_trial = torch.arange(S_).repeat_interleave(P_)
        steps = 1 if sp.criterion == "stability" else sp.max_steps
        dev = self.device
        final, _ = dense_async_recall(stored.to(dev), torch.tensor(H).to(dev), cues.reshape(-1, N).to(dev),
                                      row_trial.to(dev), steps, self._generator(), F=sp.F, n=sp.n, beta=sp.beta)
        return self._score(final.reshape(S_, P_, N).cpu(), targets, ok, True)

    def _recall_per_trial(self, trials, K, **model_kw):
        """Recall of the continuous effective models: one model per trial (``by_name``), every cue of
        the trial in one batch. Returns (final states, targets, ok)."""
        sp = self.spec
        H = self._stored_counts(K)
        pats, targets, ok = self._targets(trials, K)
        cues = targets if sp.criterion == "stability" else self._cues(trials, targets)
        steps = 1 if sp.criterion == "stability" else sp.max_steps
        out = []
        for j in range(len(trials)):
            m = by_name(sp.model, pats[j, : H[j]], dtype=sp.dtype, device=self.device, **model_kw)
            out.append(m.recall(cues[j].to(self.device, sp.dtype), max_steps=steps).state.cpu().float())
        return torch.stack(out), targets, ok

    def _eval_modern(self, trials, K):
        final, targets, ok = self._recall_per_trial(trials, K, beta=self.spec.beta)
        return self._score(final, targets, ok, False)

    def _eval_spherical(self, trials, K):
        sp = self.spec
        final, targets, ok = self._recall_per_trial(trials, K, F=sp.F, n=sp.n, beta=sp.beta)
        # states live on the unit sphere: read them out at the target's norm
        return self._score(final * targets.norm(dim=-1, keepdim=True), targets, ok, False)

    def _eval_dendritic(self, trials, K):
        sp = self.spec
        pats, targets, ok = self._targets(trials, K)
        cues = targets if sp.criterion == "stability" else self._cues(trials, targets)
        out = []
        for j in range(len(trials)):  # one network per trial; every cue of the trial in one batch
            m = DendriticEIMemory(pats[j, : K[j]].to(self.device), n=sp.n, dendrites=sp.dendrites)
            r = m.recall(cues[j].to(self.device))
            out.append(torch.as_tensor(r.state).detach().cpu().float())
        return self._score(torch.stack(out), targets, ok, True)

    # threshold model: the load is the number of hidden bits N_h
    def _hidden_states(self, trial: int, Hb: int) -> torch.Tensor:
        """(P', Hb) binary hidden states probed at N_h = Hb: all 2^Hb of them when that is <= probes,
        else ``probes`` random states with P(1) = coding_level (fixed per trial, nested in Hb)."""
        P = self.spec.probes
        if 2 ** Hb <= P:
            codes = torch.arange(2 ** Hb).unsqueeze(1)
            return ((codes >> torch.arange(Hb)) & 1).float()
        key = (trial, "rand")
        tab = self.hidden_bits.get(key)
        if tab is None or tab.shape[1] < Hb:
            g = torch.Generator().manual_seed(_mix(self.spec.seed, trial, 37))
            width = max(Hb, 64 if tab is None else 2 * tab.shape[1])
            tab = (torch.rand(P, width, generator=g) < self.spec.coding_level).float()
            self.hidden_bits[key] = tab
        return tab[:, :Hb]

    def _eval_threshold(self, trials, K):
        sp = self.spec
        Hm = max(K)
        Pm = max(self._hidden_states(t, k).shape[0] for t, k in zip(trials, K))
        s = torch.zeros(len(trials), Pm, Hm)
        ok = torch.zeros(len(trials), Pm, dtype=torch.bool)
        for j, (t, k) in enumerate(zip(trials, K)):
            st = self._hidden_states(t, k)
            s[j, : st.shape[0], :k] = st
            ok[j, : st.shape[0]] = True
        xi = self._stack(trials, K)  # (S', Hm, N_v), rows beyond N_h zero
        dev, dt = self.device, sp.dtype
        if sp.criterion == "stability":
            # the threshold model's fixed point (Kafraj, Krotov & Latham 2026): s = Theta(J s - theta),
            # J = xi xi^T / N_v (one matrix product)
            xi_d = xi.to(dev, torch.float64)
            J = torch.bmm(xi_d, xi_d.transpose(1, 2)) / self.N
            h = torch.bmm(s.to(dev, torch.float64), J)
            valid = (torch.arange(Hm).unsqueeze(0) < torch.tensor(K).unsqueeze(1)).to(dev).unsqueeze(1)
            agree = (((h > sp.theta).to(torch.float64) == s.to(dev, torch.float64)) | ~valid).all(-1).cpu()
            okf = ok.double()
            return ((agree.double() * okf).sum(-1) / okf.sum(-1))
        out = []
        for j, (t, k) in enumerate(zip(trials, K)):
            tm = ThresholdMemory(xi[j, :k].to(dev, dt), theta=sp.theta, tau_v=sp.tau_v, tau_h=sp.tau_h)
            sj = s[j, :, :k].to(dev, dt)
            v = tm.memory(sj)
            cue = v
            if sp.occlude or sp.noise:
                nz = None if self.noise is None else self.noise[t, : v.shape[0]].to(dev, dt)
                cue = _apply_corruption(v, None, self.n_occ, sp.noise, nz, "gaussian", 0.0)
            r = tm.recall(cue)
            hid = torch.as_tensor(r.hidden).detach().to(dev, dt)
            if sp.criterion == "recall":
                val = (hid == sj).all(-1)
            else:
                val = ((2 * hid - 1) * (2 * sj - 1)).mean(-1)
            okj = ok[j].to(dev)
            out.append(float((val.double() * okj).sum() / okj.sum()))
        return torch.tensor(out, dtype=torch.float64)
