"""Energy vs. step for one recall per effective model (KH section 3), and the same recall in the
two-layer network (KH eq. 1) from which each model is the tau_h -> 0 limit.

Writes docs/figures/models_energy.png and docs/figures/models_energy.json.
Run: .venv/bin/python docs/figures/make_models_energy.py
"""
from __future__ import annotations

import json
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from assocmem import ClassicalHopfield, DenseAssociativeMemory, ModernHopfield, SphericalMemory

OUT = pathlib.Path(__file__).resolve().parent


def main() -> None:
    g = torch.Generator().manual_seed(0)
    N, K = 100, 200  # K = 2 N: far above the classical 0.138 N
    xi = (torch.randint(0, 2, (K, N), generator=g) * 2 - 1).double()
    target = xi[0]
    cue = torch.where(torch.rand(N, generator=g) < 0.2, -target, target)
    models = {
        "classical Hopfield": ClassicalHopfield(xi),
        "Model A, F = x^3": DenseAssociativeMemory(xi, F="power", n=3),
        "Model A, F = exp (beta = 0.2)": DenseAssociativeMemory(xi, F="exp", beta=0.2),
        "Model B, beta = 0.1": ModernHopfield(xi, beta=0.1),
        "Model C, F = x^4": SphericalMemory(xi, F="power", n=4),
    }
    fig, grid = plt.subplots(2, 3, figsize=(12, 7))
    axes = grid.flatten()
    summary = {}
    for ax, (name, m) in zip(axes, models.items()):
        r = m.recall(cue, max_steps=30, generator=torch.Generator().manual_seed(1))
        e = r.energy.numpy()
        ok = bool((torch.sign(r.state) == target).all())
        summary[name] = {"energy": e.tolist(), "steps": r.steps, "recalled": ok}
        ax.plot(range(len(e)), e, "o-")
        ax.set_title(f"{name}\n{'recalled' if ok else 'not recalled'} in {r.steps} steps", fontsize=9)
        ax.set_xlabel("asynchronous sweeps" if m.binary else "synchronous updates")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    axes[0].set_ylabel("effective energy")
    axes[3].set_ylabel("effective energy")
    # the two-layer network of Model B, tau_h = 0.01: energy (2) along the trajectory
    net = models["Model B, beta = 0.1"].as_network(tau_f=1.0, tau_h=0.01)
    tr = net.simulate(cue, t_max=15.0, dt=0.005, record_every=20, tol=1e-8)
    ax = axes[5]
    ax.plot(tr.t.numpy(), tr.energy[:, 0].numpy())
    ax.set_xlabel("time (units of tau_f)")
    ax.set_ylabel("energy, KH eq. (2)")
    ok = bool((torch.sign(tr.final_v[0]) == target).all())
    ax.set_title(f"two-layer network (KH eq. 1), Model B Lagrangians,\ntau_h = 0.01 tau_f: {'recalled' if ok else 'not recalled'}", fontsize=9)
    fig.suptitle(f"One recall per model: N = {N}, K = {K} random patterns, 20 % of cue bits flipped", fontsize=10)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "models_energy.png", dpi=110)
    (OUT / "models_energy.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: {"steps": v["steps"], "recalled": v["recalled"]} for k, v in summary.items()}, indent=1))
    print("network recalled:", ok)


if __name__ == "__main__":
    main()
