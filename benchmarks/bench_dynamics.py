"""Dynamics: one asynchronous sweep of the binary models (classical Hopfield, Dense AM; N = 1000
neurons, B = 256 cues), one RK4 step of TwoLayerNetwork (KH eq. 1) against its four derivative
evaluations, and the derivatives of a three-layer Network (Krotov 2021) against the bare matrix
products they are made of, all measured in the same run.

    python benchmarks/bench_dynamics.py [--rounds 5] [--quick] [--cases binary,rk4,network]

The binary and rk4 cases are those of ``assocmem bench`` (table printed, benchmarks/results/dynamics.json);
the network case prints its own table and writes benchmarks/results/dynamics_network.json.

Network case: a chain v (784, Quadratic) - h1 (1024, Tanh) - h2 (256, LogSumExp), B = 256, float32.
``Network.derivatives`` (the public dict call, with its input checks) and the step's own derivative
(``_derivs``, what ``simulate`` calls) are timed against the four products that any implementation
has to do, ``g1 @ xi1``, ``g0 @ xi1.T``, ``g2 @ xi2``, ``g1 @ xi2.T`` (activations precomputed), in
interleaved rounds; the ratio is the fastest round of each and the median of per-round ratios.
The target is at most 1.2x.
"""
import argparse
import json
import math
import os
import sys

import torch

from assocmem._io import atomic_write_bytes
from assocmem.cli import main
from assocmem.commands.bench import interleave, machine, paired_ratio
from assocmem.lagrangians import LogSumExp, Quadratic, Tanh
from assocmem.network import Layer, Network, Synapse

HERE = os.path.dirname(os.path.abspath(__file__))


def chain(sizes, B, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lags = [Quadratic(), Tanh(1.0), LogSumExp(1.0)]
    names = [f"x{i}" for i in range(len(sizes))]
    layers = {n: Layer(lag, s, tau=1.0 / (i + 1)) for i, (n, lag, s) in enumerate(zip(names, lags, sizes))}
    xis = [torch.randn(sizes[i + 1], sizes[i], generator=g, dtype=dtype) / math.sqrt(sizes[i]) for i in range(len(sizes) - 1)]
    net = Network(layers, [Synapse(names[i + 1], names[i], xi) for i, xi in enumerate(xis)])
    states = {n: torch.randn(B, s, generator=g, dtype=dtype) for n, s in zip(names, sizes)}
    return net, xis, states


def case_network(rounds: int, quick: bool):
    rows = []
    shapes = [((256, 512, 64), 64)] if quick else [((784, 1024, 256), 256), ((256, 512, 64), 64)]
    for sizes, B in shapes:
        net, (xi1, xi2), states = chain(sizes, B)
        xs = tuple(states.values())
        g0, g1, g2 = (t.detach() for t in net.activations(states).values())

        def products():
            g1 @ xi1
            g0 @ xi1.T
            g2 @ xi2
            g1 @ xi2.T

        fns = {"public": lambda: net.derivatives(states), "step": lambda: net._derivs(xs), "products": products}
        small = B * sum(a * b for a, b in zip(sizes, sizes[1:])) < 5e6
        t = interleave(fns, rounds * (4 if small else 2), inner=20 if small else 3)
        label = f"Network.derivatives {'-'.join(map(str, sizes))} B={B}"
        for k, what in (("public", "derivatives(states)"), ("step", "_derivs (simulate's)")):
            rows.append({"case": f"{label}: {what}", "ours_s": t[k]["min"], "bare_s": t["products"]["min"],
                         "ratio_vs_bare": t[k]["min"] / t["products"]["min"],
                         "ratio_paired_median": paired_ratio(t, k, "products")})
        # one flat RK4 step against four derivative evaluations (the two-layer case's measure)
        t = interleave({"rk4": lambda: net.rk4_step(states, 0.01), "four": lambda: [net._derivs(xs) for _ in range(4)]},
                       rounds * (4 if small else 2), inner=5 if small else 1)
        rows.append({"case": f"Network.rk4_step {'-'.join(map(str, sizes))} B={B} vs 4 derivatives", "ours_s": t["rk4"]["min"],
                     "bare_s": t["four"]["min"], "ratio_vs_bare": t["rk4"]["min"] / t["four"]["min"],
                     "ratio_paired_median": paired_ratio(t, "rk4", "four")})
    return rows


def print_rows(rows):
    head = f"{'case':<66}{'ours ms':>10}{'ref ms':>10}{'ratio':>8}{'paired':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case'][:65]:<66}{r['ours_s'] * 1e3:>10.3f}{r['bare_s'] * 1e3:>10.3f}{r['ratio_vs_bare']:>8.2f}"
              f"{r['ratio_paired_median']:>8.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cases", default="binary,rk4,network")
    a = p.parse_args()
    cases = [c for c in a.cases.split(",") if c]
    cli = [c for c in cases if c in ("binary", "rk4")]
    rc = 0
    if cli:
        rc = main(["bench", "--cases", ",".join(cli), "--rounds", str(a.rounds), "--json",
                   os.path.join(HERE, "results", "dynamics.json"), *(["--quick"] if a.quick else [])])
    if "network" in cases:
        rows = case_network(a.rounds, a.quick)
        print_rows(rows)
        out = os.path.join(HERE, "results", "dynamics_network.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        atomic_write_bytes(out, json.dumps({"machine": machine(), "rows": rows}, indent=1).encode())
        print(f"wrote {out}")
    sys.exit(rc)
