"""Immune-repertoire-sized memory (KH section 4): N_f = 32 features and 10^5 memories (random unit
embeddings standing in for receptor signatures), stored in the modern Hopfield network (KH eq. 13-16)
and recalled from noisy cues, with timing of storage and recall.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .._validation import check_int, check_positive
from ..report import Column, Report, figure_png
from ._common import new_figure, pad_traces, plot_energy, steps_from_energy

__all__ = ["run", "TABLE"]

DIM = 32
NOISE = (0.25, 0.5, 0.75, 1.0)  # norm of the noise vector relative to the (unit) embedding
FULL = {"n_memories": 100_000, "cues": 500}
QUICK = {"n_memories": 30_000, "cues": 300}
CHUNK = 100  # cues per recall call: (100, 10^5) score matrices instead of one huge one
TABLE = [
    Column("model"), Column("corruption"), Column("n_memories", "stored"), Column("cues"),
    Column("exact_recall", "recalled", "%"), Column("other_memory", "other memory", "%"),
    Column("cosine", "mean cosine", ".4f"), Column("steps", "steps", ".1f"), Column("seconds", "seconds", ".3f"),
    Column("us_per_cue", "us/cue", ".0f"),
]


def run(out="assocmem-report-repertoire", quick: bool = False, seed: int = 0, n_memories: int | None = None,
        cues: int | None = None, beta: float | None = None, progress: bool = True):
    """Store random unit embeddings, recall from noisy cues, write the report folder ``out``.
    Returns (records, path of index.html)."""
    from tqdm import tqdm

    from .. import ModernHopfield

    preset = QUICK if quick else FULL
    K = preset["n_memories"] if n_memories is None else check_int("n_memories", n_memories, minimum=2)
    B = min(preset["cues"] if cues is None else check_int("cues", cues, minimum=1), K)
    beta = 100.0 if beta is None else float(check_positive("beta", beta))
    seed = check_int("seed", seed, minimum=0)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    xi = torch.randn(K, DIM, generator=g)
    xi = xi / xi.norm(dim=1, keepdim=True)
    model = ModernHopfield(xi, beta=beta)
    store_s = time.perf_counter() - t0
    nn_cos = _max_neighbour_cosine(xi, g)
    idx = torch.randperm(K, generator=g)[:B]
    target = xi[idx]
    records, curves = [], {"modern": {}}
    for rho in tqdm(NOISE, desc="repertoire recall", unit="noise level", disable=not progress):
        noise = torch.randn(target.shape, generator=g)
        cue = target + rho * noise / noise.norm(dim=1, keepdim=True)
        t1 = time.perf_counter()
        parts = [model.recall(cue[s:s + CHUNK], max_steps=50, tol=1e-5) for s in range(0, B, CHUNK)]
        sec = time.perf_counter() - t1
        state = torch.cat([p.state for p in parts])
        energy = pad_traces([p.energy for p in parts])
        steps = torch.cat([steps_from_energy(p.energy, p.steps) for p in parts])
        overlaps = state @ xi.T
        best = overlaps.argmax(-1)
        close = (state - xi[best]).norm(dim=1) < 1e-2  # ended on a stored embedding
        exact = close & (best == idx)
        other = close & (best != idx)
        cos = torch.nn.functional.cosine_similarity(state, target, dim=1)
        label = f"noise {rho:g} x |xi|"
        records.append({
            "model": "modern", "corruption": label, "n_memories": K, "n_features": DIM, "cues": B,
            "exact_recall": float(exact.float().mean()), "other_memory": float(other.float().mean()),
            "cosine": float(cos.mean()), "steps": float(steps.float().mean()),
            "seconds": sec, "us_per_cue": 1e6 * sec / B, "store_seconds": store_s, "beta": beta,
        })
        curves["modern"][label] = (np.arange(energy.shape[0]), energy.double().mean(1).numpy())
    rep = Report("assocmem: an immune-repertoire-sized memory (N_f = 32)" + (" (quick)" if quick else ""))
    rep.records = records
    rep.paragraph(
        f"{K:,} random unit vectors in {DIM} dimensions (stand-ins for receptor embeddings; the paper's immune "
        f"repertoire example has N_f = 32 and far more than 10^4 memories) are stored in a modern Hopfield network "
        f"with beta = {beta:g}: {K / DIM:,.0f} memories per feature neuron. Each cue is a stored embedding plus a "
        f"random vector of the given norm. A recall counts when the state ends within 0.01 of the original. The "
        f"patterns take {xi.numel() * xi.element_size() / 2**20:.1f} MiB; recall runs on batches of {CHUNK} cues. "
        f"Storing took {store_s:.3f} s; the most similar pair among a sample of stored embeddings has cosine "
        f"{nn_cos:.2f}, which sets how much noise can be undone."
    )
    rep.heading("Results")
    rep.table(records, TABLE, table_id="results")
    rep.figure("recall_vs_noise.png", figure_png(_plot(records)), "Recall rate and time per cue against cue noise.")
    rep.figure("energy.png", figure_png(plot_energy(curves, {"modern": "update"})), "Mean energy during recall.")
    return records, rep.write(out)


def _max_neighbour_cosine(xi: torch.Tensor, g: torch.Generator, sample: int = 500) -> float:
    """Largest cosine between a sample of stored embeddings and any other stored embedding."""
    s = torch.randperm(xi.shape[0], generator=g)[: min(sample, xi.shape[0])]
    c = xi[s] @ xi.T
    c[torch.arange(len(s)), s] = -2.0
    return float(c.max())


def _plot(records):
    fig = new_figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    x = [float(r["corruption"].split()[1]) for r in records]
    ax.plot(x, [100 * r["exact_recall"] for r in records], "o-")
    ax.set_xlabel("noise norm / embedding norm")
    ax.set_ylabel("recalled (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(x, [r["us_per_cue"] for r in records], "s-", color="C1")
    ax2.set_xlabel("noise norm / embedding norm")
    ax2.set_ylabel("recall time per cue (us)")
    ax2.grid(alpha=0.3)
    return fig
