"""ShardedMemory over torch.distributed: 2 gloo processes on 127.0.0.1 (launched with torchrun)
give the single-process Model B results; clean exit (status 0); shard ranges; bad input."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from assocmem import ModernHopfield
from assocmem.distributed import ShardedMemory, shard_range


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, nproc=2, extra=()):
    out = tmp_path / f"result-{nproc}.pt"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "assocmem.distributed", "--n-memories=3001", "--n-features=32",
           "--batch=12", "--beta=1.0", f"--out={out}", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out)


def single_process_reference(res):
    g = torch.Generator().manual_seed(0)  # the worker's bank: same seed, same construction
    xi = (torch.randint(0, 2, (3001, 32), generator=g) * 2 - 1).float()
    return ModernHopfield(xi, beta=1.0), res["cue"]


def test_two_gloo_ranks_equal_single_process(tmp_path):
    res = launch(tmp_path, 2)
    assert res["world"] == 2
    m, cue = single_process_reference(res)
    torch.testing.assert_close(res["step"], m.step(cue), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res["energy"], m.energy(cue).float(), rtol=1e-6, atol=1e-5)
    ref = m.recall(cue, max_steps=20)
    assert res["recall_steps"] == ref.steps
    assert torch.equal(res["converged"], ref.converged)
    torch.testing.assert_close(res["recall_state"], ref.state, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res["recall_energy"], ref.energy.float(), rtol=1e-6, atol=1e-5)


@pytest.mark.slow
def test_clean_exit_every_time(tmp_path):
    for _ in range(5):
        launch(tmp_path, 2)


def test_shard_ranges_cover_the_bank_once():
    for K in (1, 2, 7, 100, 101):
        for world in (1, 2, 3, 8):
            ranges = [shard_range(K, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == K
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [hi - lo for lo, hi in ranges]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard_range(10, 2, 2)


def test_single_rank_group_in_process(tmp_path):
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        g = torch.Generator().manual_seed(3)
        xi = torch.randn(500, 16, generator=g)
        q = torch.randn(4, 16, generator=g)
        mem = ShardedMemory.from_full(xi, beta=0.7)
        # float32 sums over 500 memories in two orders (the shard's chunked kernel, the model's own
        # path): a few ulps of the largest term apart (2.7e-6 seen on the AVX-512 Xeon); each is
        # within 1e-5 of the float64 result
        ref = ModernHopfield(xi.double(), beta=0.7).step(q.double())
        torch.testing.assert_close(mem.step(q).double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mem.step(q), ModernHopfield(xi, beta=0.7).step(q), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="last dimension 16"):
            mem.step(torch.zeros(2, 15))
        with pytest.raises(ValueError, match="n_memories"):
            ShardedMemory(xi, n_memories=7)
        with pytest.raises(ValueError, match="beta"):
            ShardedMemory(xi, beta=0.0)
        del mem
    finally:
        import gc

        gc.collect()
        dist.destroy_process_group()
    with pytest.raises(RuntimeError, match="process group"):
        ShardedMemory(torch.zeros(3, 4))


# ---- timeouts: a rank that stops must not hold the others for torch's default 30 minutes ----------
def test_init_from_env_passes_the_timeout_to_init_process_group(monkeypatch):
    import datetime

    import torch.distributed as dist

    from assocmem import distributed as D

    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.append(kw))
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(dist, "get_rank", lambda *a: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 1)
    assert D.init_from_env(backend="gloo") == (0, 1, torch.device("cpu"))
    assert seen[-1]["timeout"] == D.DEFAULT_TIMEOUT == datetime.timedelta(minutes=5)
    D.init_from_env(backend="gloo", timeout=2)
    assert seen[-1]["timeout"] == datetime.timedelta(seconds=2)
    D.init_from_env(backend="gloo", timeout=datetime.timedelta(milliseconds=1500))
    assert seen[-1]["timeout"] == datetime.timedelta(seconds=1.5)
    n = len(seen)
    for bad, err in ((0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                     (datetime.timedelta(0), ValueError), ("2", TypeError), (None, TypeError), (True, TypeError)):
        with pytest.raises(err, match="timeout: got"):
            D.init_from_env(backend="gloo", timeout=bad)
    assert len(seen) == n  # refused before any group was created


_STOPPING_WORKER = r'''
import json, os, signal, sys, time
import torch
from assocmem.distributed import ShardedMemory, init_from_env
rank, world, device = init_from_env(timeout=float(sys.argv[2]))
mem = ShardedMemory.from_full(torch.randn(100, 8, generator=torch.Generator().manual_seed(0)))
mem.step(torch.ones(8))
if rank == 1:
    os.kill(os.getpid(), signal.SIGSTOP)  # stopped, not dead: its sockets stay open
t0 = time.monotonic()
try:
    mem.step(torch.ones(8))
    res = {"error": None}
except Exception as e:
    res = {"error": type(e).__name__, "msg": str(e)}
res["waited"] = time.monotonic() - t0
with open(sys.argv[1], "w") as fh:
    json.dump(res, fh)
os._exit(0)  # the group is unusable after a timeout: no clean shutdown to wait for
'''


def test_a_stopped_rank_times_out_the_others(tmp_path):
    """Rank 1 of a 2-process gloo group stops itself (SIGSTOP) before a step; rank 0's step raises
    TimeoutError after the 2 s timeout given to init_from_env (it waited torch's 30 minutes)."""
    import json
    import time

    script = tmp_path / "worker.py"
    script.write_text(_STOPPING_WORKER)
    port = free_port()
    procs = []
    try:
        for rank in (0, 1):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
            procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"r{rank}.json"), "2"], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        t0 = time.monotonic()
        out, _ = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 0, out[-3000:]
        res = json.loads((tmp_path / "r0.json").read_text())
        assert res["error"] == "TimeoutError", res
        assert "rank 0" in res["msg"] and "timeout" in res["msg"], res
        assert 1.5 <= res["waited"] < 15, res  # the 2 s timeout, not minutes
        assert time.monotonic() - t0 < 120
        assert procs[1].poll() is None  # rank 1 is still stopped
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL also ends a stopped process
            p.wait(timeout=30)
