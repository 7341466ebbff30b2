"""The main demo: MNIST digits (+-1 pixels) stored in every effective model of KH section 3
(classical, Dense AM with F = x^n and exp (KH eq. 8), modern Hopfield (KH eq. 13-16), spherical
memory (KH eq. 21-22)) and in the two-layer network of KH eq. 1 with Model B Lagrangians, recalled
from cues with 20 % flipped pixels, the bottom half occluded, or 30 % of pixels erased.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .._validation import check_int, check_positive
from ..models import by_name, entry, names
from ..report import Column, Report, figure_png
from ._common import CORRUPTIONS, corrupt, mosaic, mosaic_png, new_figure, pad_traces, plot_energy, score, steps_from_energy

__all__ = ["MODELS", "MnistDemoConfig", "run"]

# the effective models by their registry names (``assocmem.models.by_name``; the generic "dense" is
# here as its two named forms), then the full two-layer network
MODELS = tuple(name for name in names() if name != "dense") + ("two-layer",)
SHAPE = (28, 28)
# cue counts per model and corruption, chosen so that the whole demo runs in about 2 minutes on
# 2 CPU cores (a Dense AM sweep costs about one (cues x 10,000) x (10,000 x 784) product: 30-40 ms
# of CPU per cue for the two sweeps of a recall, where the per-neuron sweeps before took 750 ms)
FULL_CUES = {"classical": 1000, "dense-power": 300, "dense-exp": 300, "modern": 1000, "spherical": 500, "two-layer": 64}
QUICK_CUES = {"classical": 500, "dense-power": 64, "dense-exp": 64, "modern": 1000, "spherical": 500, "two-layer": 32}
# measured CPU milliseconds per cue and corruption at K = 10,000 (one thread): weights of the progress bar
COST_MS = {"classical": 1, "dense-power": 35, "dense-exp": 35, "modern": 5, "spherical": 8, "two-layer": 240}
CHUNK = {"classical": 500, "dense-power": 128, "dense-exp": 128, "modern": 500, "spherical": 500, "two-layer": 64}


@dataclass
class MnistDemoConfig:
    """Parameters of the MNIST demo. ``beta`` is the inverse temperature on raw dot products of
    +-1 pixels (modern Hopfield, exponential Dense AM, two-layer network); the spherical memory sees
    unit vectors, so it uses ``beta * sqrt(784)`` for the same sharpness."""

    n_memories: int = 10_000
    cues: dict = field(default_factory=lambda: dict(FULL_CUES))
    beta: float = 0.5
    power_n: int = 80
    tau_f: float = 1.0
    tau_h: float = 0.25
    dt: float = 0.25
    t_max: float = 25.0
    seed: int = 0
    examples_per_row: int = 6


def _models(xi: torch.Tensor, cfg: MnistDemoConfig) -> dict:
    N = xi.shape[1]
    kwargs = {"dense-power": {"n": cfg.power_n}, "dense-exp": {"beta": cfg.beta}, "modern": {"beta": cfg.beta},
              "spherical": {"F": "exp", "beta": cfg.beta * math.sqrt(N)}}
    out = {m: (lambda m=m: by_name(m, xi, **kwargs.get(m, {}))) for m in MODELS if m != "two-layer"}
    out["two-layer"] = lambda: by_name("modern", xi, beta=cfg.beta).as_network(tau_f=cfg.tau_f, tau_h=cfg.tau_h)
    return out


_DESCRIPTION = {m: entry(m).summary for m in MODELS if m != "two-layer"}
_DESCRIPTION["spherical"] = "spherical memory, F = exp, v <- normalise(xi^T F'(xi v/|v|)) (KH eq. 22)"
_DESCRIPTION["two-layer"] = "full two-layer network, L_v = v^2/2, L_h = logsumexp (KH eq. 1, 11), RK4"
_BINARY = tuple(m for m in MODELS if m != "two-layer" and entry(m).binary)


def _recall_cell(name, model, target, flips, known, cfg, generator, chunk):
    """Recall every cue of one model x corruption cell in chunks; returns per-cue arrays and traces."""
    B, N = target.shape
    binary = name in _BINARY
    exact, err, steps, conv, states, traces = [], [], [], [], [], []
    times = None
    for s in range(0, B, chunk):
        t = target[s:s + chunk]
        f = flips[s:s + chunk]
        k = known[s:s + chunk]
        cue = torch.where(f, -t, t)
        clamp = None
        if binary:
            if not bool(k.all()):  # unknown pixels start random +-1 and run free; known ones are clamped
                fill = torch.where(torch.rand(t.shape, generator=generator) < 0.5, 1.0, -1.0)
                cue = torch.where(k, cue, fill)
                clamp = k
        else:
            cue = torch.where(k, cue, torch.zeros_like(cue))  # unknown pixels 0
        if name == "two-layer":
            tr = model.simulate(cue, t_max=cfg.t_max, method="rk4", dt=cfg.dt, tol=1e-2, record_every=2)
            state = tr.final_v
            st = torch.full((t.shape[0],), tr.steps, dtype=torch.long)
            cv = tr.converged
            traces.append(tr.energy.to(torch.float64))
            if times is None or len(tr.t) > len(times):
                times = tr.t.numpy()  # the longest chunk's record times (the padded traces follow it)
        else:
            max_steps = 20 if binary else 30
            r = model.recall(cue, max_steps=max_steps, tol=1e-4, clamp=clamp, generator=generator)
            state = r.state
            st = steps_from_energy(r.energy, r.steps)
            cv = r.converged
            traces.append(r.energy.to(torch.float64))
        ex, pe = score(state, t)
        exact.append(ex)
        err.append(pe)
        steps.append(st)
        conv.append(cv)
        states.append(torch.sign(state))
    return {
        "exact": torch.cat(exact), "pixel_error": torch.cat(err), "steps": torch.cat(steps),
        "converged": torch.cat(conv), "state": torch.cat(states), "energy": pad_traces(traces), "t": times,
    }


def _other_memory(state: torch.Tensor, xi: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
    """Per cue: True when the recalled sign pattern is a stored digit other than the target."""
    hit = (state @ xi.T) == xi.shape[1]  # (B, K): identical patterns
    hit[torch.arange(len(target_idx)), target_idx] = False
    return hit.any(-1)


def run(out="assocmem-report", quick: bool = False, seed: int = 0, n_memories: int | None = None,
        cues: int | None = None, beta: float | None = None, progress: bool = True,
        cfg: MnistDemoConfig | None = None, data=None) -> tuple[list[dict], object]:
    """Run the MNIST demo and write its report folder ``out``. Returns (records, path of index.html).

    ``quick``: 3,000 stored digits and fewer cues (about a minute). ``n_memories``, ``cues`` (the
    same count for every model and corruption), ``beta`` and ``seed`` override the defaults, and
    ``cfg`` replaces them all. ``data``: optional ``(images (K, 784) +-1, labels)`` to use instead
    of the MNIST training digits.
    """
    from tqdm import tqdm

    from ..data import load_mnist

    if cfg is None:
        cfg = MnistDemoConfig(n_memories=3000, cues=dict(QUICK_CUES)) if quick else MnistDemoConfig()
        cfg.seed = check_int("seed", seed, minimum=0)
        if n_memories is not None:
            cfg.n_memories = check_int("n_memories", n_memories, minimum=2)
        if cues is not None:
            cfg.cues = {m: check_int("cues", cues, minimum=1) for m in MODELS}
        if beta is not None:
            cfg.beta = float(check_positive("beta", beta))
    K = check_int("n_memories", cfg.n_memories, minimum=2)
    check_positive("beta", cfg.beta)
    t_start = time.perf_counter()
    if data is None:
        xi, labels = load_mnist("train", n=K, binarize=True)
    else:
        xi, labels = data
        xi, K = xi[:K], min(K, xi.shape[0])
    N = xi.shape[1]
    g = torch.Generator().manual_seed(cfg.seed)
    cues = {m: min(check_int(f"cues[{m}]", cfg.cues.get(m, 0), minimum=0), K) for m in MODELS}
    n_max = max(cues.values())
    order = torch.randperm(K, generator=g)[:n_max]  # every model sees a prefix of the same cues
    target = xi[order]
    corruption = {c: corrupt(target, c, SHAPE, g) for c in CORRUPTIONS}
    builders = _models(xi, cfg)
    cells = [(m, c) for m in MODELS if cues[m] > 0 for c in CORRUPTIONS]
    records, results = [], {}
    bar = tqdm(total=sum(cues[m] * COST_MS[m] for m, _ in cells), desc="MNIST recall", disable=not progress,
               bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]{postfix}")
    built = {}
    for m, c in cells:
        bar.set_postfix_str(f"{m}, {c}")
        if m not in built:
            t0 = time.perf_counter()
            built = {m: builders[m]()}
            build_s = time.perf_counter() - t0
        B = cues[m]
        flips, known = (x[:B] for x in corruption[c])
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + MODELS.index(m) * 10 + CORRUPTIONS.index(c))
        t0, c0 = time.perf_counter(), time.process_time()
        res = _recall_cell(m, built[m], target[:B], flips, known, cfg, gen, CHUNK[m])
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        res["known"], res["flips"] = known, flips
        results[(m, c)] = res
        other = _other_memory(res["state"], xi, order[:B])
        records.append({
            "model": m,
            "corruption": c,
            "n_memories": K,
            "n_features": N,
            "cues": B,
            "exact_recall": float(res["exact"].float().mean()),
            "other_memory": float(other.float().mean()),
            "pixel_error": float(res["pixel_error"].mean()),
            "steps": float(res["steps"].float().mean()),
            "converged": float(res["converged"].float().mean()),
            "seconds": sec,
            "ms_per_cue": 1000.0 * sec / B,
            "cpu_seconds": cpu,
            "build_seconds": build_s,
        })
        bar.update(B * COST_MS[m])
    bar.close()
    total = time.perf_counter() - t_start
    path = _write(out, records, results, cfg, cues, target, xi, labels, order, total, quick)
    return records, path


TABLE = [
    Column("model"), Column("corruption"), Column("n_memories", "stored"), Column("cues"),
    Column("exact_recall", "exact recall", "%"), Column("other_memory", "other digit", "%"),
    Column("pixel_error", "pixel error", ".4f"), Column("steps", "steps", ".1f"),
    Column("converged", "converged", "%"), Column("seconds", "seconds", ".2f"),
    Column("ms_per_cue", "ms/cue", ".1f"),
]


def _write(out, records, results, cfg, cues, target, xi, labels, order, total, quick):
    K, N = xi.shape
    rep = Report("assocmem: pattern completion on MNIST" + (" (quick)" if quick else ""))
    rep.records = records
    rep.paragraph(
        f"{K:,} MNIST training digits, binarised to +-1 pixels (N_f = {N}), are stored in each model: "
        f"{K / (0.138 * N):.0f} times the classical capacity 0.138 N_f = {0.138 * N:.0f}. Each cue is a stored "
        "digit corrupted in one of three ways: 20 % of its pixels flipped; the bottom half occluded; a random 30 % of "
        "pixels erased. Unknown pixels are 0 for the continuous models; in the binary models they start at random "
        "+-1 values and run free while the known pixels are clamped. A recall is exact when the sign of the final "
        "state is pixel-identical to the stored digit; 'other digit' counts recalls of a different stored digit."
    )
    rep.items([f"{m}: {_DESCRIPTION[m]}; {cues[m]} cues per corruption" for m in MODELS if cues[m]])
    rep.paragraph(
        f"Parameters: beta = {cfg.beta} on raw dot products (spherical: beta sqrt(N_f) = {cfg.beta * math.sqrt(N):.1f} "
        f"on unit vectors), power n = {cfg.power_n}, two-layer tau_f = {cfg.tau_f}, tau_h = {cfg.tau_h}, RK4 with "
        f"dt = {cfg.dt} until every |dv/dt|, |dh/dt| < 1e-2 (at most t = {cfg.t_max}); seed {cfg.seed}. A sweep of a "
        "Dense AM costs about one (cues x memories) x (memories x pixels) product and the two-layer network four "
        "such products per RK4 step, so they get fewer cues; the cue counts keep the whole run at about 2 minutes "
        f"on 2 CPU cores. This run took {total:.0f} s."
    )
    rep.heading("Results")
    rep.table(records, TABLE, table_id="results")
    rep.paragraph("Steps: updates until the state stopped changing (sweeps for binary models), mean over cues; "
                  "for the two-layer network, RK4 steps until the whole batch converged.")
    rep.figure("exact_recall.png", figure_png(_bar_chart(records)), "Exact recall per model and corruption.")
    rep.heading("Cue / recalled / original")
    rep.paragraph("Each triple shows the cue (unknown pixels blue-grey), the recalled state (pixels that differ from "
                  "the original in red where ink was recalled, pink where background was) and the stored original. "
                  "Rows: flip 20 %, occlude bottom half, erase 30 %. Binary models start the unknown pixels at random "
                  "values; the cue shows them as unknown.")
    for m in MODELS:
        if not cues[m]:
            continue
        rows = []
        for c in CORRUPTIONS:
            res = results[(m, c)]
            row = []
            for i in range(min(cfg.examples_per_row, cues[m])):
                t = target[i].numpy()
                unknown = ~res["known"][i].numpy()
                cue = np.where(res["flips"][i].numpy(), -t, t)
                rec = res["state"][i].numpy()
                row += [(cue, unknown, None), (rec, None, rec != t), (t, None, None)]
            rows.append(row)
        rep.subheading(m)
        rep.figure(f"recall_{m}.png", mosaic_png(mosaic(rows, SHAPE), scale=3), f"{m}: {_DESCRIPTION[m]}")
    rep.heading("Energy during recall")
    curves, xlabels = {}, {}
    for m in MODELS:
        if not cues[m]:
            continue
        curves[m] = {}
        for c in CORRUPTIONS:
            res = results[(m, c)]
            e = res["energy"].mean(1).numpy()
            x = res["t"][: len(e)] if m == "two-layer" and res["t"] is not None and len(res["t"]) >= len(e) else np.arange(len(e))
            curves[m][c] = (x, e)
        xlabels[m] = "time (units of tau_f)" if m == "two-layer" else ("sweep" if m in _BINARY else "update")
    rep.figure("energy.png", figure_png(plot_energy(curves, xlabels)),
               "Mean energy over the cues at each step (KH eq. 2 for the two-layer network, the effective energies "
               "otherwise); it never increases.")
    return rep.write(out)


def _bar_chart(records):
    fig = new_figure(figsize=(8, 3.4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    models = [m for m in MODELS if any(r["model"] == m for r in records)]
    w = 0.8 / len(CORRUPTIONS)
    for j, c in enumerate(CORRUPTIONS):
        vals = [next((r["exact_recall"] for r in records if r["model"] == m and r["corruption"] == c), 0.0) * 100 for m in models]
        ax.bar(np.arange(len(models)) + (j - 1) * w, vals, w, label=c)
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel("exact recall (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return fig
