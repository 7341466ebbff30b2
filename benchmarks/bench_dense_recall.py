"""Speed of binary Dense Associative Memory recall (the sweep engine of ``assocmem.models.sweep``).

``DenseAssociativeMemory.recall`` of 32 cues (20 % of the pixels flipped) over 10,000 random +-1
patterns of N = 784, for F = x^3 and F = exp (beta = 1), against one (32 x 784) @ (784 x 10,000)
float32 matrix product, the plain reference, timed in the same run and interleaved with the recalls
(so that a loaded machine slows both alike). The printed ratio is recall time / product time; the
target is at most 100. Every recall must recover all 32 patterns.

Run:  .venv/bin/python benchmarks/bench_dense_recall.py [--threads 2] [--rounds 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from assocmem import DenseAssociativeMemory

K, N, B = 10_000, 784, 32
FLIP = 0.2


def _data():
    g = torch.Generator().manual_seed(0)
    xi = torch.randint(0, 2, (K, N), generator=g).float() * 2 - 1
    cue = xi[:B].clone()
    idx = torch.rand(B, N, generator=g).argsort(-1)[:, : int(FLIP * N)]
    cue.scatter_(1, idx, -cue.gather(1, idx))
    return xi, cue


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="timed recalls per F (default 3; the median is reported)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    xi, cue = _data()
    q, X = torch.randn(B, N), torch.randn(N, K)
    for _ in range(3):
        q @ X
    out = {"K": K, "N": N, "B": B, "flip": FLIP, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "machine": platform.machine(), "load_average_start": os.getloadavg()[0], "cases": {}}

    def product_s():
        t0 = time.perf_counter()
        for _ in range(10):
            q @ X
        return (time.perf_counter() - t0) / 10

    for F in ("power", "exp"):
        m = DenseAssociativeMemory(xi, F=F, n=3, beta=1.0)
        rec, ref = [], []
        for _ in range(max(1, args.rounds)):
            ref.append(product_s())
            t0 = time.perf_counter()
            r = m.recall(cue, generator=torch.Generator().manual_seed(1))
            rec.append(time.perf_counter() - t0)
            ref.append(product_s())
        exact = float((r.state == xi[:B]).all(-1).float().mean())
        ratios = [rec[i] / ((ref[2 * i] + ref[2 * i + 1]) / 2) for i in range(len(rec))]
        out["cases"][F] = {"recall_s": statistics.median(rec), "product_s": statistics.median(ref),
                           "ratio": statistics.median(ratios), "ratios": ratios, "sweeps": r.steps,
                           "exact_recall": exact, "mode": m._mode, "work_dtype": str(m._work).replace("torch.", "")}
    out["load_average_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"Dense AM recall, K = {K}, N = {N}, {B} cues with {FLIP:.0%} flipped, {out['threads']} torch threads "
          f"(load average {out['load_average_start']:.1f} -> {out['load_average_end']:.1f} on {out['cpu_count']} cores)")
    for F, c in out["cases"].items():
        label = "x^3" if F == "power" else "exp"
        print(f"  F = {label:3s} ({c['mode']}, {c['work_dtype']}): recall {c['recall_s'] * 1e3:8.1f} ms in {c['sweeps']} sweeps, "
              f"product {c['product_s'] * 1e3:6.2f} ms -> ratio {c['ratio']:6.1f} (target <= 100: "
              f"{'met' if c['ratio'] <= 100 else 'MISSED'}); exact recall {c['exact_recall']:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
