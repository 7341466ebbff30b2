"""The acceptance experiments of the capacity lab (docs/capacity.md): each writes
docs/figures/capacity_<name>.png and .json and prints its numbers.

    .venv/bin/python scripts/capacity_experiments.py classical-overlap   # 0.138 N at N = 1000
    .venv/bin/python scripts/capacity_experiments.py classical-stability # N/(2 ln N), N/(4 ln N)
    .venv/bin/python scripts/capacity_experiments.py dense-power         # exponents n - 1 (n = 3, 4)
    .venv/bin/python scripts/capacity_experiments.py exponential         # F = exp vs the power models
    .venv/bin/python scripts/capacity_experiments.py hidden-bound        # K <= N_h (KH eq. 9)
    .venv/bin/python scripts/capacity_experiments.py threshold           # 2^N_h stable states vs N_v
    .venv/bin/python scripts/capacity_experiments.py all
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
import torch

from assocmem import capacity as cap
from assocmem._io import atomic_write_bytes
from assocmem import theory as th

FIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "figures")


def _save(fig, name: str, data: dict) -> None:
    import matplotlib.pyplot as plt

    os.makedirs(FIG, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(os.path.join(FIG, f"capacity_{name}.png"), buf.getvalue())
    atomic_write_bytes(os.path.join(FIG, f"capacity_{name}.json"),
                      (json.dumps(cap._jsonable(data), indent=1, allow_nan=False) + "\n").encode())
    print(f"wrote docs/figures/capacity_{name}.png and .json")


def _scan(model, Ns, criterion, **kw):
    t0 = time.perf_counter()
    rep = cap.capacity_scan(model, Ns, criterion, progress=True, **kw)
    print(f"\n{model} {criterion} {kw}  ({time.perf_counter() - t0:.1f} s)")
    for r in rep.results:
        ratio = f"{r.K / r.theory:.2f}" if r.theory else "-"
        print(f"  N={r.N:5d}  K={r.K:10.1f} +- {r.K_std:8.1f}  theory={r.theory}  K/theory={ratio}  trials={r.K_trials}"
              f"{'  CENSORED' if any(r.censored) else ''}")
    print(f"  exponent = {rep.exponent} +- {rep.exponent_stderr}")
    return rep


def classical_overlap(args):
    import matplotlib.pyplot as plt

    N = 1000
    t0 = time.perf_counter()
    est = cap.measure_capacity("classical", N, "overlap", trials=args.trials, progress=True)
    sec = time.perf_counter() - t0
    print(f"\nclassical overlap N={N}: K = {est.K:.1f} +- {est.K_std:.1f} = {est.K / N:.4f} N (trials {est.K_trials}); "
          f"AGS 0.138 N = {0.138 * N:.0f}; {sec:.1f} s")
    loads = list(range(20, 241, 10))
    curve = cap.criterion_curve("classical", N, loads, "overlap", trials=args.trials, progress=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    m, s = curve.mean(1).numpy(), curve.std(1).numpy()
    a = np.array(loads) / N
    ax.errorbar(a, m, yerr=s, fmt="o-", capsize=3, label=f"mean final overlap, N = {N}, {args.trials} trials")
    ax.axhline(0.97, color="gray", ls="--", label="threshold 0.97")
    ax.axvline(th.ALPHA_AGS, color="C3", ls=":", label="AGS alpha_c = 0.138")
    ax.axvline(est.K / N, color="C2", ls="-.", label=f"estimate {est.K / N:.3f} +- {est.K_std / N:.3f}")
    ax.set_xlabel("load K / N")
    ax.set_ylabel("mean overlap after recall from the pattern")
    ax.set_title("Classical Hopfield: retrieval overlap vs load")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, "classical_overlap", {"N": N, "estimate": est.row(), "alpha": est.K / N, "alpha_std": est.K_std / N,
                                     "loads": loads, "overlap_mean": m.tolist(), "overlap_std": s.tolist(),
                                     "seconds": sec})


def classical_stability(args):
    Ns = [100, 200, 400, 800, 1600]
    rep = _scan("classical", Ns, "stability", trials=args.trials)
    for r in rep.results:
        a, b = th.most_fixed_points(r.N), th.mceliece(r.N)
        print(f"  N={r.N}: K/(N/(2 ln N)) = {r.K / a:.3f}; K/(N/(4 ln N)) = {r.K / b:.3f}")
    fig = cap.plot_capacity([rep], None, title="Classical Hopfield, stability criterion (90 % of patterns fixed)")
    _save(fig, "classical_stability", rep.to_dict())


def dense_power(args):
    import matplotlib.pyplot as plt

    reps = [_scan("dense", [25, 50, 100, 200], "recall", n=3, flip=0.1, trials=args.trials),
            _scan("dense", [30, 50, 80, 120], "recall", n=4, flip=0.1, trials=args.trials)]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    cap.plot_capacity(reps, None, ax=ax, labels=["Dense AM n = 3", "Dense AM n = 4"],
                      title="Dense AM, F = x^n: recall from 10 % flipped bits (90 % exact)")
    fig.tight_layout()
    _save(fig, "dense_power", {"n3": reps[0].to_dict(), "n4": reps[1].to_dict()})


def exponential(args):
    import matplotlib.pyplot as plt

    Ns = [10, 15, 20, 25, 30, 35, 40]
    kw = dict(criterion="recall", flip=0.1, trials=args.trials, probes=50)
    reps = {
        "classical (n = 2)": _scan("classical", Ns, **kw),
        "dense n = 3": _scan("dense", Ns, n=3, **kw),
        "dense n = 4": _scan("dense", Ns, n=4, **kw),
        "dense F = exp": _scan("dense", Ns, F="exp", beta=1.0, k_max=2 ** 17, **kw),
    }
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    cap.plot_capacity(list(reps.values()), None, ax=ax1, labels=list(reps), theory=False,
                      title="log-log: recall from 10 % flipped bits")
    out = {}
    for j, (name, rep) in enumerate(reps.items()):
        N = np.array([r.N for r in rep.results], float)
        K = np.array([max(r.K, 0.5) for r in rep.results], float)
        cens = np.array([any(r.censored) for r in rep.results])
        sl = np.diff(np.log(K)) / np.diff(np.log(N))  # local log-log slope between consecutive N
        ax2.plot(N[~cens], K[~cens], "o-", color=f"C{j}", label=name)
        if cens.any():
            ax2.plot(N[cens], K[cens], "^", mfc="none", color=f"C{j}", label=f"{name}: >= (k_max)")
        out[name] = {"report": rep.to_dict(), "local_loglog_slopes": sl.tolist()}
        print(f"  {name}: local log-log slopes {np.round(sl, 2).tolist()}")
    e = reps["dense F = exp"]
    pts = [(r.N, r.K) for r in e.results if r.N >= 20 and not any(r.censored)]
    c, b0 = np.polyfit([p[0] for p in pts], np.log([p[1] for p in pts]), 1)
    grid = np.linspace(15, 42, 50)
    ax2.plot(grid, np.exp(b0 + c * grid), "k--", lw=1, label=f"fit exp({c:.2f} N), N >= 20")
    out["exp_rate_fit"] = {"c": c, "b": b0, "points": pts}
    print(f"  F = exp: ln K ~ {c:.3f} N + {b0:.2f} for N >= 20 (Demircigil's asymptotic rate at rho = 0.1: "
          f"{th.demircigil_exponent(0.1):.3f}; at rho = 0: {th.demircigil_exponent(0):.3f})")
    ax2.set_yscale("log")
    ax2.set_xlabel("N (feature neurons)")
    ax2.set_ylabel("capacity K")
    ax2.set_title("semi-log: exp(cN) is a straight line, N^p bends over")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, "exponential", out)


def hidden_bound(args):
    import matplotlib.pyplot as plt

    N = 50
    free = _scan("dense", [N], "recall", n=3, flip=0.1, trials=args.trials)
    K_free = free.results[0].K
    rows = []
    for nh in [10, 20, 40, 80, 160, 320]:
        rep = _scan("dense", [N], "recall", n=3, flip=0.1, trials=args.trials, n_hidden=nh)
        r = rep.results[0]
        rows.append({"n_hidden": nh, "K": r.K, "K_std": r.K_std, "K_trials": r.K_trials, "cap": min(nh, K_free)})
    # retrievable patterns M(K) = K * fraction recalled, for two N_h
    loads = [10, 20, 30, 40, 60, 80, 120, 160, 240]
    curves = {}
    for nh in [20, 40, None]:
        c = cap.criterion_curve("dense", N, loads, "recall", n=3, flip=0.1, trials=args.trials, n_hidden=nh)
        curves["none" if nh is None else str(nh)] = (c.mean(1) * torch.tensor(loads, dtype=torch.float64)).tolist()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    nh = np.array([r["n_hidden"] for r in rows], float)
    ax1.errorbar(nh, [r["K"] for r in rows], yerr=[r["K_std"] for r in rows], fmt="o-", capsize=3,
                 label="measured capacity (90 % of cues recalled)")
    ax1.plot(nh, nh, "k--", label="K = N_h")
    ax1.axhline(K_free, color="C3", ls=":", label=f"without the N_h limit: {K_free:.0f}")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("memory (hidden) neurons N_h")
    ax1.set_ylabel("capacity K")
    ax1.set_title(f"Dense AM n = 3, N = {N}: K ~ min(N^(n-1), N_h) (KH eq. 9)")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=8)
    for j, (k, v) in enumerate(curves.items()):
        ax2.plot(loads, v, "o-", color=f"C{j}", label=f"N_h = {k}" if k != "none" else "N_h = K (no limit)")
        if k != "none":
            ax2.axhline(int(k), color=f"C{j}", ls="--", lw=0.8)
    ax2.set_xlabel("patterns offered K")
    ax2.set_ylabel("patterns recalled exactly (K x fraction)")
    ax2.set_title("retrievable patterns saturate at N_h")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, "hidden_bound", {"N": N, "K_free": K_free, "rows": rows, "loads": loads, "retrievable": curves})


def threshold(args):
    import matplotlib.pyplot as plt

    Ns = [50, 100, 200, 400, 800]
    rep = _scan("threshold", Ns, "stability", trials=args.trials)
    bound_bits = [th.threshold_capacity_bits(n, 0.99) for n in Ns]
    for r, b in zip(rep.results, bound_bits):
        print(f"  N_v={r.N}: measured N_h = {r.extra['N_h']:.1f} +- {r.extra['N_h_std']:.1f} (trials {r.extra['N_h_trials']}); "
              f"bound guarantees {b} bits; N_v/N_h = {r.N / r.extra['N_h']:.1f}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    nv = np.array(Ns, float)
    ax1.errorbar(nv, [r.extra["N_h"] for r in rep.results], yerr=[r.extra["N_h_std"] for r in rep.results], fmt="o-",
                 capsize=3, label="measured: largest N_h with >= 99 % of states stable")
    grid = np.arange(20, 900, 10)
    ax1.plot(grid, [th.threshold_capacity_bits(v, 0.99) for v in grid], "k--", label="the bound guarantees >= 99 %")
    ax1.plot(grid, grid / 100, ":", color="gray", label="N_v = 100 N_h (the paper's Fig. 1)")
    ax1.set_xlabel("N_v (visible neurons)")
    ax1.set_ylabel("hidden bits N_h")
    ax1.set_title("threshold model: hidden bits with stable states")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    cap.plot_capacity([rep], None, ax=ax2, labels=["2^N_h stable states"], title="the same as a capacity K = 2^N_h")
    fig.tight_layout()
    out = rep.to_dict()
    out["bound_bits"] = bound_bits
    _save(fig, "threshold", out)


EXPERIMENTS = {
    "classical-overlap": classical_overlap,
    "classical-stability": classical_stability,
    "dense-power": dense_power,
    "exponential": exponential,
    "hidden-bound": hidden_bound,
    "threshold": threshold,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=list(EXPERIMENTS) + ["all"])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    for name in names:
        t0 = time.perf_counter()
        EXPERIMENTS[name](args)
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
