"""Kanji completion (KH section 4, pattern memorisation far above 0.14 N_f): every base character of
KanjiVG rendered to a 64x64 +-1 image (N_f = 4096, about 6,700 memories, 12 times 0.14 N_f) is
stored in the modern Hopfield network (KH eq. 13-16) and, for contrast, the classical one (KH eq. 8,
n = 2); characters are completed from their first strokes or from their top half.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .._validation import check_int, check_positive
from ..report import Column, Report, figure_png
from ._common import mosaic, mosaic_png, pad_traces, plot_energy, score, steps_from_energy

__all__ = ["run", "TABLE"]

SIZE = 64
CORRUPTIONS = ("first 1/2 of strokes", "first 2/3 of strokes", "occlude bottom half")
MODELS = ("modern", "classical")
FULL = {"n_memories": None, "cues": {"modern": 500, "classical": 40}}
QUICK = {"n_memories": 2000, "cues": {"modern": 200, "classical": 20}}
TABLE = [
    Column("model"), Column("corruption"), Column("n_memories", "stored"), Column("cues"),
    Column("exact_recall", "exact recall", "%"), Column("other_memory", "other character", "%"),
    Column("pixel_error", "pixel error", ".4f"), Column("steps", "steps", ".1f"),
    Column("seconds", "seconds", ".2f"), Column("ms_per_cue", "ms/cue", ".1f"),
]


def _cues(files, idx, kind, target):
    """Cue images (B, 4096) and known masks for one corruption."""
    from ..data import kanji_strokes, render_kanji

    B = len(idx)
    known = torch.ones(B, SIZE * SIZE, dtype=torch.bool)
    if kind == "occlude bottom half":
        known.view(B, SIZE, SIZE)[:, SIZE // 2:, :] = False
        return torch.where(known, target, torch.zeros_like(target)), known
    frac = 0.5 if "1/2" in kind else 2.0 / 3.0
    cues = []
    for i in idx:
        n = len(kanji_strokes(files[i]))
        img = render_kanji(files[i], size=SIZE, n_strokes=max(1, math.ceil(frac * n)))
        cues.append(torch.from_numpy(img.reshape(-1).astype(np.float32)) * 2.0 - 1.0)
    return torch.stack(cues), known


def run(out="assocmem-report-kanji", quick: bool = False, seed: int = 0, n_memories: int | None = None,
        cues: int | None = None, beta: float | None = None, progress: bool = True):
    """Render (or read from the cache) the KanjiVG characters, store them, complete partial ones and
    write the report folder ``out``. Returns (records, path of index.html)."""
    from tqdm import tqdm

    from .. import ClassicalHopfield, ModernHopfield
    from ..data import kanji_files, kanji_strokes, load_kanji

    preset = QUICK if quick else FULL
    K = preset["n_memories"] if n_memories is None else check_int("n_memories", n_memories, minimum=2)
    beta = 0.5 if beta is None else float(check_positive("beta", beta))
    seed = check_int("seed", seed, minimum=0)
    t_start = time.perf_counter()
    xi, chars = load_kanji(SIZE, n=K, progress=progress)
    files = kanji_files()[: xi.shape[0]]
    K, N = xi.shape
    counts = {m: (preset["cues"][m] if cues is None else check_int("cues", cues, minimum=1)) for m in MODELS}
    g = torch.Generator().manual_seed(seed)
    # targets: characters with at least 4 strokes, so that a partial cue really lacks strokes
    eligible = [i for i in torch.randperm(K, generator=g).tolist() if len(kanji_strokes(files[i])) >= 4]
    n_max = min(max(counts.values()), len(eligible))
    if n_max == 0:
        raise ValueError(f"n_memories: the first {K} KanjiVG characters include none with 4 or more strokes; store more")
    idx = eligible[:n_max]
    target = xi[idx]
    cue_sets = {c: _cues(files, idx, c, target) for c in CORRUPTIONS}
    builders = {"modern": lambda: ModernHopfield(xi, beta=beta), "classical": lambda: ClassicalHopfield(xi)}
    records, results = [], {}
    bar = tqdm(total=sum(min(counts[m], n_max) for m in MODELS) * len(CORRUPTIONS), desc="kanji recall", unit="cue",
               disable=not progress)
    for m in MODELS:
        model = builders[m]()
        B = min(counts[m], n_max)
        for c in CORRUPTIONS:
            bar.set_postfix_str(f"{m}, {c}")
            cue, known = (x[:B] for x in cue_sets[c])
            t = target[:B]
            gen = torch.Generator().manual_seed(seed * 1000 + 7 + MODELS.index(m) * 10 + CORRUPTIONS.index(c))
            t0 = time.perf_counter()
            if m == "classical":
                if not bool(known.all()):
                    cue = torch.where(known, cue, torch.where(torch.rand(cue.shape, generator=gen) < 0.5, 1.0, -1.0))
                r = model.recall(cue, max_steps=20, clamp=None if bool(known.all()) else known, generator=gen)
            else:
                traces, states, steps = [], [], []
                r = None
                for s in range(0, B, 250):
                    rr = model.recall(cue[s:s + 250], max_steps=30, tol=1e-4)
                    traces.append(rr.energy)
                    states.append(rr.state)
                    steps.append(steps_from_energy(rr.energy, rr.steps))
            sec = time.perf_counter() - t0
            if m == "classical":
                state, energy, st = r.state, r.energy, steps_from_energy(r.energy, r.steps)
            else:
                state, energy, st = torch.cat(states), pad_traces(traces), torch.cat(steps)
            exact, err = score(state, t)
            sgn = torch.sign(state)
            hit = (sgn @ xi.T) == N
            hit[torch.arange(B), torch.as_tensor(idx[:B])] = False
            # identical renderings of two characters count as exact (pixel-identical to the stored image)
            other = hit.any(-1) & ~exact
            results[(m, c)] = {"state": sgn, "cue": cue, "known": known, "energy": energy}
            records.append({
                "model": m, "corruption": c, "n_memories": K, "n_features": N, "cues": B,
                "exact_recall": float(exact.float().mean()), "other_memory": float(other.float().mean()),
                "pixel_error": float(err.mean()), "steps": float(st.float().mean()), "seconds": sec,
                "ms_per_cue": 1000.0 * sec / B,
            })
            bar.update(B)
    bar.close()
    total = time.perf_counter() - t_start
    rep = Report("assocmem: completing kanji from partial strokes" + (" (quick)" if quick else ""))
    rep.records = records
    rep.paragraph(
        f"{K:,} characters of KanjiVG (every base character: kanji, kana and a few symbols), rendered from their "
        f"stroke SVGs to {SIZE}x{SIZE} +-1 images (N_f = {N}), are stored: {K / (0.14 * N):.1f} times 0.14 N_f = "
        f"{0.14 * N:.0f}, the classical capacity. Cues: the character drawn with only its first half or first two "
        "thirds of strokes (the missing strokes are simply absent, i.e. wrong pixels), or its bottom half unknown "
        "(0 for the modern network; random +-1 with the known pixels clamped for the classical one). Targets are "
        f"characters with at least 4 strokes. Modern Hopfield beta = {beta} on raw dot products. "
        f"This run took {total:.0f} s."
    )
    rep.heading("Results")
    rep.table(records, TABLE, table_id="results")
    rep.heading("Cue / recalled / original")
    for m in MODELS:
        rows = []
        for c in CORRUPTIONS:
            res = results[(m, c)]
            row = []
            for i in range(min(5, res["state"].shape[0])):
                t = target[i].numpy()
                rec = res["state"][i].numpy()
                row += [(res["cue"][i].numpy(), ~res["known"][i].numpy(), None), (rec, None, rec != t), (t, None, None)]
            rows.append(row)
        rep.subheading(m)
        rep.figure(f"recall_{m}.png", mosaic_png(mosaic(rows, (SIZE, SIZE)), scale=2),
                   f"{m}: rows {', '.join(CORRUPTIONS)}; wrong pixels red (ink) or pink (background)")
    curves = {m: {c: (np.arange(results[(m, c)]["energy"].shape[0]), results[(m, c)]["energy"].double().mean(1).numpy())
                  for c in CORRUPTIONS} for m in MODELS}
    rep.heading("Energy during recall")
    rep.figure("energy.png", figure_png(plot_energy(curves, {"modern": "update", "classical": "sweep"})),
               "Mean energy over the cues at each step.")
    return records, rep.write(out)
