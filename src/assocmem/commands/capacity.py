"""``assocmem capacity``: measure the storage capacity of a model at several sizes N against the
formulas of MODELS.md sections 4-5 (``assocmem.capacity``, ``assocmem.theory``); prints a table and
writes capacity.csv, capacity.json and capacity.png (log-log, theory curves on the same axes)."""
from __future__ import annotations

import json
import sys


def register(sub):
    p = sub.add_parser(
        "capacity",
        help="measure storage capacity vs N against theory (table, CSV, JSON, log-log plot)",
        description="Estimate the capacity K (largest number of stored random patterns at which the criterion "
                    "stays above its threshold) at each N, by a sweep of K plus bisection, over several trials.",
    )
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="classical | dense | modern | spherical | threshold | dendritic-ei")
    p.add_argument("--N", default="100,200,400", metavar="N1,N2,...",
                   help="comma-separated sizes: feature neurons (visible neurons N_v for threshold); default 100,200,400")
    p.add_argument("--criterion", default="stability", metavar="C", help="stability | overlap | recall (default stability)")
    p.add_argument("--threshold", type=float, default=None,
                   help="criterion threshold (default 0.9; overlap 0.97; threshold-model stability 0.99)")
    p.add_argument("--flip", type=float, default=0.0, help="fraction of cue entries flipped (recall/overlap)")
    p.add_argument("--occlude", type=float, default=0.0, help="fraction of cue entries blanked at the end")
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise added to cues (continuous models)")
    p.add_argument("--patterns", default=None, metavar="KIND", help="pm1 | binary | gaussian (default: the model's own)")
    p.add_argument("--coding-level", type=float, default=0.5, help="P(1) of binary patterns (default 0.5)")
    p.add_argument("--n", type=int, default=None, help="interaction power n (dense, spherical: 3; dendritic-ei: 6)")
    p.add_argument("--F", default="power", help="interaction function of dense/spherical: power | rectified_power | exp")
    p.add_argument("--beta", type=float, default=1.0, help="inverse temperature (modern; F = exp)")
    p.add_argument("--n-hidden", type=int, default=None, help="memory neurons N_h: only the first N_h patterns are stored")
    p.add_argument("--theta", type=float, default=0.5, help="threshold model: firing threshold (default 0.5)")
    p.add_argument("--tau-v", type=float, default=20.0, help="threshold model: visible time constant")
    p.add_argument("--tau-h", type=float, default=1.0, help="threshold model: hidden time constant")
    p.add_argument("--dendrites", default="nonlinear", help="dendritic-ei: nonlinear | linear")
    p.add_argument("--trials", type=int, default=5, help="independent pattern sets per N (default 5)")
    p.add_argument("--cues", type=int, default=None, help="patterns probed per trial (default 100; threshold stability 2048)")
    p.add_argument("--max-steps", type=int, default=None, help="recall sweeps/steps (classical 100, dense 5, modern/spherical 50)")
    p.add_argument("--k-min", type=int, default=1, help="first K of the sweep (default 1)")
    p.add_argument("--k-max", type=int, default=None, help="largest K tried; an estimate that reaches it is censored")
    p.add_argument("--rel-tol", type=float, default=0.01, help="bisection stops at this relative bracket (default 0.01)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="float32 | float64 (continuous models)")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on an oversubscribed machine)")
    p.add_argument("--out", default="assocmem-capacity", metavar="DIR", help="output folder (default ./assocmem-capacity)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout instead of the table")
    p.set_defaults(func=run)
    return p


def _parse_sizes(text: str) -> list[int]:
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts:
        raise ValueError(f"--N: got {text!r}; expected comma-separated integers >= 2 such as 100,200,400")
    out = []
    for t in parts:
        try:
            v = int(t)
        except ValueError:
            raise ValueError(f"--N: got {t!r} in {text!r}; expected comma-separated integers >= 2 such as 100,200,400") from None
        if v < 2:
            raise ValueError(f"--N: got {v}; expected integers >= 2 (sizes must be positive)")
        out.append(v)
    return out


def _settings(args) -> dict:
    import torch

    from .._validation import check_choice, check_int

    dtype = {"float32": torch.float32, "float64": torch.float64}[check_choice("--dtype", args.dtype, ("float32", "float64"))]
    for name in ("trials", "cues", "k_min", "k_max", "max_steps", "n_hidden", "n"):
        v = getattr(args, name)
        if v is not None:
            check_int("--" + name.replace("_", "-"), v, minimum=1)
    return dict(threshold=args.threshold, patterns=args.patterns, coding_level=args.coding_level, flip=args.flip,
                occlude=args.occlude, noise=args.noise, n=args.n, F=args.F, beta=args.beta, n_hidden=args.n_hidden,
                probes=args.cues, max_steps=args.max_steps, k_min=args.k_min, k_max=args.k_max, rel_tol=args.rel_tol,
                trials=args.trials, seed=args.seed, theta=args.theta, tau_v=args.tau_v, tau_h=args.tau_h,
                dendrites=args.dendrites, dtype=dtype, device=args.device)


def _table(report) -> str:
    s = report.settings
    lines = [f"capacity of {report.model}, criterion {report.criterion} (threshold {s['threshold']:g}), "
             f"{s['trials']} trials, patterns {s['patterns']}"]
    thr = report.model == "threshold"
    head = f"{'N':>7}{'K':>12}{'+-std':>10}{'theory':>12}{'K/theory':>10}"
    if thr:
        head += f"{'N_h':>7}"
    lines.append(head + "   seconds")
    for r in report.results:
        th = "-" if r.theory is None else f"{r.theory:.4g}"
        ratio = "-" if not r.theory else f"{r.K / r.theory:.2f}"
        k = f"{r.K:.4g}" + (">=" if any(r.censored) else "")
        row = f"{r.N:>7}{k:>12}{r.K_std:>10.3g}{th:>12}{ratio:>10}"
        if thr:
            row += f"{r.extra['N_h']:>7.1f}"
        lines.append(row + f"{r.seconds:>10.1f}")
    if report.exponent is None:
        lines.append("fitted exponent (slope of log K vs log N): n/a (needs two or more uncensored N)")
    else:
        se = "" if report.exponent_stderr is None else f" +- {report.exponent_stderr:.2f}"
        lines.append(f"fitted exponent (slope of log K vs log N): {report.exponent:.3f}{se}")
    if any(any(r.censored) for r in report.results):
        lines.append(">= : the criterion still held at k_max; the estimate is a lower bound (raise --k-max)")
    return "\n".join(lines)


def run(args) -> int:
    from .. import capacity as cap
    from .._validation import check_choice, check_int

    model = check_choice("--model", args.model, cap.MODELS)
    criterion = check_choice("--criterion", args.criterion, cap.CRITERIA)
    Ns = _parse_sizes(args.N)
    settings = _settings(args)
    threads = None if args.threads is None else check_int("--threads", args.threads, minimum=1)
    spec = cap.capacity_settings(model, criterion, **settings)
    if cap.needs_bio(model, criterion):
        try:
            from .. import bio  # noqa: F401
        except ImportError as e:
            raise ValueError(f"--model {model}: needs assocmem.bio, which is not available in this installation ({e})") from None
    import os

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out: got {args.out!r}, which exists and is not a folder; expected a folder to write into")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    report = cap.capacity_scan(model, Ns, criterion, progress=True, _spec=spec)
    paths = cap.write_report(report, args.out)
    if args.json:
        sys.stdout.write(cap.report_json(report) + "\n")
    else:
        print(_table(report))
        print("wrote " + ", ".join(paths.values()))
    return 0
