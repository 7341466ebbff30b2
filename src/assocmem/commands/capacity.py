"""``assocmem capacity``: measure the storage capacity of a model at several sizes N against the
capacity formulas (Amit, Gutfreund & Sompolinsky 1985; McEliece et al. 1987; Krotov & Hopfield 2016;
Demircigil et al. 2017; Kafraj, Krotov & Latham 2026) of ``assocmem.capacity`` and ``assocmem.theory``;
prints a table and writes capacity.csv, capacity.json and capacity.png (log-log, theory on the same axes)."""
from __future__ import annotations

import sys

from .. import capacity as cap
from . import _args as A


def register(sub):
    p = sub.add_parser(
        "capacity",
        help="measure storage capacity vs N against theory (table, CSV, JSON, log-log plot)",
        description="Estimate the capacity K (largest number of stored random patterns at which the criterion "
                    "stays above its threshold) at each N, by a sweep of K plus bisection, over several trials. "
                    "Sizes whose fixed allocations (the probe cues of every trial, and the classical network's "
                    "N x N weights per trial) exceed the memory available are refused before anything runs.",
    )
    pos, count = A.positive(), A.integer(minimum=1)
    p.add_argument("--model", required=True, metavar="MODEL", type=A.choice(cap.MODELS),
                   help=" | ".join(cap.MODELS))
    p.add_argument("--N", default=[100, 200, 400], metavar="N1,N2,...", type=A.int_list(minimum=2),
                   help="comma-separated sizes: feature neurons (visible neurons N_v for threshold); default 100,200,400")
    p.add_argument("--criterion", default="stability", metavar="C", type=A.choice(cap.CRITERIA),
                   help="stability | overlap | recall (default stability)")
    p.add_argument("--threshold", type=A.fraction(lo_open=True), default=None,
                   help="criterion threshold in (0, 1] (default 0.9; overlap 0.97; threshold-model stability 0.99)")
    p.add_argument("--flip", type=A.fraction(), default=0.0, help="fraction of cue entries flipped (recall/overlap)")
    p.add_argument("--occlude", type=A.fraction(), default=0.0, help="fraction of cue entries blanked at the end")
    p.add_argument("--noise", type=A.real(0.0), default=0.0, help="std of Gaussian noise added to cues (continuous models)")
    p.add_argument("--patterns", default=None, metavar="KIND", type=A.choice(cap.PATTERN_KINDS),
                   help="pm1 | binary | gaussian (default: the model's own)")
    p.add_argument("--coding-level", type=A.fraction(lo_open=True, hi_open=True), default=0.5,
                   help="P(1) of binary patterns (default 0.5)")
    p.add_argument("--n", type=A.integer(minimum=2), default=None,
                   help="interaction power n (dense, spherical: 3; dendritic-ei: 6)")
    p.add_argument("--F", default="power", type=A.choice(("power", "rectified_power", "exp")),
                   help="interaction function of dense/spherical: power | rectified_power | exp")
    p.add_argument("--beta", type=pos, default=1.0, help="inverse temperature (modern; F = exp)")
    p.add_argument("--n-hidden", type=count, default=None, help="memory neurons N_h: only the first N_h patterns are stored")
    p.add_argument("--theta", type=A.fraction(lo_open=True, hi_open=True), default=0.5,
                   help="threshold model: firing threshold (default 0.5)")
    p.add_argument("--tau-v", type=pos, default=20.0, help="threshold model: visible time constant")
    p.add_argument("--tau-h", type=pos, default=1.0, help="threshold model: hidden time constant")
    p.add_argument("--dendrites", default="nonlinear", type=A.choice(("nonlinear", "linear")),
                   help="dendritic-ei: nonlinear | linear")
    p.add_argument("--trials", type=count, default=5, help="independent pattern sets per N (default 5)")
    p.add_argument("--cues", type=count, default=None, help="patterns probed per trial (default 100; threshold stability 2048)")
    p.add_argument("--max-steps", type=count, default=None,
                   help="recall sweeps/steps (classical 100, dense 5, modern/spherical 50)")
    p.add_argument("--k-min", type=count, default=1, help="first K of the sweep (default 1)")
    p.add_argument("--k-max", type=count, default=None, help="largest K tried; an estimate that reaches it is censored")
    p.add_argument("--rel-tol", type=A.fraction(), default=0.01, help="bisection stops at this relative bracket (default 0.01)")
    p.add_argument("--seed", type=A.seed(), default=0, help="random seed, 0 to 2^64 - 1 (default 0)")
    p.add_argument("--dtype", default="float32", type=A.choice(("float32", "float64")),
                   help="float32 | float64 (continuous models)")
    p.add_argument("--device", default=None, type=A.device(),
                   help="torch device that torch reports available, such as cpu or cuda:0 (default cpu)")
    p.add_argument("--threads", type=A.threads(), default=None,
                   help="torch CPU threads, at most the cores this process may use "
                        "(default: torch's choice; 1 is fastest on an oversubscribed machine)")
    p.add_argument("--out", default="assocmem-capacity", metavar="DIR", help="output folder (default ./assocmem-capacity)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout instead of the table")
    p.set_defaults(func=run)
    return p


def _settings(args) -> dict:
    import torch

    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    return dict(threshold=args.threshold, patterns=args.patterns, coding_level=args.coding_level, flip=args.flip,
                occlude=args.occlude, noise=args.noise, n=args.n, F=args.F, beta=args.beta, n_hidden=args.n_hidden,
                probes=args.cues, max_steps=args.max_steps, k_min=args.k_min, k_max=args.k_max, rel_tol=args.rel_tol,
                trials=args.trials, seed=args.seed, theta=args.theta, tau_v=args.tau_v, tau_h=args.tau_h,
                dendrites=args.dendrites, dtype=dtype, device=args.device)


def fixed_bytes(spec, N: int) -> int:
    """Bytes the experiment at size N allocates whatever K turns out to be: for every trial, the
    probe cues (a flip mask of 1 byte and a float32 value per entry, plus float32 noise when there is
    noise) and, for the classical network, its N x N weights (float32 or float64 as the sweep needs;
    counted at 8 bytes). A lower bound of the run's peak: the stored patterns grow with K."""
    per_entry = 1 + 4 + (4 if spec.noise else 0)
    total = spec.trials * spec.probes * N * per_entry
    if spec.model == "classical":
        total += spec.trials * N * N * 8
    return total


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
    import os

    spec = cap.capacity_settings(args.model, args.criterion, **_settings(args))
    Ns = list(args.N)
    A.memory("--N", fixed_bytes(spec, max(Ns)), f"the {args.model} experiment at N = {max(Ns)} "
             f"({spec.trials} trials x {spec.probes} cues)")
    if cap.needs_bio(args.model, args.criterion):
        try:
            from .. import bio  # noqa: F401
        except ImportError as e:
            raise ValueError(f"--model {args.model}: needs assocmem.bio, which is not available in this installation ({e})") from None
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out: got {args.out!r}, which exists and is not a folder; expected a folder to write into")
    if args.threads is not None:  # the command line owns the process: no need to restore it
        import torch

        torch.set_num_threads(args.threads)
    report = cap.capacity_scan(args.model, Ns, args.criterion, progress=True, _spec=spec)
    paths = cap.write_report(report, args.out)
    if args.json:
        sys.stdout.write(cap.report_json(report) + "\n")
    else:
        print(_table(report))
        print("wrote " + ", ".join(paths.values()))
    return 0
