"""Speed of the capacity lab: the classical sweep at N = 1000, 20 load values x 5 seeds.

Two criteria, each the whole sweep in ``assocmem.capacity.criterion_curve`` (all seeds of a load in
one batched computation):
  * ``stability``: one matrix product per load (a pattern is a fixed point iff no local field
    disagrees with it); reference: ``ClassicalHopfield(xi).step(xi)`` per seed and load (one
    asynchronous sweep of the model over all its patterns, then "unchanged?");
  * ``overlap``: recall from every probed pattern, all trials in one run of the models' sweep engine
    (``assocmem.models.sweep``, what ``ClassicalHopfield.recall`` runs); reference: the model's own
    ``recall`` per seed, on a subset of the (load, seed) pairs, compared on the same pairs (the same
    engine one trial at a time: the ratio is what batching the trials gains).
The printed ratio is reference time / our time on the same work (> 1: we are faster). The target:
the full sweep in under 30 s on 2 cores.

Run:  .venv/bin/python benchmarks/bench_capacity.py [--threads 2] [--quick] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from assocmem import ClassicalHopfield
from assocmem import capacity as cap

N = 1000
LOADS = list(range(10, 201, 10))  # 20 load values
SEEDS = 5


def _bank(trials, K):
    spec = cap.capacity_settings("classical", "overlap", trials=trials)
    exp = cap._Experiment(spec, N)
    return exp, [exp.banks[t].get(K).float() for t in range(trials)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the 2-core target)")
    p.add_argument("--quick", action="store_true", help="overlap reference on 2 pairs instead of 4")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"N": N, "loads": LOADS, "seeds": SEEDS, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "machine": platform.machine(),
           "load_average_start": os.getloadavg()[0]}

    # -- stability: whole sweep, then the reference -------------------------------------------------
    t0, c0 = time.perf_counter(), time.process_time()
    stab = cap.criterion_curve("classical", N, LOADS, "stability", trials=SEEDS)
    out["stability_s"] = time.perf_counter() - t0
    out["stability_cpu_s"] = time.process_time() - c0
    t0 = time.perf_counter()
    ref = torch.zeros(len(LOADS), SEEDS, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for i, K in enumerate(LOADS):
        _, banks = _bank(SEEDS, K)
        for t, xi in enumerate(banks):
            m = ClassicalHopfield(xi)
            ref[i, t] = (m.step(xi, generator=g) == xi).all(-1).double().mean()
    out["stability_reference_s"] = time.perf_counter() - t0
    out["stability_same_values"] = bool(torch.equal(ref, stab))
    out["stability_speedup"] = out["stability_reference_s"] / out["stability_s"]

    # -- overlap: whole sweep, then the reference on a few pairs -------------------------------------------
    t0, c0 = time.perf_counter(), time.process_time()
    ov = cap.criterion_curve("classical", N, LOADS, "overlap", trials=SEEDS)
    out["overlap_s"] = time.perf_counter() - t0
    out["overlap_cpu_s"] = time.process_time() - c0
    pairs = [(140, 0), (200, 1)] if args.quick else [(60, 0), (140, 0), (160, 1), (200, 2)]
    ref_s, ours_s = 0.0, 0.0
    for K, t in pairs:
        exp, banks = _bank(SEEDS, K)
        idx, _ = exp._probe_index([t], [K])
        cues = banks[t][idx[0]]
        m = ClassicalHopfield(banks[t])
        t0 = time.perf_counter()
        r = m.recall(cues, max_steps=100, generator=torch.Generator().manual_seed(1))
        ref_s += time.perf_counter() - t0
        T = m._t_int.unsqueeze(0)
        t0 = time.perf_counter()
        s, _ = cap.classical_async_recall(T, cues, torch.zeros(len(cues), dtype=torch.long), 100,
                                          torch.Generator().manual_seed(1))
        ours_s += time.perf_counter() - t0
        assert torch.equal(s, r.state), "the batched run must equal the model's recall"
    out["overlap_reference_pairs"] = pairs
    out["overlap_reference_s"] = ref_s
    out["overlap_ours_on_pairs_s"] = ours_s
    out["overlap_speedup"] = ref_s / ours_s
    out["overlap_alpha_c_estimate"] = LOADS[int((ov.mean(1) >= 0.97).nonzero().max())] / N
    out["load_average_end"] = os.getloadavg()[0]

    if args.json:
        print(json.dumps(out))
        return 0
    print(f"classical sweep, N = {N}, {len(LOADS)} loads x {SEEDS} seeds, {out['threads']} torch threads "
          f"(load average {out['load_average_start']:.1f} -> {out['load_average_end']:.1f} on {out['cpu_count']} cores)")
    print(f"  stability: {out['stability_s']:6.2f} s (cpu {out['stability_cpu_s']:.2f} s); reference (model step per seed) "
          f"{out['stability_reference_s']:.2f} s -> ratio {out['stability_speedup']:.1f}x; identical values: "
          f"{out['stability_same_values']}; target < 30 s: {'met' if out['stability_s'] < 30 else 'MISSED'}")
    print(f"  overlap:   {out['overlap_s']:6.2f} s (cpu {out['overlap_cpu_s']:.2f} s); on {len(pairs)} (K, seed) pairs "
          f"model recall {ref_s:.2f} s vs ours {ours_s:.2f} s -> ratio {out['overlap_speedup']:.1f}x; "
          f"target < 30 s: {'met' if out['overlap_s'] < 30 else 'MISSED'}")
    print(f"  largest load with mean overlap >= 0.97: K/N = {out['overlap_alpha_c_estimate']:.3f} (AGS 0.138)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
