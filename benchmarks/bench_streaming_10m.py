"""K = 10,000,000 patterns of N = 64 (2.4 GiB of float32) recalled in batches with streaming Model B
retrieval (KH eq. 16, online log-sum-exp over the memory axis), from a bank in RAM and from a
memory-mapped bank file; reports time, recall accuracy and peak resident memory against the bank.

    python benchmarks/bench_streaming_10m.py                 # both modes, each in its own process
    python benchmarks/bench_streaming_10m.py --mode ram --n-memories 1000000   # a smaller run

Writes benchmarks/results/streaming_10m.json (atomically). The memmap mode writes a 2.4 GiB bank
file to --dir (default: a temporary directory) and deletes it afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def make_blocks(K, N, seed, block=262_144):
    g = torch.Generator().manual_seed(seed)
    for i in range(0, K, block):
        r = torch.randint(0, 2, (min(block, K - i), N), generator=g, dtype=torch.int8)
        yield r.float().mul_(2).sub_(1)


def one_mode(a) -> dict:
    from assocmem.streaming import StreamingMemory, write_bank
    from tqdm import tqdm

    K, N = a.n_memories, a.n_features
    bank_bytes = K * N * 4
    t0 = time.perf_counter()
    tmpdir = None
    if a.mode == "ram":
        bank = torch.empty(K, N)
        i = 0
        for blk in make_blocks(K, N, a.seed):
            bank[i:i + blk.shape[0]] = blk
            i += blk.shape[0]
        src = bank
    else:
        tmpdir = tempfile.mkdtemp(dir=a.dir)
        path = os.path.join(tmpdir, "bank10m.safetensors")
        src = write_bank(path, make_blocks(K, N, a.seed), n_memories=K, n_features=N, checksum=True)
    build_s = time.perf_counter() - t0
    # cues: stored patterns with 10 % of the bits flipped (regenerated from the same seed, so the
    # RAM and memmap runs recall the same targets)
    g = torch.Generator().manual_seed(a.seed + 1)
    idx = torch.randint(0, K, (a.cues,), generator=g).sort().values
    targets = torch.empty(a.cues, N)
    if a.mode == "ram":
        targets = bank[idx].clone()
    else:
        for j, k in enumerate(idx.tolist()):
            targets[j] = src.rows(k, k + 1)[0]
    flips = torch.rand(a.cues, N, generator=g) < a.flip
    cue = torch.where(flips, -targets, targets)
    mem = StreamingMemory(src, beta=a.beta, batch_size=a.batch)
    # the kernel's one-time calibration for this shape class (cached on disk), timed on its own
    from assocmem import _kernels

    t0 = time.perf_counter()
    plan = _kernels.best_plan(a.batch, N, N, K, torch.float32, torch.float32)
    calibration_s = time.perf_counter() - t0
    rss_before = status_kib("VmRSS")
    t0 = time.perf_counter()
    states, steps = [], 0
    for i in tqdm(range(0, a.cues, a.batch), desc=f"recall ({a.mode})", unit="batch"):
        r = mem.recall(cue[i:i + a.batch], max_steps=a.max_steps, tol=1e-3)
        states.append(r.state)
        steps = max(steps, r.steps)
    recall_s = time.perf_counter() - t0
    state = torch.cat(states)
    exact = float((torch.sign(state) == targets).all(-1).float().mean())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"mode": a.mode, "K": K, "N": N, "cues": a.cues, "batch": a.batch, "beta": a.beta, "flip": a.flip,
           "bank_bytes": bank_bytes, "bank_gib": bank_bytes / 2 ** 30, "build_s": build_s,
           "calibration_s": calibration_s, "kernel_plan": list(plan), "recall_s": recall_s,
           "max_steps_taken": steps, "exact_recall_fraction": exact,
           "peak_rss_gib": peak_kib / 2 ** 20, "peak_rss_over_bank": peak_kib * 1024 / bank_bytes,
           "rss_before_recall_gib": rss_before / 2 ** 20, "rss_anon_end_gib": status_kib("RssAnon") / 2 ** 20,
           "rss_file_end_gib": status_kib("RssFile") / 2 ** 20, "torch_threads": torch.get_num_threads()}
    if tmpdir:
        os.unlink(os.path.join(tmpdir, "bank10m.safetensors"))
        os.rmdir(tmpdir)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["ram", "memmap", "both"], default="both")
    p.add_argument("--n-memories", type=int, default=10_000_000)
    p.add_argument("--n-features", type=int, default=64)
    p.add_argument("--cues", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--flip", type=float, default=0.1)
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where the memmap bank file goes (default: system temp)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "streaming_10m.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(one_mode(a)), flush=True)
        return 0
    modes = ["ram", "memmap"] if a.mode == "both" else [a.mode]
    results = []
    for m in modes:  # each mode in a fresh process, so that its peak RSS is its own
        args = [sys.executable, os.path.abspath(__file__), "--child", "--mode", m] + [
            x for k, v in vars(a).items() if k not in ("mode", "json", "child") and v is not None
            for x in (f"--{k.replace('_', '-')}", str(v))]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
        results.append(res)
        print(f"{m:>6}: K={res['K']:,} N={res['N']} bank {res['bank_gib']:.2f} GiB | build {res['build_s']:.1f} s | "
              f"calibration {res['calibration_s']:.1f} s | recall of {res['cues']} cues in batches of {res['batch']}: "
              f"{res['recall_s']:.1f} s, "
              f"{res['max_steps_taken']} steps, exact {res['exact_recall_fraction']:.1%} | peak RSS "
              f"{res['peak_rss_gib']:.2f} GiB = {res['peak_rss_over_bank']:.2f} x bank "
              f"(end: anon {res['rss_anon_end_gib']:.2f} GiB, file-backed {res['rss_file_end_gib']:.2f} GiB)")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    from assocmem.commands.bench import machine, write_json_atomic

    write_json_atomic(a.json, {"machine": machine(), "results": results})
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
