"""Model B memory sharded over the ranks of ``torch.distributed`` (KH eq. 13 and 16).

Each rank holds a slice of the patterns xi. One update ``v <- xi^T softmax(beta xi v)`` computes on
every rank the local max m_r, sum of exponentials l_r and unnormalised output acc_r, then merges
them exactly: ``m = all_reduce(m_r, MAX)``, ``(l, acc) = all_reduce(e^{m_r - m} (l_r, acc_r), SUM)``,
``v' = acc / l`` (the log-sum-exp merge of :mod:`assocmem._kernels`). Any backend: gloo (CPU) under
``torchrun --nproc-per-node N``, NCCL on GPUs across nodes. Run ``python -m assocmem.distributed``
under torchrun for a self-check and timing (see ``docs/distributed.md``).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import sys
import time
from numbers import Real

import numpy as np
import torch
import torch.distributed as dist

from . import _kernels
from ._validation import as_batch, check_int, check_positive, check_tensor, describe
from .recall import RecallResult, recall_loop

__all__ = ["ShardedMemory", "shard_range", "init_from_env", "shutdown", "DEFAULT_TIMEOUT"]

# How long a collective waits for the other ranks before it fails. torch's own default is 30 minutes
# (10 for NCCL); a rank that stopped (SIGSTOP, a debugger, a swapped-out node) then holds every other
# rank that long. Five minutes covers the slowest step measured (a 10^7 x 64 bank, about 12 s per
# pass on 2 cores) and a rank still loading a large bank from disk many times over.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)


def as_timeout(timeout) -> datetime.timedelta:
    """``timeout`` (a ``datetime.timedelta`` or seconds) as a positive, finite ``timedelta``."""
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, Real) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(f"timeout: got {describe(timeout)}; expected a datetime.timedelta or a number of seconds")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"timeout: got {timeout!r}; expected a positive, finite duration")
    return datetime.timedelta(seconds=seconds)


_TIMED_OUT = ("timed out", "timeout")  # gloo: "Timed out waiting 2000ms for recv"; NCCL: "Watchdog caught collective operation timeout"


def _all_reduce(t: torch.Tensor, op, group) -> None:
    """``dist.all_reduce`` whose timeout (a rank that stopped or died) is a ``TimeoutError`` saying so."""
    try:
        dist.all_reduce(t, op=op, group=group)
    except RuntimeError as e:  # gloo and NCCL report a timed-out collective as RuntimeError (DistBackendError)
        text = str(e)
        if not any(w in text.lower() for w in _TIMED_OUT):
            raise
        first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
        raise TimeoutError(f"ShardedMemory on rank {dist.get_rank(group)}: the other ranks did not join a collective "
                           "within the process group's timeout (a rank stopped, died or is far behind; see "
                           f"init_from_env(timeout=)); the group cannot be used after this ({first})") from e


def shard_range(K: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of a K-pattern bank held by ``rank`` of ``world``: contiguous, sizes differing by
    at most one (a rank may hold none when K < world)."""
    K = check_int("K", K, minimum=1)
    world = check_int("world", world, minimum=1)
    rank = check_int("rank", rank, minimum=0, maximum=world - 1)
    base, extra = divmod(K, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def init_from_env(backend: str | None = None, timeout=DEFAULT_TIMEOUT):
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``...). Backend: NCCL when CUDA is available, else gloo. Returns
    ``(rank, world_size, device)`` (the GPU ``LOCAL_RANK`` under NCCL, else the CPU).

    ``timeout`` (a ``datetime.timedelta`` or seconds; default :data:`DEFAULT_TIMEOUT`, 5 minutes)
    bounds how long the rendezvous and every collective (each ``ShardedMemory`` step) wait for the
    other ranks: when a rank stops or dies, the others raise :class:`TimeoutError` after it instead
    of waiting torch's default 30 minutes. Where the group already exists it is used as it is (its
    own timeout applies)."""
    timeout = as_timeout(timeout)
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timeout)
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return dist.get_rank(), dist.get_world_size(), device


def shutdown() -> None:
    """Leave cleanly: collect garbage first (tensors that reference the group), wait for every rank,
    then destroy the process group, so the process exits with status 0."""
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class ShardedMemory(torch.nn.Module):
    """Model B over patterns spread across ranks: ``xi_local`` (K_r, N) are this rank's rows.

    ``step``, ``energy`` and ``recall`` are collective: every rank of ``group`` must call them with
    the same queries, and every rank gets the full result. Per step the communication is one
    all-reduce (MAX) of B numbers and one all-reduce (SUM) of B (N + 1) numbers. A collective that
    the other ranks do not join within the group's timeout (``init_from_env(timeout=)``) raises
    ``TimeoutError``.

    >>> # under torchrun: rank, world, device = init_from_env()
    >>> # mem = ShardedMemory.from_full(xi, beta=1.0)       # each rank keeps its slice
    >>> # v = mem.step(cue)                                  # same answer as ModernHopfield(xi).step(cue)
    """

    def __init__(self, xi_local, beta: float = 1.0, n_memories: int | None = None, group=None):
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ShardedMemory needs an initialised torch.distributed process group; "
                               "run under torchrun and call assocmem.distributed.init_from_env() first")
        x = check_tensor("xi_local", xi_local, ndim=2, allow_empty=True,
                         expected="shape (K_r, N): this rank's stored patterns, one per row")
        self.register_buffer("xi", x.contiguous())
        self.beta = float(check_positive("beta", beta))
        self.group = group
        # every rank must agree on N; the global K is summed (one collective at construction)
        shape = torch.tensor([x.shape[0], x.shape[1], -x.shape[1]], dtype=torch.float64, device=x.device)
        k = shape[:1].clone()
        _all_reduce(k, dist.ReduceOp.SUM, group)
        nn_ = shape[1:].clone()
        _all_reduce(nn_, dist.ReduceOp.MAX, group)
        if int(nn_[0]) != x.shape[1] or int(-nn_[1]) != x.shape[1]:
            raise ValueError(f"xi_local: got {describe(x)} on rank {dist.get_rank(group)}; expected the same pattern size N on every rank")
        self.n_memories = int(k.item())
        if n_memories is not None and int(n_memories) != self.n_memories:
            raise ValueError(f"n_memories: got {n_memories}; the ranks hold {self.n_memories} patterns in total")
        if self.n_memories < 1:
            raise ValueError("xi_local: the ranks hold no patterns in total; expected at least one")

    @classmethod
    def from_full(cls, xi, beta: float = 1.0, group=None, device=None) -> "ShardedMemory":
        """Keep this rank's contiguous slice (``shard_range``) of the full (K, N) bank ``xi``."""
        x = check_tensor("xi", xi, ndim=2, expected="shape (K, N): one stored pattern per row")
        lo, hi = shard_range(x.shape[0], dist.get_rank(group), dist.get_world_size(group))
        part = x[lo:hi].clone()
        if device is not None:
            part = part.to(device)
        return cls(part, beta=beta, n_memories=x.shape[0], group=group)

    @property
    def n_features(self) -> int:
        return self.xi.shape[1]

    def _prepare(self, name, x):
        t = check_tensor(name, x, ndim=(1, 2), expected=f"shape ({self.n_features},) or (B, {self.n_features})")
        t, single = as_batch(name, t, self.n_features)
        return t.to(dtype=self.xi.dtype, device=self.xi.device), single

    def local_partial(self, q: torch.Tensor):
        """This rank's ``(m_r, l_r, acc_r)`` for queries q (B, N): max score, sum of exp(score - m_r),
        unnormalised output. Empty shards give (-inf, 0, 0)."""
        B = q.shape[0]
        xi = self.xi
        if xi.shape[0] == 0:
            return (torch.full((B,), -math.inf, dtype=q.dtype, device=q.device), q.new_zeros(B), q.new_zeros(B, self.n_features))
        if xi.device.type == "cpu" and xi.dtype in (torch.float32, torch.float64) and _kernels.get_mode() != "torch":
            qs = np.multiply(q.numpy(), self.beta, dtype=q.numpy().dtype)
            chunk, variant = _kernels.best_plan(B, self.n_features, self.n_features, xi.shape[0], xi.dtype)
            m, l, acc = _kernels.retrieve_numpy(qs, xi.numpy(), None, chunk, _kernels.kernel_threads(), normalise=False,
                                                variant=variant)
            return torch.from_numpy(m), torch.from_numpy(l), torch.from_numpy(acc)
        s = (q * self.beta) @ xi.T
        m = s.amax(-1)
        s.sub_(m.unsqueeze(-1)).exp_()
        return m, s.sum(-1), s @ xi

    @torch.no_grad()
    def _merge(self, q):
        m, l, acc = self.local_partial(q)
        mx = m.clone()
        _all_reduce(mx, dist.ReduceOp.MAX, self.group)
        w = torch.exp(m - mx)  # 0 on ranks whose shard is empty (m = -inf)
        buf = torch.cat([(l * w).unsqueeze(-1), acc * w.unsqueeze(-1)], dim=-1)
        _all_reduce(buf, dist.ReduceOp.SUM, self.group)
        return buf[:, 1:] / buf[:, :1], mx + torch.log(buf[:, 0])

    def step(self, x) -> torch.Tensor:
        """One update of every state (collective): ``xi^T softmax(beta xi x)`` over all ranks' patterns."""
        q, single = self._prepare("x", x)
        out, _ = self._merge(q)
        return out[0] if single else out

    def energy(self, x) -> torch.Tensor:
        """KH eq. (13): ``1/2 x.x - logsumexp(beta xi x) / beta`` over all ranks' patterns (collective)."""
        q, single = self._prepare("x", x)
        _, lse = self._merge(q)
        e = 0.5 * (q * q).sum(-1) - lse / self.beta
        return e[0] if single else e

    def recall(self, cue, max_steps: int = 100, tol: float = 1e-6) -> RecallResult:
        """Iterate ``step`` until no state moves by more than ``tol`` (max |dx|), with the recall loop
        every Model B source shares (:func:`assocmem.recall.recall_loop`). Every rank sees the same
        merged numbers, so every rank takes the same steps and collectives. Energies come from the
        log-sum-exp of each pass; the final states' energies take one more (collective) pass, made
        here on every rank rather than when the trace is first read."""
        q, single = self._prepare("cue", cue)
        max_steps = check_int("max_steps", max_steps, minimum=0)
        tol = float(check_positive("tol", tol, allow_zero=True))
        r = recall_loop(self._step_with_energy, self._energy, q, max_steps, tol, single=single)
        r.energy = r.energy  # evaluated now: a collective every rank must join
        return r

    def _step_with_energy(self, x, clamp, cue):
        new, lse = self._merge(x)
        return new, 0.5 * (x * x).sum(-1) - lse / self.beta

    def _energy(self, x):
        _, lse = self._merge(x)
        return 0.5 * (x * x).sum(-1) - lse / self.beta


