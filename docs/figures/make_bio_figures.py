"""Figures of the biologically plausible models (docs/bio.md): the threshold model's stable fraction and
basin of attraction (MODELS.md section 5), and the E/I dendritic model's rates, ablation and capacity
(MODELS.md section 6). Each figure gets a PNG and a CSV/JSON with the numbers.

Writes docs/figures/bio_threshold_stability.{png,csv}, bio_threshold_recovery.{png,csv},
bio_dendritic_rates.{png,json}, bio_dendritic_ablation.{png,csv}, bio_dendritic_capacity.{png,csv,json}.
Run: .venv/bin/python docs/figures/make_bio_figures.py [--only threshold|rates|ablation|capacity]
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
from assocmem._io import atomic_replace
from assocmem.bio import DendriticEIMemory, ThresholdMemory, stability_bound

OUT = pathlib.Path(__file__).resolve().parent


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


#: capacity plan: interaction power n -> (feature sizes N_f, k_min, k_max). The sweep of K starts at k_min
#: and doubles until recall fails; an estimate that reaches k_max is censored (a lower bound).
CAPACITY_PLAN = {2: ([50, 100, 200, 400], 32, 4000), 4: ([30, 42, 60, 85, 120], 128, 12000)}
CAPACITY_SETTINGS = dict(flip=0.1, threshold=0.9, trials=3, probes=30, rel_tol=0.02, seed=0)


def capacity_figure(out: pathlib.Path, plan: dict | None = None, **settings) -> None:
    """Capacity K vs N_f of the E/I dendritic model for several n, measured by the capacity lab
    (``assocmem.capacity.capacity_scan(model="dendritic-ei", criterion="recall")``, the same search as
    ``assocmem capacity --model dendritic-ei``), with the fitted exponent of log K vs log N_f per n."""
    from assocmem.capacity import _jsonable, capacity_scan

    plan = CAPACITY_PLAN if plan is None else plan
    st = {**CAPACITY_SETTINGS, **settings}
    rows, reports = [], {}
    t0 = time.time()
    fig, ax = plt.subplots(figsize=(7.0, 5.0))
    for n, (sizes, k_min, k_max) in plan.items():
        tn = time.time()
        with tqdm(unit="eval", desc=f"capacity n = {n}") as bar:
            rep = capacity_scan("dendritic-ei", sizes, "recall", progress=bar, n=n, k_min=k_min, k_max=k_max, **st)
        d = rep.to_dict()
        for r, row in zip(rep.results, d["results"]):
            row["evaluations"] = [{"trial": t, "K": k, "recall": v} for t, k, v in r.evaluations]
        d["seconds"] = round(time.time() - tn, 1)
        d["cli"] = (f"assocmem capacity --model dendritic-ei --N {','.join(map(str, sizes))} --n {n} --criterion recall "
                    f"--flip {st['flip']:g} --threshold {st['threshold']:g} --trials {st['trials']} --cues {st['probes']} "
                    f"--k-min {k_min} --k-max {k_max} --rel-tol {st['rel_tol']:g} --seed {st['seed']} --threads 1")
        reports[n] = d
        for r in rep.results:
            rows.append({"n": n, "n_features": r.N, "K": r.K, "K_std": r.K_std,
                         "K_trials": ";".join(str(k) for k in r.K_trials),
                         "censored_trials": sum(bool(c) for c in r.censored), "trials": len(r.K_trials),
                         "evaluations": len(r.evaluations), "seconds": round(r.seconds, 1),
                         "exponent": rep.exponent, "exponent_stderr": rep.exponent_stderr})
        Ns = np.array([r.N for r in rep.results], float)
        Ks = np.array([r.K for r in rep.results], float)
        err = np.array([r.K_std for r in rep.results], float)
        cens = np.array([any(r.censored) for r in rep.results])
        se = "" if rep.exponent_stderr is None else f" ± {rep.exponent_stderr:.2f}"
        lab = f"n = {n}: " + ("no fit" if rep.exponent is None else f"K ~ N_f^({rep.exponent:.2f}{se})") + f"  [heuristic n/2 = {n / 2:g}]"
        eb = ax.errorbar(Ns[~cens], Ks[~cens], yerr=err[~cens], fmt="o", capsize=3, label=lab)
        col = eb[0].get_color()
        if cens.any():
            ax.plot(Ns[cens], Ks[cens], "^", mfc="none", color=col, ms=9, label=f"n = {n}: censored at k_max (lower bound)")
        ok = ~cens & (Ks > 0)
        if rep.exponent is not None:
            x, y = np.log(Ns[ok]), np.log(Ks[ok])
            icpt = float(np.mean(y - rep.exponent * x))
            xx = np.geomspace(Ns.min(), Ns.max(), 20)
            ax.plot(xx, np.exp(icpt) * xx ** rep.exponent, "-", color=col, lw=1.2)
            # the heuristic's slope n/2 through the same centre, for comparison
            xc, yc = float(np.mean(x)), float(np.mean(y))
            ax.plot(xx, np.exp(yc + n / 2 * (np.log(xx) - xc)), ":", color=col, lw=1)
    ax.plot([], [], "k:", lw=1, label="slope n/2 (heuristic), through each series' centre")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({N for sizes, _, _ in plan.values() for N in sizes})
    ax.set_xticks(ticks, [str(N) for N in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("$N_f$ (feature neurons)")
    ax.set_ylabel(f"capacity K (≥ {st['threshold']:g} of {st['probes']} cues recalled exactly)")
    ax.set_title(f"E/I dendritic model: capacity lab, {int(100 * st['flip'])} % of cue bits flipped, "
                 f"{st['trials']} trials (bars: std)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    save_png(fig, out / "bio_dendritic_capacity.png")
    save_csv(rows, out / "bio_dendritic_capacity.csv")
    save_json(_jsonable({"model": "dendritic-ei", "criterion": "recall", "settings": st,
                         "reports": {str(n): d for n, d in reports.items()}, "seconds": round(time.time() - t0, 1),
                         "torch_threads": torch.get_num_threads()}), out / "bio_dendritic_capacity.json")


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
