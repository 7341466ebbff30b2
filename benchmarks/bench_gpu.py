"""Model B retrieval (KH eq. 16) on a CUDA device: plain torch, assocmem.functional.retrieve (which
leaves CUDA tensors to torch), and chunked streaming retrieval with float32, bfloat16 and float16
banks (float32 accumulation), with errors against a float64 reference. Exits 0 with a note when
no GPU is present.

    python benchmarks/bench_gpu.py [--json benchmarks/results/gpu.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(fn, rounds=10):
    fn()
    torch.cuda.synchronize()
    best = math.inf
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=os.path.join(HERE, "results", "gpu.json"))
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    from assocmem import functional as AF
    from assocmem.streaming import streaming_retrieve

    dev = torch.device("cuda")
    rows = []
    for N, K, B in [(256, 10_000, 256), (1024, 100_000, 64), (64, 10_000_000, 256)]:
        g = torch.Generator(device=dev).manual_seed(0)
        X = torch.randint(0, 2, (K, N), generator=g, device=dev).float() * 2 - 1
        idx = torch.randint(0, K, (B,), generator=g, device=dev)
        q = torch.where(torch.rand(B, N, generator=g, device=dev) < 0.1, -X[idx], X[idx])
        beta = 2.0 / math.sqrt(N)
        ref = torch.softmax(beta * q.double() @ X.double().T, -1) @ X.double()
        fl = 4 * B * K * N
        cases = {"plain torch": lambda: torch.softmax(beta * q @ X.T, -1) @ X,
                 "functional.retrieve": lambda: AF.retrieve(q, X, beta=beta)}
        banks = {"float32": X, "bfloat16": X.to(torch.bfloat16), "float16": X.to(torch.float16)}
        for name, bank in banks.items():
            cases[f"streaming {name} bank"] = (lambda bank=bank: streaming_retrieve(q, bank, beta, 65536))
        for name, fn in cases.items():
            try:
                t = timed(fn)
                out = fn()
            except torch.cuda.OutOfMemoryError:
                rows.append({"N": N, "K": K, "B": B, "case": name, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            err = float((out.double() - ref).abs().max() / ref.abs().max())
            exact = float((torch.sign(out) == X[idx]).all(-1).float().mean())
            rows.append({"N": N, "K": K, "B": B, "case": name, "seconds": t, "tflops": fl / t / 1e12,
                         "relative_error": err, "exact_recall_one_step": exact})
            print(f"N={N} K={K} B={B} {name:<28} {t * 1e3:9.3f} ms {fl / t / 1e12:7.2f} TFLOP/s rel.err {err:.1e} exact {exact:.1%}")
        del X, q, ref
        torch.cuda.empty_cache()
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, fh, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
