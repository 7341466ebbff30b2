"""``assocmem demo``: the main job. Stores 10,000 MNIST digits in every effective model and in the
two-layer network (KH sections 3-4) and recalls them from corrupted cues; ``--example`` runs the
other worked examples of KH section 4 (kanji, colours, immune repertoire). Writes an HTML report.
"""
from __future__ import annotations

import importlib
import time

from . import _args as A

EXAMPLES = ("mnist", "kanji", "colors", "repertoire")
# the examples derive one seed per model and corruption as seed * 1000 + i (i < 1000), and torch
# takes seeds up to 2^64 - 1
SEED_MAX = (2**64 - 1000) // 1000
# pattern size N_f of each example (28 x 28 digits, 64 x 64 kanji, RGB colours, 32-d embeddings)
N_FEATURES = {"mnist": 28 * 28, "kanji": 64 * 64, "colors": 3, "repertoire": 32}


def register(sub):
    p = sub.add_parser(
        "demo",
        help="pattern completion on real images in every model, with an HTML report",
        description="Store MNIST digits (or, with --example, kanji, colours or an immune-repertoire-sized set of "
        "embeddings) far above the classical capacity, recall them from corrupted cues and write a report folder "
        "(index.html, results.csv, results.json, PNG figures).",
    )
    p.add_argument("--example", default="mnist", type=A.choice(EXAMPLES),
                   help="which example of KH section 4 to run (default: mnist)")
    p.add_argument("--out", default=None,
                   help="report folder (default ./assocmem-report for mnist, ./assocmem-report-NAME otherwise)")
    p.add_argument("--quick", action="store_true", help="a smaller version that runs in about a minute")
    p.add_argument("--memories", type=A.integer(minimum=2), default=None, help="number of stored patterns (default: the example's)")
    p.add_argument("--cues", type=A.integer(minimum=1), default=None,
                   help="cues per model and corruption, the same for every model (default: the example's own counts)")
    p.add_argument("--beta", type=A.positive(), default=None, help="inverse temperature (default: the example's)")
    p.add_argument("--seed", type=A.seed(SEED_MAX), default=0, help=f"random seed, 0 to {SEED_MAX} (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..report import check_report_target, format_table

    name = args.example
    if args.memories is not None:  # the stored patterns in float32 and one working copy: a lower bound
        A.memory("--memories", 8 * args.memories * N_FEATURES[name], f"storing {args.memories} patterns of "
                 f"{N_FEATURES[name]} values ({name})")
    out = args.out or ("assocmem-report" if name == "mnist" else f"assocmem-report-{name}")
    check_report_target(out)  # fail before the run, not after it
    mod = importlib.import_module(f"assocmem.demos.{name}")
    t0 = time.perf_counter()
    records, path = mod.run(out, quick=args.quick, seed=args.seed, n_memories=args.memories, cues=args.cues,
                            beta=args.beta, progress=not args.no_progress)
    print(format_table(records, mod.TABLE))
    print(f"\nReport: {path}  ({time.perf_counter() - t0:.0f} s)")
    return 0
