"""The sweep engine of the binary models: asynchronous updates in which each neuron in turn takes the
sign of lower energy E = -sum_mu F(xi_mu . s), a tie keeping it (Hopfield 1982; Krotov & Hopfield
2016; KH 2021 eq. 5-9), batched over cues, with the overlaps h = xi s kept incrementally.

Flipping neuron i moves every overlap by -2 a_mu, a_mu = s_i xi_mu,i, so the energy gain of the flip is
``sum_mu [F(h_mu - 2 a_mu) - F(h_mu)] = sum_mu c_even(h_mu) + s_i sum_mu xi_mu,i c_odd(h_mu)`` with
``c_even(h) = (F(h-2) + F(h+2))/2 - F(h)`` and ``c_odd(h) = (F(h-2) - F(h+2))/2``: one dot product per
neuron, for every F. Overlaps of +-1 patterns are integers in [-N, N], so c_even and c_odd are read
from tables built once from the memory Lagrangian (F is written only in ``assocmem.lagrangians``).
The dot products of a block of neurons are one matrix product; a cue that flips a neuron gets the
dot products of the block's remaining neurons again from its new overlaps, so every decision is the
one of a sweep that visits the neurons one at a time.

Numerics (``OverlapSweeps.mode``):

* ``"exact"``: integer-valued F (powers, rectified powers, quadratic) whose sums fit the mantissa
  of float32 or float64: every decision is exact;
* ``"scaled"``: powers too large for that, tables of F(h / (N + 2)) in float64 (F homogeneous, so
  every comparison is the same up to a positive factor), exact up to float64 rounding;
* ``"log"``: F = exp(beta x)/beta; the tables hold exp(beta (h - max h)) in float64 and a flip is
  decided by ``sum_- e^(beta (h + 2)) > sum_+ e^(beta h)`` (memories that disagree / agree with s_i),
  with a rounding bound: a comparison within it is recomputed from the two sums of positive terms,
  and a difference still within rounding counts as a tie (the state is kept);
* ``"direct"`` (very large n or beta, where those tables would under- or overflow): each neuron
  compares ``G(h)`` with ``G(h - 2 s_i xi_i)``, ``G`` the log-sum-exp or the sum of F normalised per cue.

The quadratic interaction of the classical network (Hopfield 1982) has linear local fields
``u = T s``; :class:`FieldSweeps` keeps those instead and, within a sweep, jumps from one neuron whose
field disagrees with its sign to the next (a neuron that agrees would not change), so a sweep costs
about one row of T per flip; its rows advance through their sweeps independently. Both kernels take
per-row pattern sets (``group``), which the capacity lab uses to run many trials with different K at
once; the k-th sweep of every cue visits the neurons in the order of the k-th
``torch.randperm(N, generator)``, one draw per sweep, as a model stepping sweep by sweep draws them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..lagrangians import Exp, Lagrangian, Power, Quadratic, RectifiedPower

__all__ = ["OverlapSweeps", "FieldSweeps", "SweepRun", "run_sweeps", "hebbian_couplings"]

_U64 = 2.0 ** -53  # unit roundoff of float64
_BLOCK = 16  # neurons whose dot products are computed as one matrix product


def _groups(group: torch.Tensor, S: int) -> list[tuple[int, int, int]]:
    """(g, lo, hi): the rows lo:hi use pattern set g (rows are sorted by group)."""
    if S == 1:
        return [(0, 0, int(group.numel()))]
    counts = torch.bincount(group, minlength=S).tolist()
    out, lo = [], 0
    for g, c in enumerate(counts):
        if c:
            out.append((g, lo, lo + c))
            lo += c
    return out


def _split(rows: torch.Tensor, bounds: list[tuple[int, int, int]]):
    """Yield (g, positions in ``rows``) for sorted row indices ``rows`` per group segment."""
    if len(bounds) == 1:
        yield bounds[0][0], slice(None)
        return
    for g, lo, hi in bounds:
        a = int(torch.searchsorted(rows, lo))
        b = int(torch.searchsorted(rows, hi))
        if b > a:
            yield g, slice(a, b)


# ---------------------------------------------------------------------------------------------------
# overlap kernel: any additive F
# ---------------------------------------------------------------------------------------------------
class OverlapSweeps:
    """Sweeps of Dense Associative Memory ``E = -sum_mu F(xi_mu . s)`` (KH eq. 8; Krotov & Hopfield
    2016) for +-1 states, with F the memory Lagrangian ``lagrangian_h`` (``Power``,
    ``RectifiedPower``, ``Quadratic`` or ``Exp``).

    ``patterns`` is (K, N) or (S, H, N) for S pattern sets; ``n_stored`` (S,) says how many rows of
    each set are real (the rest is padding and takes no part). The kernel keeps, per cue, the
    overlaps with every memory and the per-memory coefficients of the next flip's energy gain."""

    def __init__(self, patterns: torch.Tensor, lagrangian_h: Lagrangian, n_stored: torch.Tensor | None = None):
        xi = patterns if patterns.ndim == 3 else patterns.unsqueeze(0)
        S, H, N = xi.shape
        self.S, self.H, self.N = S, H, N
        self.device = xi.device
        self.lagrangian_h = lagrangian_h
        if n_stored is None:
            valid = None
        else:
            n_stored = n_stored.to(self.device)
            valid = torch.arange(H, device=self.device).unsqueeze(0) < n_stored.unsqueeze(1)  # (S, H)
            if bool(valid.all()):
                valid = None
        self.valid = valid
        self.mode, self.work = self._numerics(lagrangian_h, H, N)
        xi_v = xi if valid is None else xi * valid.unsqueeze(-1).to(xi.dtype)
        # (S, N, H): row i of set g is neuron i's weights to every memory (padding columns zero)
        self.xi_t = xi_v.to(self.work).transpose(1, 2).contiguous()
        self.xi_i8 = self.xi_t.to(torch.int8) if self.mode != "direct" else None
        self._tables()

    # -- numerics -------------------------------------------------------------------------------
    @staticmethod
    def _F(lag: Lagrangian, x: torch.Tensor) -> torch.Tensor:
        """F elementwise (an additive Lagrangian evaluated on one neuron at a time)."""
        return lag.value(x.unsqueeze(-1))

    @classmethod
    def _numerics(cls, lag: Lagrangian, H: int, N: int) -> tuple[str, torch.dtype]:
        if isinstance(lag, Exp):
            beta = float(lag.beta)
            # the tables lose nothing while e^(2 beta) K e^-745 stays far below the float64 rounding
            return ("log" if 2.0 * beta + math.log(H + 1) < 660.0 else "direct"), torch.float64
        if not isinstance(lag, (Power, RectifiedPower, Quadratic)):
            raise TypeError(f"lagrangian_h: got a {type(lag).__name__}; the binary sweeps take Power, RectifiedPower, "
                            "Quadratic or Exp")
        grid = torch.arange(-N - 2, N + 3, dtype=torch.float64)
        F = cls._F(lag, grid)
        fmax = float(F.abs().max())
        co = (F[:-4] - F[4:]) / 2  # h = -N .. N
        ce = (F[:-4] + F[4:]) / 2 - F[2:-2]
        bound = 2.0 * H * float((co.abs() + ce.abs()).max()) + 1.0
        if fmax < 2.0 ** 53 and bound < 2.0 ** 24:
            return "exact", torch.float32
        if fmax < 2.0 ** 53 and bound < 2.0 ** 53:
            return "exact", torch.float64
        n = 2 if isinstance(lag, Quadratic) else int(lag.n)
        # F(h / (N + 2)): the smallest nonzero term (2 / (N + 2))^n must stay a normal float64
        if n * math.log2((N + 2) / 2.0) < 960:
            return "scaled", torch.float64
        return "direct", torch.float64

    def _tables(self) -> None:
        N, lag = self.N, self.lagrangian_h
        f64 = torch.float64
        if self.mode == "log":
            beta = float(lag.beta)
            self.beta = beta
            # index k = h - max h + 2N + 1 in [1, 2N + 1]; k = 0 (padding, clamped) gives 0
            k = torch.arange(-2 * N - 1, 1, dtype=f64)
            tab = torch.exp(beta * k)
            tab[0] = 0.0
            self.tab_c = tab.to(self.device)
            self.tanh_beta = math.tanh(beta)
            self.sentinel = -(2 * N + 2)
            return
        if self.mode == "direct":
            self.beta = float(lag.beta) if isinstance(lag, Exp) else None
            self.sentinel = 0
            return
        scale = 1.0 if self.mode == "exact" else float(N + 2)
        grid = torch.arange(-N - 2, N + 3, dtype=f64)
        F = self._F(lag, grid / scale)
        co = (F[:-4] - F[4:]) / 2  # index h + N, h = -N .. N
        ce = (F[:-4] + F[4:]) / 2 - F[2:-2]
        zero = torch.zeros(1, dtype=f64)  # index 2N + 1: padding
        self.tab_c = torch.cat([co, zero]).to(self.device, self.work)
        self.tab_e = torch.cat([ce, zero]).to(self.device, self.work)
        self.sentinel = 2 * N + 1

    # -- state of a batch of cues -----------------------------------------------------------------
    def start(self, s: torch.Tensor, group: torch.Tensor, bounds) -> "_OverlapState":
        """The kernel's state for +-1 rows ``s`` (R, N) sorted by ``group`` (segments ``bounds``)."""
        R = s.shape[0]
        sw = s.to(self.work)
        h = torch.empty(R, self.H, dtype=self.work, device=self.device)
        for g, lo, hi in bounds:
            torch.matmul(sw[lo:hi], self.xi_t[g], out=h[lo:hi])
        st = _OverlapState(s=sw.clone(), group=group)
        if self.mode == "direct":
            st.h = h.to(torch.float64)
            st.g = self._direct_G(st.h, group) if self.beta is not None else None
            return st
        hi_ = (h.to(torch.int32) + self.N) if self.mode != "log" else h.to(torch.int32)
        if self.valid is not None:
            hi_ = torch.where(self.valid.index_select(0, group), hi_, torch.full_like(hi_, self.sentinel))
        st.hi = hi_
        st.c, st.e, st.m = self._coefficients(hi_)
        return st

    def _coefficients(self, hi: torch.Tensor):
        """(per-memory coefficient of the flip's dot product, its row constant, row max) for rows ``hi``."""
        shape = hi.shape
        if self.mode == "log":
            m = hi.amax(-1, keepdim=True)
            idx = (hi - m).add_(2 * self.N + 1).clamp_min_(0).view(-1)
            c = self.tab_c.index_select(0, idx).view(shape)  # (int32 indices: the fastest gather)
            return c, c.sum(-1), m.squeeze(-1)
        idx = hi.reshape(-1)
        return self.tab_c.index_select(0, idx).view(shape), self.tab_e.index_select(0, idx).view(shape).sum(-1), None

    def _direct_G(self, h: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        if self.beta is not None:
            a = self.beta * h
            if self.valid is not None:
                a = a.masked_fill(~self.valid.index_select(0, group), float("-inf"))
            return torch.logsumexp(a, -1)
        return self._F(self.lagrangian_h, h).sum(-1)

    def overlaps(self, st: "_OverlapState") -> torch.Tensor:
        """The overlaps xi s of the state's rows, float64 (R, H) (exact integers)."""
        if self.mode == "direct":
            return st.h.clone()
        return (st.hi - (0 if self.mode == "log" else self.N)).to(torch.float64)

    # -- one sweep -----------------------------------------------------------------------------------
    def sweep(self, st: "_OverlapState", order: torch.Tensor, clamp: torch.Tensor | None, bounds) -> torch.Tensor:
        """Visit every neuron once in ``order``; returns the number of flips per row."""
        if self.mode == "direct":
            return self._sweep_direct(st, order, clamp, bounds)
        R = st.s.shape[0]
        flips = torch.zeros(R, dtype=torch.long, device=self.device)
        one_set = len(bounds) == 1 and self.S == 1
        xi_t = self.xi_t
        order_list = order.tolist()
        for b0 in range(0, self.N, _BLOCK):
            blk = order[b0:b0 + _BLOCK]
            ids = order_list[b0:b0 + _BLOCK]
            xb = xi_t.index_select(1, blk)  # (S, b, H)
            G = torch.empty(R, len(ids), dtype=self.work, device=self.device)
            for g, lo, hi in bounds:
                torch.matmul(st.c[lo:hi], xb[g].T, out=G[lo:hi])
            for j, i in enumerate(ids):
                si = st.s[:, i]
                if self.mode == "log":
                    flip = self._log_decision(st, si, G[:, j], i)
                else:
                    flip = torch.addcmul(st.e, si, G[:, j]) > 0
                if clamp is not None:
                    flip &= ~clamp[:, i]
                fr = flip.nonzero().flatten()
                if fr.numel() == 0:
                    continue
                old = si.index_select(0, fr)
                if one_set:
                    col = self.xi_i8[0, i]
                    hf = st.hi.index_select(0, fr).sub_((2 * old).to(torch.int32).unsqueeze(1) * col)
                else:
                    gf = st.group.index_select(0, fr)
                    col = self.xi_i8[:, i].index_select(0, gf)
                    hf = st.hi.index_select(0, fr).sub_((2 * old).to(torch.int32).unsqueeze(1) * col)
                cf, ef, mf = self._coefficients(hf)
                st.hi.index_copy_(0, fr, hf)
                st.c.index_copy_(0, fr, cf)
                st.e.index_copy_(0, fr, ef)
                if mf is not None:
                    st.m.index_copy_(0, fr, mf)
                st.s[:, i].index_copy_(0, fr, -old)
                flips.index_add_(0, fr, torch.ones_like(fr))
                if j + 1 < len(ids):  # the block's remaining dot products of the flipped rows
                    if one_set:
                        G[fr, j + 1:] = cf @ xb[0, j + 1:].T
                    else:
                        for g, sl in _split(fr, bounds):
                            G[fr[sl], j + 1:] = cf[sl] @ xb[g, j + 1:].T
        return flips

    def _log_decision(self, st, si, d, i) -> torch.Tensor:
        """Flip where sum_- e^(beta (h + 2)) > sum_+ e^(beta h), i.e. s_i (E . xi_i) < tanh(beta) sum E, E =
        e^(beta (h - max h)); comparisons within the rounding bound are redone from the two sums."""
        q = st.e * self.tanh_beta - si * d
        tol = st.e * (4.0 * (self.H + 800) * _U64)
        flip = q > tol
        amb = (q.abs() <= tol).nonzero().flatten()
        if amb.numel():
            flip[amb] = self._log_refine(st, si, i, amb)
        return flip

    def _log_refine(self, st, si, i, rows) -> torch.Tensor:
        c = st.c.index_select(0, rows)
        col = self.xi_t[:, i].index_select(0, st.group.index_select(0, rows)).to(torch.float64)
        a = col * si.index_select(0, rows).unsqueeze(1)  # +1: memory agrees with s_i, -1 disagrees, 0 padding
        plus = (c * (a > 0)).sum(-1)
        minus = (c * (a < 0)).sum(-1)
        d = torch.log(minus) + 2.0 * self.beta - torch.log(plus)
        tol = 4.0 * (self.H + 1000 + 2.0 * self.beta) * _U64
        return (d > tol) & (minus > 0)

    def _sweep_direct(self, st, order, clamp, bounds) -> torch.Tensor:
        R = st.s.shape[0]
        flips = torch.zeros(R, dtype=torch.long, device=self.device)
        for i in order.tolist():
            si = st.s[:, i]
            col = self.xi_t[:, i].to(torch.float64).index_select(0, st.group) if self.S > 1 else self.xi_t[0, i].to(torch.float64)
            hq = st.h - (2.0 * si.to(torch.float64)).unsqueeze(1) * col
            if self.beta is not None:
                gq = self._direct_G(hq, st.group)
                gh = st.g
            else:  # both sums normalised by the same per-row scale
                sc = torch.maximum(st.h.abs().amax(-1, keepdim=True), hq.abs().amax(-1, keepdim=True)).clamp_min(1.0)
                gq = self._F(self.lagrangian_h, hq / sc).sum(-1)
                gh = self._F(self.lagrangian_h, st.h / sc).sum(-1)
            flip = gq > gh
            if clamp is not None:
                flip &= ~clamp[:, i]
            fr = flip.nonzero().flatten()
            if fr.numel():
                st.h.index_copy_(0, fr, hq.index_select(0, fr))
                if self.beta is not None:
                    st.g.index_copy_(0, fr, gq.index_select(0, fr))
                st.s[:, i].index_copy_(0, fr, -si.index_select(0, fr))
                flips.index_add_(0, fr, torch.ones_like(fr))
        return flips


@dataclass
class _OverlapState:
    s: torch.Tensor
    group: torch.Tensor
    hi: torch.Tensor | None = None  # overlaps as table indices (int32)
    c: torch.Tensor | None = None  # (R, H) coefficient of the dot product
    e: torch.Tensor | None = None  # (R,) row constant (sum c_even, or sum E)
    m: torch.Tensor | None = None  # (R,) row max of the overlaps (log mode)
    h: torch.Tensor | None = None  # float64 overlaps (direct mode)
    g: torch.Tensor | None = None  # (R,) G(h) (direct mode, exp)

    def keep(self, rows: torch.Tensor) -> "_OverlapState":
        return _OverlapState(*(None if v is None else v.index_select(0, rows) for v in
                               (self.s, self.group, self.hi, self.c, self.e, self.m, self.h, self.g)))


# ---------------------------------------------------------------------------------------------------
# field kernel: the quadratic interaction (classical network), event-driven within a sweep
# ---------------------------------------------------------------------------------------------------
def hebbian_couplings(patterns: torch.Tensor) -> torch.Tensor:
    """``xi^T xi`` with zero diagonal for (K, N) or (S, H, N) +-1 patterns (zero rows are padding),
    in float32 where every local field is an exact integer there (N K < 2^23), else float64."""
    xi = patterns if patterns.ndim == 3 else patterns.unsqueeze(0)
    S, H, N = xi.shape
    work = torch.float64 if N * max(H, 1) >= 2 ** 23 else torch.float32
    x = xi.to(work)
    T = torch.bmm(x.transpose(1, 2), x)
    T.diagonal(dim1=1, dim2=2).zero_()
    return T if patterns.ndim == 3 else T[0]


class FieldSweeps:
    """Sweeps of the Hebbian network (Hopfield 1982) from integer couplings ``T`` (N, N) or (S, N, N)
    with zero diagonal (:func:`hebbian_couplings`): neuron i flips iff its local field (T s)_i disagrees
    with s_i (a zero field keeps it). Within a sweep each cue jumps to the next neuron in the order whose
    field disagrees, looking in the next ``window`` positions first and in the rest of the sweep only
    when none is there."""

    def __init__(self, couplings: torch.Tensor, window: int = 64):
        T = couplings if couplings.ndim == 3 else couplings.unsqueeze(0)
        self.S, self.N = T.shape[0], T.shape[1]
        self.T = T.contiguous()
        self.Tflat = self.T.reshape(self.S * self.N, self.N)
        self.work = T.dtype
        self.device = T.device
        self.window = max(1, min(int(window), self.N))
        self.mode = "exact"

    def run(self, s0: torch.Tensor, max_steps: int, generator, clamp, group, energy, stop_on_flip) -> "SweepRun":
        """All sweeps of every row, rows advancing independently: a row that ends sweep k starts sweep
        k + 1 (in the order of the (k + 1)-th draw) while others are still in sweep k, so that every
        step of the loop works on every unfinished row. The k-th sweep of every row uses the k-th
        ``randperm`` of the generator, drawn when the first row reaches it, as a sweep-by-sweep loop
        draws them; the results are those of sweeping the rows one sweep at a time."""
        R, N = s0.shape
        dev, work = self.device, self.work
        group = torch.zeros(R, dtype=torch.long, device=dev) if group is None else group.to(dev)
        s = s0.to(dev, work).clone()
        u = torch.empty(R, N, dtype=work, device=dev)
        for g in range(self.S):  # initial local fields, one product per pattern set
            rows = (group == g).nonzero().flatten()
            if rows.numel():
                u.index_copy_(0, rows, s.index_select(0, rows) @ self.T[g])
        free = None if clamp is None else ~clamp.to(dev)
        orders = [torch.randperm(N, generator=generator).to(dev)] if max_steps else []
        out_s = s.clone()
        out_c = torch.zeros(R, dtype=torch.bool, device=dev)
        trace = None
        if energy is not None:
            trace = torch.full((max_steps + 1, R), float("nan"), dtype=torch.float64, device=dev)
            trace[0] = energy(self, _FieldState(s, group, u))
        if not max_steps:
            return SweepRun(out_s.to(s0.dtype), out_c, 0, trace)
        ordr = orders[0].expand(R, N).contiguous()  # the current sweep order of each row
        gidx = torch.arange(R, device=dev)
        sweep = torch.zeros(R, dtype=torch.long, device=dev)
        pos = torch.zeros(R, dtype=torch.long, device=dev)
        flips = torch.zeros(R, dtype=torch.long, device=dev)
        done = torch.zeros(R, dtype=torch.bool, device=dev)
        W = self.window
        arW = torch.arange(W, device=dev)
        cols = torch.arange(N, device=dev)
        while gidx.numel():
            at = pos.unsqueeze(1) + arW
            win = ordr.gather(1, at.clamp_max(N - 1))  # neurons at the next W positions
            cand = (s.gather(1, win) * u.gather(1, win) < 0) & (at < N)
            if free is not None:
                cand &= free.gather(1, win)
            has = cand.any(1)
            c = pos + cand.view(torch.uint8).argmax(1)  # position of the first candidate
            far = (~has & ~done & (pos + W < N)).nonzero().flatten()
            if far.numel():  # nothing in the window: search the rest of the sweep
                o = ordr.index_select(0, far)
                cf = (s.index_select(0, far).gather(1, o) * u.index_select(0, far).gather(1, o) < 0)
                if free is not None:
                    cf &= free.index_select(0, far).gather(1, o)
                cf &= cols >= (pos.index_select(0, far) + W).unsqueeze(1)
                has.index_copy_(0, far, cf.any(1))
                c.index_copy_(0, far, cf.view(torch.uint8).argmax(1))
            has &= ~done
            fr = has.nonzero().flatten()
            if fr.numel():
                cf = c.index_select(0, fr)
                nf = ordr.index_select(0, fr).gather(1, cf.unsqueeze(1)).squeeze(1)
                old = s[fr, nf]
                s[fr, nf] = -old
                trows = self.Tflat.index_select(0, group.index_select(0, fr) * N + nf)
                if 2 * fr.numel() >= gidx.numel():
                    coef = torch.zeros(gidx.numel(), dtype=work, device=dev).index_copy_(0, fr, -2.0 * old)
                    full = torch.zeros(gidx.numel(), N, dtype=work, device=dev).index_copy_(0, fr, trows)
                    u.addcmul_(coef.unsqueeze(1), full)
                else:
                    u.index_copy_(0, fr, u.index_select(0, fr).addcmul_((-2.0 * old).unsqueeze(1), trows))
                pos.index_copy_(0, fr, cf + 1)
                flips.index_add_(0, fr, torch.ones_like(fr))
            er = ((~has) & ~done).nonzero().flatten()  # rows at the end of their sweep
            if er.numel():
                nxt = sweep.index_select(0, er) + 1
                conv = flips.index_select(0, er) == 0
                if trace is not None:
                    ge = gidx.index_select(0, er)
                    e = energy(self, _FieldState(s.index_select(0, er), group.index_select(0, er), u.index_select(0, er)))
                    trace.index_put_((nxt, ge), e)
                stop = conv | (nxt >= max_steps) | (not stop_on_flip)
                fin = er[stop]
                if fin.numel():
                    out_s.index_copy_(0, gidx.index_select(0, fin), s.index_select(0, fin))
                    out_c.index_copy_(0, gidx.index_select(0, fin), (conv | (not stop_on_flip))[stop])
                    done.index_fill_(0, fin, True)
                go = er[~stop]
                if go.numel():
                    nxt_go = nxt[~stop]
                    while len(orders) <= int(nxt_go.max()):
                        orders.append(torch.randperm(N, generator=generator).to(dev))
                    ordr.index_copy_(0, go, torch.stack([orders[k] for k in nxt_go.tolist()]))
                    sweep.index_copy_(0, go, nxt_go)
                    pos.index_fill_(0, go, 0)
                    flips.index_fill_(0, go, 0)
            n_done = int(done.sum())
            if n_done and (n_done == gidx.numel() or n_done * 4 >= gidx.numel()):
                keep = (~done).nonzero().flatten()
                s, u, ordr, gidx, group, sweep, pos, flips, done = (
                    x.index_select(0, keep) for x in (s, u, ordr, gidx, group, sweep, pos, flips, done))
                if free is not None:
                    free = free.index_select(0, keep)
        steps = len(orders)
        if trace is not None:  # a finished row keeps its energy
            trace = trace[: steps + 1]
            for k in range(1, steps + 1):
                trace[k] = torch.where(torch.isnan(trace[k]), trace[k - 1], trace[k])
        return SweepRun(out_s.to(s0.dtype), out_c, steps, trace)


@dataclass
class _FieldState:
    """Rows of the Hebbian kernel as its energy function sees them: states, pattern sets, local fields."""

    s: torch.Tensor
    group: torch.Tensor
    u: torch.Tensor


# ---------------------------------------------------------------------------------------------------
# the driver: sweeps until no neuron flips, rows retired as they finish
# ---------------------------------------------------------------------------------------------------
@dataclass
class SweepRun:
    """``state`` (R, N) final +-1 states in the input dtype, ``converged`` (R,) whether the last sweep
    of the row flipped nothing, ``steps`` sweeps taken (the longest row), ``energy`` (steps + 1, R)
    after every sweep (a finished row keeps its energy) when an energy function was given."""

    state: torch.Tensor
    converged: torch.Tensor
    steps: int
    energy: torch.Tensor | None = None


def run_sweeps(kernel, s0: torch.Tensor, max_steps: int, generator: torch.Generator | None, *,
               clamp: torch.Tensor | None = None, group: torch.Tensor | None = None, energy=None,
               stop_on_flip: bool = True) -> SweepRun:
    """Sweep ``kernel`` (:class:`OverlapSweeps` or :class:`FieldSweeps`) from the +-1 states ``s0``
    (R, N) until a sweep flips nothing in a row or ``max_steps`` sweeps. ``clamp`` (R, N) bool holds
    neurons at their start value; ``group`` (R,) says which pattern set each row uses; ``energy``
    (``f(kernel, state) -> (rows,)`` float64) records the energy after every sweep.
    ``stop_on_flip=False`` retires every row after its first sweep whatever it flipped (recall with a
    tolerance of 2 or more). Each sweep draws one ``torch.randperm(N, generator)``. The loop is a long
    chain of small tensor operations, for which OpenMP's fork and join cost more than a second thread
    gains, so it runs with one intra-op thread and gives the setting back afterwards."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        if hasattr(kernel, "run"):  # rows advance independently (FieldSweeps)
            return kernel.run(s0, max_steps, generator, clamp, group, energy, stop_on_flip)
        return _run(kernel, s0, max_steps, generator, clamp, group, energy, stop_on_flip)
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def _run(kernel, s0, max_steps, generator, clamp, group, energy, stop_on_flip) -> SweepRun:
    R, N = s0.shape
    dev = kernel.device
    if group is None:
        group = torch.zeros(R, dtype=torch.long, device=dev)
        srt = None
    else:
        group = group.to(dev)
        srt = torch.sort(group, stable=True).indices
        group = group.index_select(0, srt)
        s0 = s0.to(dev).index_select(0, srt)
        if clamp is not None:
            clamp = clamp.to(dev).index_select(0, srt)
    bounds = _groups(group, kernel.S)
    st = kernel.start(s0.to(dev), group, bounds)
    gidx = torch.arange(R, device=dev)  # original row of each active row (in sorted order)
    out_s = torch.empty(R, N, dtype=kernel.work, device=dev)
    out_c = torch.zeros(R, dtype=torch.bool, device=dev)
    energies = None
    if energy is not None:
        e = energy(kernel, st)
        energies = [e]
    steps = 0
    for step in range(1, max_steps + 1):
        order = torch.randperm(N, generator=generator).to(dev)
        flips = kernel.sweep(st, order, clamp, bounds)
        steps = step
        moved = flips > 0
        done = ~moved if stop_on_flip else torch.ones_like(moved)
        if energy is not None:
            e = energies[-1].clone()
            e.index_copy_(0, gidx, energy(kernel, st))
            energies.append(e)
        fin = done | (step == max_steps)
        if bool(fin.any()):
            f = fin.nonzero().flatten()
            out_s.index_copy_(0, gidx.index_select(0, f), st.s.index_select(0, f))
            out_c.index_copy_(0, gidx.index_select(0, f), done.index_select(0, f))
            keep = (~fin).nonzero().flatten()
            if keep.numel() == 0:
                break
            st = st.keep(keep)
            gidx = gidx.index_select(0, keep)
            group = group.index_select(0, keep)
            if clamp is not None:
                clamp = clamp.index_select(0, keep)
            bounds = _groups(group, kernel.S)
    if steps == 0:
        out_s.copy_(st.s)
    if srt is not None:  # back to the caller's row order
        inv = torch.empty_like(srt)
        inv[srt] = torch.arange(R, device=dev)
        out_s, out_c = out_s.index_select(0, inv), out_c.index_select(0, inv)
        if energies is not None:
            energies = [e.index_select(0, inv) for e in energies]
    return SweepRun(out_s.to(s0.dtype), out_c, steps, None if energies is None else torch.stack(energies))
