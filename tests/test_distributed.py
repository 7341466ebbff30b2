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
        torch.testing.assert_close(mem.step(q), ModernHopfield(xi, beta=0.7).step(q), rtol=1e-6, atol=1e-6)
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
