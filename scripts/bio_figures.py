"""Figures of the biologically plausible models (docs/bio.md): the threshold model's stable fraction and
basin of attraction (MODELS.md section 5), and the E/I dendritic model's rates, ablation and capacity
(MODELS.md section 6). Each figure gets a PNG and a CSV/JSON with the numbers.

Writes docs/figures/bio_threshold_stability.{png,csv}, bio_threshold_recovery.{png,csv},
bio_dendritic_rates.{png,json}, bio_dendritic_ablation.{png,csv}, bio_dendritic_capacity.{png,csv,json}.
Run: .venv/bin/python scripts/bio_figures.py [--only threshold|rates|ablation|capacity]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.distributions import Normal
from tqdm.auto import tqdm

from assocmem import integrators
from assocmem.bank import atomic_replace
from assocmem.bio import DendriticEIMemory, ThresholdMemory, stability_bound

OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "figures"


def save_png(fig, path):
    atomic_replace(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def save_csv(rows, path):
    def write(p):
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    atomic_replace(path, write)


def save_json(obj, path):
    atomic_replace(path, lambda p: p.write_text(json.dumps(obj, indent=2)))


# ---------------------------------------------------------------------------------------------------
# Threshold model
# ---------------------------------------------------------------------------------------------------
def threshold_figures(out: pathlib.Path) -> None:
    rows = []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    seeds = range(3)
    nh_range = list(range(4, 13))
    fr = []
    for n_h in nh_range:
        f = [ThresholdMemory.random(100 * n_h, n_h, generator=torch.Generator().manual_seed(100 * n_h + s)).stable_fraction() for s in seeds]
        fr.append(float(np.mean(f)))
        rows.append({"n_hidden": n_h, "n_visible": 100 * n_h, "ratio": 100, "stable_fraction": fr[-1], "min_over_seeds": min(f),
                     "bound": stability_bound(100 * n_h, n_h), "seeds": len(f)})
    a1.plot(nh_range, fr, "o-", label="measured (all $2^{N_h}$ states, 3 draws of xi)")
    a1.plot(nh_range, [stability_bound(100 * n, n) for n in nh_range], "k--", label="paper's bound")
    a1.set_ylim(0.9, 1.005)
    a1.set_xlabel("$N_h$ (with $N_v = 100 N_h$)")
    a1.set_ylabel("fraction of binary hidden states that are stable")
    a1.set_title("every one of the $2^{N_h}$ states is a memory")
    a1.legend(fontsize=8)
    ratios = [1, 1.5, 2, 3, 5, 8, 12, 20, 30, 50, 80, 120]
    for n_h, col in zip((6, 8, 10, 12), ("C0", "C1", "C2", "C3")):
        fr = []
        for r in ratios:
            n_v = max(1, round(r * n_h))
            f = [ThresholdMemory.random(n_v, n_h, generator=torch.Generator().manual_seed(7 * n_v + s)).stable_fraction() for s in range(5)]
            fr.append(float(np.mean(f)))
            rows.append({"n_hidden": n_h, "n_visible": n_v, "ratio": n_v / n_h, "stable_fraction": fr[-1], "min_over_seeds": min(f),
                         "bound": stability_bound(n_v, n_h), "seeds": len(f)})
        a2.plot(ratios, fr, "o-", color=col, label=f"$N_h$ = {n_h}")
        rr = np.geomspace(1, 120, 200)
        a2.plot(rr, [stability_bound(max(1, round(r * n_h)), n_h) for r in rr], "--", color=col, lw=1)
    a2.set_xscale("log")
    a2.set_xlabel("$N_v / N_h$")
    a2.set_ylabel("stable fraction (solid) and the paper's bound (dashed)")
    a2.set_title("the stable fraction falls as $N_v/N_h$ shrinks")
    a2.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out / "bio_threshold_stability.png")
    save_csv(rows, out / "bio_threshold_stability.csv")

    # recovery from visible noise
    rows = []
    configs = [(800, 8), (400, 10)]
    fig, axes = plt.subplots(1, len(configs), figsize=(11, 4.2))
    for ax, (n_v, n_h) in zip(axes, configs):
        tm = ThresholdMemory.random(n_v, n_h, generator=torch.Generator().manual_seed(n_v + n_h))
        s_all = tm.all_states()
        reps = max(1, 1024 // s_all.shape[0])
        s = s_all.repeat(reps, 1)
        crit = math.sqrt(n_v / n_h)
        sigmas = crit * np.sqrt(np.geomspace(0.005, 10, 16))
        meas, pred = [], []
        g = torch.Generator().manual_seed(1)
        for sigma in tqdm(sigmas, desc=f"recovery N_v={n_v} N_h={n_h}"):
            v0 = tm.memory(s) + float(sigma) * torch.randn(s.shape[0], n_v, generator=g)
            r = tm.recall(v0)
            meas.append(float((r.hidden == s).all(-1).double().mean()))
            sh = float(sigma) * math.sqrt(n_h / n_v)
            pred.append(float(Normal(0.0, 1.0).cdf((s_all @ tm.J - tm.theta).abs() / sh).prod(-1).mean()))
            rows.append({"n_visible": n_v, "n_hidden": n_h, "sigma_v": float(sigma), "sigma_v2_over_ratio": float(sigma) ** 2 / (n_v / n_h),
                         "recovered": meas[-1], "gaussian_prediction": pred[-1], "cues": int(s.shape[0]),
                         "converged": float(r.converged.double().mean()), "stable_fraction": tm.stable_fraction()})
        ax.plot(sigmas, meas, "o", label="measured (dynamics)")
        ax.plot(sigmas, pred, "-", label=r"$\prod_\mu \Phi(|Js-\theta|_\mu / \sigma_v\sqrt{N_h/N_v})$")
        ax.axvline(crit, color="k", ls="--", lw=1, label=r"$\sigma_v^2 = N_v/N_h$")
        ax.axhline(1 / 2**n_h, color="gray", ls=":", lw=1, label="chance $2^{-N_h}$")
        ax.set_xscale("log")
        ax.set_xlabel(r"visible noise $\sigma_v$")
        ax.set_ylabel("fraction of memories recovered")
        ax.set_title(f"$N_v$ = {n_v}, $N_h$ = {n_h} (all $2^{{N_h}}$ memories, {s.shape[0]} cues)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out / "bio_threshold_recovery.png")
    save_csv(rows, out / "bio_threshold_recovery.csv")


# ---------------------------------------------------------------------------------------------------
# E/I dendritic model
# ---------------------------------------------------------------------------------------------------
def _patterns(k, n, seed, a=0.5):
    return (torch.rand(k, n, generator=torch.Generator().manual_seed(seed)) < a).float()


def _flip(p, frac, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(p.shape, generator=g).argsort(-1)[:, : round(frac * p.shape[1])]
    c = p.clone()
    c.scatter_(1, idx, 1 - c.gather(1, idx))
    return c


def _exact(dm, xi, n_cues, seed, t_max=300.0):
    idx = torch.randperm(xi.shape[0], generator=torch.Generator().manual_seed(seed))[:n_cues]
    r = dm.recall(_flip(xi[idx], 0.1, seed + 1), t_max=t_max)
    return float((r.state == xi[idx]).all(-1).double().mean()), r, idx


def rates_figure(out: pathlib.Path) -> None:
    N, K = 200, 1000
    xi = _patterns(K, N, 0)
    dm = DendriticEIMemory(xi, n=6)
    frac, r, idx = _exact(dm, xi, 100, 10)
    pops = dm.populations
    m = r.rates["memory"]
    cued = torch.zeros_like(m, dtype=torch.bool)
    cued[torch.arange(len(idx)), idx] = True
    summary = {"n_features": N, "n_memories": K, "n": 6, "cues": len(idx), "flipped": 0.1, "exact_recall": frac,
               "converged": float(r.converged.double().mean()),
               "populations": {k: {**v, "min_rate": float(r.rates[k].min()), "max_rate_reached": float(r.rates[k].max()),
                                   "max_over_ceiling": float(r.rates[k].max()) / v["max_rate"]} for k, v in pops.items()},
               "non_cued_memory_min": float(m[~cued].min()), "non_cued_memory_mean": float(m[~cued].mean()),
               "non_cued_memory_max": float(m[~cued].max()), "cued_memory_min": float(m[cued].min()),
               "cued_memory_max": float(m[cued].max()), "floor_stated": 0.5, "r0": dm.r0, "theta_d": dm.theta_d}

    # one recall, recorded: cue period then free dynamics
    c = _flip(xi[idx[:1]], 0.1, 99)
    state = dm.initial_state(c)
    drive = (dm.x_on - dm.x_off) * (c - dm.a)
    dt, t_cue, T = 0.5, 30.0, 200.0
    ts, rec = [], []
    for k in range(int(T / dt) + 1):
        x, mm, q, ff, fb = state
        on = xi[idx[0]] == 1
        others = mm[0].clone()
        others[idx[0]] = -1
        rec.append([float(mm[0, idx[0]]), float(others.max()), float(mm[0][others >= 0].mean()), float(x[0, on].mean()),
                    float(x[0, ~on].mean()), float(ff), float(fb), float(q[0].max())])
        ts.append(k * dt)
        d = drive if k * dt < t_cue else None
        state = integrators.rk4_step(lambda s: dm.derivatives(s, d), state, dt)
    rec = np.array(rec)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ax = axes[0]
    names = list(pops)
    ax.bar(range(len(names)), [summary["populations"][k]["max_over_ceiling"] for k in names], color=["C3" if pops[k]["type"] == "E" else "C0" for k in names])
    ax.axhline(0.9, color="k", ls="--", label="0.9 x ceiling")
    ax.set_xticks(range(len(names)), [f"{k}\n({pops[k]['type']}, {pops[k]['size']})" for k in names], fontsize=8)
    ax.set_ylabel("highest rate at any fixed point / max_rate")
    ax.set_title(f"no rate saturates ({len(idx)} recalls, K = {K}, N_f = {N})")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.hist(m[~cued].numpy(), bins=np.linspace(0, 25, 101), color="C1", label="non-cued memory neurons")
    ax.hist(m[cued].numpy(), bins=np.linspace(0, 25, 101), color="C2", label="recalled memory neuron")
    ax.axvline(0.5, color="k", ls=":", label="stated floor 0.5 Hz")
    ax.axvline(dm.theta_d, color="k", ls="--", label=rf"dendritic threshold $\theta_d$ = {dm.theta_d:g} Hz")
    ax.set_yscale("log")
    ax.set_xlabel("memory-neuron rate at the fixed point (Hz)")
    ax.set_ylabel("count")
    ax.set_title(f"non-cued memory neurons fire (min {summary['non_cued_memory_min']:.3f} Hz)")
    ax.legend(fontsize=8)
    ax = axes[2]
    labels = ["recalled memory neuron", "max non-cued memory", "mean non-cued memory", "features on", "features off",
              "ff (I)", "fb (I)", "max shunt (I)"]
    for j, lab in enumerate(labels):
        ax.plot(ts, rec[:, j], label=lab, ls="-" if j < 5 else "--")
    ax.axvspan(0, t_cue, color="gray", alpha=0.15, label="cue input on")
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("rate (Hz)")
    ax.set_title("one recall (10 % of the cue's bits flipped)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_png(fig, out / "bio_dendritic_rates.png")
    save_json(summary, out / "bio_dendritic_rates.json")


def ablation_figure(out: pathlib.Path, n_cues: int = 40) -> None:
    N = 200
    ratios = [0.5, 1, 2, 5, 10, 15]
    variants = {"nonlinear dendrites, r0 = 1 Hz": dict(dendrites="nonlinear"),
                "linear dendrites, r0 = 1 Hz": dict(dendrites="linear"),
                "linear dendrites, r0 = 0.01 Hz": dict(dendrites="linear", r0=0.01)}
    styles = {"nonlinear dendrites, r0 = 1 Hz": dict(marker="s", ms=9, lw=3),
              "linear dendrites, r0 = 1 Hz": dict(marker="o"),
              "linear dendrites, r0 = 0.01 Hz": dict(marker="^", ls="--")}
    rows = []
    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    for name, kw in variants.items():
        fr = []
        for ratio in tqdm(ratios, desc=name):
            K = int(ratio * N)
            xi = _patterns(K, N, seed=K)
            f, r, _ = _exact(DendriticEIMemory(xi, n=6, **kw), xi, n_cues, seed=K + 1, t_max=250.0)
            fr.append(f)
            rows.append({"variant": name, "n_features": N, "n_memories": K, "K_over_Nf": ratio, "exact_recall": f,
                         "cues": n_cues, "max_feature_rate": float(r.rates["feature"].max()),
                         "min_memory_rate": float(r.rates["memory"].min())})
        ax.plot(ratios, fr, label=name, **styles[name])
    ax.axhline(0.99, color="k", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("$K / N_f$ ($N_f$ = 200, coding level 0.5, n = 6)")
    ax.set_ylabel("fraction of cues recalled exactly (10 % bits flipped)")
    ax.set_title("the dendrites are the reason")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out / "bio_dendritic_ablation.png")
    save_csv(rows, out / "bio_dendritic_ablation.csv")


def _capacity(N, n, n_cues, criterion, k_max, seed, log):
    """Largest K (within about 9 %) at which >= criterion of the cues are recalled exactly."""
    cache = {}

    def ok(K):
        if K not in cache:
            xi = _patterns(K, N, seed=seed + K)
            f, _, _ = _exact(DendriticEIMemory(xi, n=n), xi, min(n_cues, K), seed=seed + K + 1, t_max=300.0)
            cache[K] = f
            log.append({"n_features": N, "n": n, "n_memories": K, "exact_recall": f})
        return cache[K] >= criterion

    lo, hi = None, None
    K = max(4, N // 4)
    while K <= k_max:
        if ok(K):
            lo = K
            K *= 2
        else:
            hi = K
            break
    if lo is None:
        return float("nan")
    if hi is None:
        return float(lo)  # at least k_max / 2: the search stopped
    for _ in range(3):  # bisect in log space
        mid = int(round(math.sqrt(lo * hi)))
        if mid in (lo, hi):
            break
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return float(lo)


def capacity_figure(out: pathlib.Path, n_cues: int = 40, criterion: float = 0.9, budget_s: float = 3000.0) -> None:
    plan = {2: [50, 71, 100, 141, 200], 3: [50, 71, 100, 141, 200], 4: [40, 57, 80, 113, 160], 6: [30, 42, 60, 85]}
    rows, log = [], []
    t0 = time.time()
    fits = {}
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for n, sizes in plan.items():
        caps = []
        for N in tqdm(sizes, desc=f"capacity n = {n}"):
            if time.time() - t0 > budget_s:
                break
            c = _capacity(N, n, n_cues, criterion, k_max=12000, seed=1000 * n + N, log=log)
            caps.append((N, c))
            rows.append({"n": n, "n_features": N, "capacity": c, "criterion": criterion, "cues": n_cues})
        pts = [(N, c) for N, c in caps if c == c]
        if len(pts) >= 2:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            slope, icpt = np.polyfit(x, y, 1)
            fits[n] = {"exponent": float(slope), "prefactor": float(math.exp(icpt)), "points": len(pts)}
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=f"n = {n}: K ~ N_f^{slope:.2f}")
            xx = np.geomspace(min(p[0] for p in pts), max(p[0] for p in pts), 20)
            ax.plot(xx, math.exp(icpt) * xx**slope, "-", color=line[0].get_color(), lw=1)
    ax.plot([30, 200], [30, 200], "k:", lw=1, label="K = N_f")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("$N_f$ (feature neurons)")
    ax.set_ylabel(f"capacity K ({int(100 * criterion)} % of {n_cues} cues exact, 10 % bits flipped)")
    ax.set_title("polynomial capacity of the E/I dendritic model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out / "bio_dendritic_capacity.png")
    save_csv(rows, out / "bio_dendritic_capacity.csv")
    save_json({"fits": fits, "criterion": criterion, "cues": n_cues, "evaluations": log,
               "seconds": round(time.time() - t0, 1)}, out / "bio_dendritic_capacity.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["threshold", "rates", "ablation", "capacity"], action="append")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    todo = args.only or ["threshold", "rates", "ablation", "capacity"]
    for part in todo:
        t = time.time()
        {"threshold": threshold_figures, "rates": rates_figure, "ablation": ablation_figure, "capacity": capacity_figure}[part](args.out)
        print(f"{part}: {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