# ---------------------------------------------------------------------------------------------------
# self-check and timing: torchrun --nproc-per-node N -m assocmem.distributed --out result.pt
# ---------------------------------------------------------------------------------------------------
def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m assocmem.distributed",
                                description="Sharded Model B retrieval: self-check and timing (run under torchrun).")
    p.add_argument("--n-features", type=int, default=64)
    p.add_argument("--n-memories", type=int, default=20000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=0, help="timed steps after the check (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="rank 0 writes the results here (torch.save)")
    p.add_argument("--json", default=None, help="rank 0 writes the timings here")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT.total_seconds(),
                   help=f"seconds a collective waits for the other ranks (default {DEFAULT_TIMEOUT.total_seconds():g})")
    a = p.parse_args(argv)
    rank, world, device = init_from_env(timeout=a.timeout)
    g = torch.Generator().manual_seed(a.seed)
    xi = (torch.randint(0, 2, (a.n_memories, a.n_features), generator=g) * 2 - 1).float()
    idx = torch.randint(0, a.n_memories, (a.batch,), generator=g)
    cue = torch.where(torch.rand(a.batch, a.n_features, generator=g) < 0.1, -xi[idx], xi[idx])
    mem = ShardedMemory.from_full(xi, beta=a.beta, device=device)
    del xi
    v = mem.step(cue.to(device))
    e = mem.energy(cue.to(device))
    r = mem.recall(cue.to(device), max_steps=20)
    times = []
    for _ in range(a.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        mem.step(cue.to(device))
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        if a.out:
            torch.save({"step": v.cpu(), "energy": e.cpu(), "recall_state": r.state.cpu(), "recall_steps": r.steps,
                        "recall_energy": r.energy.cpu(), "converged": r.converged.cpu(), "cue": cue,
                        "world": world}, a.out)
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"world": world, "K": a.n_memories, "N": a.n_features, "B": a.batch,
                           "step_seconds_min": min(times) if times else None,
                           "step_seconds_median": sorted(times)[len(times) // 2] if times else None,
                           "local_patterns": int(mem.xi.shape[0])}, fh)
    del mem, v, e, r
    shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover - run by torchrun
    sys.exit(_main())
