"""``assocmem demo``: the main job. Stores 10,000 MNIST digits in every effective model and in the
two-layer network (KH sections 3-4) and recalls them from corrupted cues; ``--example`` runs the
other worked examples of KH section 4 (kanji, colours, immune repertoire). Writes an HTML report.
"""
from __future__ import annotations

import importlib
import time

EXAMPLES = ("mnist", "kanji", "colors", "repertoire")


def register(sub):
    p = sub.add_parser(
        "demo",
        help="pattern completion on real images in every model, with an HTML report",
        description="Store MNIST digits (or, with --example, kanji, colours or an immune-repertoire-sized set of "
        "embeddings) far above the classical capacity, recall them from corrupted cues and write a report folder "
        "(index.html, results.csv, results.json, PNG figures).",
    )
    p.add_argument("--example", default="mnist", choices=EXAMPLES,
                   help="which example of KH section 4 to run (default: mnist)")
    p.add_argument("--out", default=None,
                   help="report folder (default ./assocmem-report for mnist, ./assocmem-report-NAME otherwise)")
    p.add_argument("--quick", action="store_true", help="a smaller version that runs in about a minute")
    p.add_argument("--memories", type=int, default=None, help="number of stored patterns (default: the example's)")
    p.add_argument("--cues", type=int, default=None,
                   help="cues per model and corruption, the same for every model (default: the example's own counts)")
    p.add_argument("--beta", type=float, default=None, help="inverse temperature (default: the example's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from .._validation import check_choice, check_int, check_positive
    from ..report import check_report_target, format_table

    name = check_choice("--example", args.example, EXAMPLES)
    if args.memories is not None:
        check_int("--memories", args.memories, minimum=2)
    if args.cues is not None:
        check_int("--cues", args.cues, minimum=1)
    if args.beta is not None:
        check_positive("--beta", args.beta)
    check_int("--seed", args.seed, minimum=0)
    out = args.out or ("assocmem-report" if name == "mnist" else f"assocmem-report-{name}")
    check_report_target(out)  # fail before the run, not after it
    mod = importlib.import_module(f"assocmem.examples.{name}")
    t0 = time.perf_counter()
    records, path = mod.run(out, quick=args.quick, seed=args.seed, n_memories=args.memories, cues=args.cues,
                            beta=args.beta, progress=not args.no_progress)
    print(format_table(records, mod.TABLE))
    print(f"\nReport: {path}  ({time.perf_counter() - t0:.0f} s)")
    return 0
