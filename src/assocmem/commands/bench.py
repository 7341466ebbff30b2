"""``assocmem bench``: timings of the library against references measured in the same run (Model B
retrieval of KH eq. 16 against the bare matrix products, the machine's peak matmul rate, plain
torch, torch's scaled_dot_product_attention and plain numpy; low-precision banks; iterated recall;
binary sweeps; RK4 steps of KH eq. 1), as a table and JSON; ``--calibrate`` runs the retrieval
kernel's calibration explicitly. Every case interleaves its candidates over several rounds."""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time

import numpy as np
import torch

CASES = ("retrieval", "lowp", "recall", "binary", "rk4", "streaming")

# (name, N, K, B): the issue's shapes and a tiny one
RETRIEVAL_SHAPES = [("N=256 K=10k B=256", 256, 10_000, 256), ("N=1024 K=100k B=64", 1024, 100_000, 64),
                    ("tiny N=64 K=1k B=1", 64, 1_000, 1)]
# a sharp softmax (beta 8x the default): nearly every exponential underflows, where libm's exp is
# 8-15x slower (the kernel flushes those terms to 0; plain torch's exp still pays)
SHARP_SHAPES = [("N=256 K=10k B=256 sharp (beta=1)", 256, 10_000, 256)]
QUICK_SHAPES = [("N=128 K=5k B=64", 128, 5_000, 64), ("tiny N=64 K=1k B=1", 64, 1_000, 1)]


def register(sub):
    p = sub.add_parser("bench", help="time retrieval, recall, sweeps and RK4 steps against same-run references")
    p.add_argument("--cases", default="retrieval,lowp,recall,binary,rk4",
                   help=f"comma-separated subset of {','.join(CASES)} (default: all but streaming)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case; the fastest counts (default 5)")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run, seconds)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain-torch retrieval column")
    p.add_argument("--json", default=None, help="write the results here (atomically)")
    p.add_argument("--calibrate", action="store_true",
                   help="calibrate the retrieval kernel for the benchmark's shapes now (replacing their cached "
                        "decisions), print the decisions and exit")
    p.set_defaults(func=run)
    return p


# ---------------------------------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------------------------------
SETTLE_S = 0.15


def interleave(fns: dict, rounds: int, inner: int | dict = 1, settle: float | None = None) -> dict:
    """Run each function once (warm-up), then ``rounds`` rounds of all of them in turn; return each
    one's fastest round (seconds per call; ``inner`` calls per round, one number or per function).

    Every timed call comes right after an untimed call of the same function: what is measured is
    the steady state of a loop calling it (as recall and training do), not the state the previous
    candidate left behind (torch's OpenMP workers awake or asleep, freed memory returned to the OS
    or kept by malloc, caches). After a candidate whose name contains ``numpy`` (a multi-threaded
    OpenBLAS call) the machine is also left idle for ``settle`` seconds (default ``SETTLE_S``):
    OpenBLAS's worker threads spin for about 2^28 cycles (~0.1 s) after a call and would take a core
    from whichever candidate runs next (measured: the kernel ran at 68 GFLOP/s right after numpy's
    2048^2 matmul, at 105 after torch's matmul or after itself)."""
    settle = SETTLE_S if settle is None else settle
    for f in fns.values():
        f()
    best = {k: math.inf for k in fns}
    times = {k: [] for k in fns}
    pause = "numpy" in list(fns)[-1]  # the warm-up's last call
    for _ in range(rounds):
        for k, f in fns.items():
            n = inner.get(k, 1) if isinstance(inner, dict) else inner
            if pause and settle > 0:
                time.sleep(settle)
            pause = "numpy" in k
            f()  # the untimed call before: steady state
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            dt = (time.perf_counter() - t0) / n
            times[k].append(dt)
            best[k] = min(best[k], dt)
    return {k: {"min": best[k], "median": float(np.median(times[k])), "times": times[k]} for k in fns}


def paired_ratio(t: dict, ours: str, ref: str, scale: float = 1.0) -> float:
    """Median over the rounds of ``ours / (scale * ref)`` timed in the same round: on a machine whose
    speed drifts (other tenants, frequency) this moves less than the ratio of the two fastest rounds,
    which may come from different moments."""
    return float(np.median([a / (scale * b) for a, b in zip(t[ours]["times"], t[ref]["times"])]))


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_extra_mib(fn) -> float | None:
    """Peak resident memory (MiB) that one call of ``fn`` adds above what was resident before it
    (Linux: resets the high-water mark through /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    hwm = _status_kib("VmHWM")
    if before is None or hwm is None:
        return None
    return max(0.0, (hwm - before) / 1024)


def peak_gflops(rounds: int) -> dict:
    """The machine's matmul rate now: torch's and numpy's 2048^2 float32 product, interleaved."""
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    an, bn = a.numpy(), b.numpy()
    t = interleave({"torch": lambda: a @ b, "numpy": lambda: an @ bn}, rounds)
    fl = 2 * 2048 ** 3
    return {k: fl / v["min"] / 1e9 for k, v in t.items()}


def machine() -> dict:
    from .._kernels import available_paths, cpu_model
    from .._native import isa_signature

    cpu = cpu_model()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": cpu, "cpu_isa": isa_signature(),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "load_average_1min": load,
            "kernel_paths": available_paths(torch.float32)}


# ---------------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------------
def plain_retrieve(q, X, beta):
    """What a user writes in plain torch."""
    return torch.softmax(beta * q @ X.T, dim=-1) @ X


def sdpa_retrieve(q, X, beta):
    """The same update as torch's fused attention (on CPU a flash-attention kernel: blocks of keys
    with an online softmax, in torch's own threads)."""
    return torch.nn.functional.scaled_dot_product_attention(q[None], X[None], X[None], scale=beta)[0]


def without_compiled(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the kernel's compiled parts switched off (``ASSOCMEM_NATIVE=0``
    for the call; its calibration decisions are its own): what the compiled code buys."""
    saved = os.environ.get("ASSOCMEM_NATIVE")
    os.environ["ASSOCMEM_NATIVE"] = "0"
    try:
        return fn(*args, **kwargs)
    finally:
        if saved is None:
            del os.environ["ASSOCMEM_NATIVE"]
        else:
            os.environ["ASSOCMEM_NATIVE"] = saved


def numpy_retrieve(qn, Xn, beta):
    """What a user writes in plain numpy (one thread pool: numpy's BLAS)."""
    s = (qn * np.asarray(beta, qn.dtype)) @ Xn.T
    s -= s.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=1, keepdims=True)
    return s @ Xn


def _bank(N, K, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    X = torch.empty(K, N, dtype=torch.float32)
    for i in range(0, K, 65536):
        X[i:i + 65536] = torch.randint(0, 2, (min(65536, K - i), N), generator=g).float() * 2 - 1
    return X.to(dtype) if dtype != torch.float32 else X


def case_retrieval(shapes, rounds, plain=True):
    from .. import ModernHopfield
    from .. import functional as AF

    rows = []
    for name, N, K, B in shapes:
        X = _bank(N, K)
        q = X[:B] * torch.where(torch.rand(B, N, generator=torch.Generator().manual_seed(1)) < 0.1, -1.0, 1.0)
        beta = (16.0 if "sharp" in name else 2.0) / math.sqrt(N)
        model = ModernHopfield(X, beta=beta)
        Xn, qn = X.numpy(), q.numpy()

        def bare_numpy():
            s = qn @ Xn.T
            return s @ Xn

        def bare_torch():
            return (q @ X.T) @ X

        fns = {"ours": lambda: AF.retrieve(q, X, beta=beta), "model_step": lambda: model.step(q),
               "bare_numpy": bare_numpy, "bare_torch": bare_torch}
        if plain:
            fns["plain_torch"] = lambda: plain_retrieve(q, X, beta)
            fns["sdpa"] = lambda: sdpa_retrieve(q, X, beta)
            fns["plain_numpy"] = lambda: numpy_retrieve(qn, Xn, beta)
            fns["ours_without_compiled"] = lambda: without_compiled(AF.retrieve, q, X, beta=beta)
        a = torch.randn(2048, 2048)
        b = torch.randn(2048, 2048)
        an, bn = a.numpy(), b.numpy()
        fns["peak_torch"] = lambda: a @ b
        fns["peak_numpy"] = lambda: an @ bn
        fl = 4 * B * K * N
        small = fl < 1e8
        reps = {k: (200 if small and not k.startswith("peak") else 1) for k in fns}
        t = interleave(fns, rounds * (4 if small else 1), inner=reps)
        peak = 2 * 2048 ** 3 / min(t["peak_torch"]["min"], t["peak_numpy"]["min"])
        bare = min(t["bare_numpy"]["min"], t["bare_torch"]["min"])
        ours = t["ours"]["min"]
        err = float(((AF.retrieve(q, X, beta=beta).double() - plain_retrieve(q.double(), X.double(), beta)).abs().max()
                     / plain_retrieve(q.double(), X.double(), beta).abs().max()))
        row = {"case": f"retrieve {name}", "ours_s": ours, "ours_median_s": t["ours"]["median"],
               "model_step_s": t["model_step"]["min"], "bare_s": bare, "ratio_vs_bare": ours / bare,
               "gflops": fl / ours / 1e9, "peak_gflops": peak / 1e9, "fraction_of_peak": fl / ours / peak,
               "model_step_fraction_of_peak": fl / t["model_step"]["min"] / peak,
               "peak_mib": peak_extra_mib(lambda: AF.retrieve(q, X, beta=beta)), "relative_error": err,
               "path": _path_name(q, X, beta)}
        peaks = [min(a, b) for a, b in zip(t["peak_torch"]["times"], t["peak_numpy"]["times"])]
        for key, cand in (("fraction_of_peak_paired_median", "ours"), ("model_step_fraction_of_peak_paired_median", "model_step")):
            # per round: (fl / its time) / (peak flops / the peak's time in that round)
            row[key] = float(np.median([p / o for p, o in zip(peaks, t[cand]["times"])]) * fl / (2 * 2048 ** 3))
        if plain:
            row["plain_s"] = t["plain_torch"]["min"]
            row["sdpa_s"] = t["sdpa"]["min"]
            row["plain_numpy_s"] = t["plain_numpy"]["min"]
            row["speedup_vs_plain_paired_median"] = 1 / paired_ratio(t, "ours", "plain_torch")
            row["speedup_vs_plain"] = t["plain_torch"]["min"] / ours
            row["model_step_speedup_vs_plain"] = t["plain_torch"]["min"] / t["model_step"]["min"]
            # ours / each plain route: time ratios (below 1: ours is faster), fastest rounds and paired
            for ref, label in (("plain_torch", "plain"), ("sdpa", "sdpa"), ("plain_numpy", "numpy"),
                               ("ours_without_compiled", "without_compiled")):
                row[f"ours_over_{label}"] = ours / t[ref]["min"]
                row[f"ours_over_{label}_paired_median"] = paired_ratio(t, "ours", ref)
        rows.append(row)
    return rows


def _path_name(q, X, beta) -> str:
    from .. import _kernels

    with torch.no_grad():
        if _kernels.try_retrieve(q, X, None, beta, None) is None:
            return "torch"
    B, N = q.shape
    if B * X.shape[0] * 2 * N < 2 * _kernels.SMALL_WORK:
        return "compiled, direct (tiny)" if _kernels._native_get("small", q.dtype) is not None else "numpy, direct (tiny)"
    if _kernels.get_mode() == "auto":
        d = _kernels.decide(B, N, X.shape[0], N, q.dtype, X.dtype)
    else:
        d = ("numpy", _kernels._default_chunk(B, N, N, X.shape[0]), _kernels._default_variant(q.dtype, X.dtype, B))
    return f"kernel chunk={d[1]} {d[2] or 'python loop'}"


def case_lowp(shapes, rounds):
    """bfloat16 / float16 banks (float32 accumulation): speed and recall accuracy next to float32."""
    from .. import ModernHopfield

    rows = []
    for name, N, K, B in shapes[:1]:
        X = _bank(N, K)
        g = torch.Generator().manual_seed(2)
        idx = torch.randint(0, K, (B,), generator=g)
        cue = torch.where(torch.rand(B, N, generator=g) < 0.15, -X[idx], X[idx])
        beta = 2.0 / math.sqrt(N)
        banks = {"float32": X, "bfloat16": X.to(torch.bfloat16), "float16": X.to(torch.float16)}
        from .. import functional as AF

        fns = {k: (lambda b=b: AF.retrieve(cue, b, beta=beta)) for k, b in banks.items()}
        t = interleave(fns, rounds)
        fl = 4 * B * K * N
        for k, b in banks.items():
            m = ModernHopfield(X, beta=beta)
            ref = m.step(cue)
            out = AF.retrieve(cue, b, beta=beta)
            r = _recall_low(cue, b, beta)
            rows.append({"case": f"bank {k} {name}", "ours_s": t[k]["min"], "gflops": fl / t[k]["min"] / 1e9,
                         "ratio_vs_float32": t[k]["min"] / t["float32"]["min"],
                         "max_abs_diff_vs_float32_step": float((out - ref).abs().max()),
                         "recall_exact_fraction": float((torch.sign(r) == X[idx]).all(-1).float().mean()),
                         "bank_mib": b.numel() * b.element_size() / 2 ** 20})
    return rows


def _recall_low(cue, bank, beta, steps=10):
    from .. import functional as AF

    x = cue
    for _ in range(steps):
        x = AF.retrieve(x, bank, beta=beta)
    return x


def case_recall(rounds):
    """Iterated recall against steps x one step (Model B, N = 256, K = 10k, B = 256)."""
    from .. import ModernHopfield

    N, K, B = 256, 10_000, 256
    X = _bank(N, K)
    g = torch.Generator().manual_seed(3)
    cue = torch.where(torch.rand(B, N, generator=g) < 0.2, -X[:B], X[:B])
    m = ModernHopfield(X, beta=2.0 / math.sqrt(N))
    steps = m.recall(cue, max_steps=50, tol=0.0).steps
    from ..streaming import StreamingMemory

    sm = StreamingMemory(X, beta=2.0 / math.sqrt(N))
    t = interleave({"recall": lambda: m.recall(cue, max_steps=steps, tol=0.0),
                    "stream_recall": lambda: sm.recall(cue, max_steps=steps, tol=0.0),
                    "stream_recall_noenergy": lambda: sm.recall(cue, max_steps=steps, tol=0.0, energy=False),
                    "step": lambda: m.step(cue)}, max(2, rounds))
    one = t["step"]["min"]
    rows = []
    for key, name in (("recall", f"ModernHopfield.recall {steps} steps"), ("stream_recall", f"StreamingMemory.recall {steps} steps"),
                      ("stream_recall_noenergy", f"StreamingMemory.recall {steps} steps, no energies")):
        rows.append({"case": name, "ours_s": t[key]["min"], "bare_s": steps * one, "ratio_vs_bare": t[key]["min"] / (steps * one),
                     "ratio_paired_median": paired_ratio(t, key, "step", steps), "steps": steps})
    return rows


def naive_classical_sweep(w, s, order):
    """The reference sweep: one neuron at a time, every local field updated after each flip."""
    s = s.clone()
    u = s @ w
    for i in order:
        old = s[:, i]
        ui = u[:, i]
        new = torch.where(ui > 0, 1.0, torch.where(ui < 0, -1.0, old))
        u.addr_(new - old, w[i])
        s[:, i] = new
    return s


def case_binary(rounds, quick=False):
    """One asynchronous sweep over N neurons for B cues: classical and Dense AM."""
    from .. import ClassicalHopfield, DenseAssociativeMemory

    N, B, K = (200, 64, 100) if quick else (1000, 256, 1000)
    X = _bank(N, K)
    g = torch.Generator().manual_seed(4)
    cue = torch.where(torch.rand(B, N, generator=g) < 0.2, -X[:B], X[:B])
    rows = []
    ch = ClassicalHopfield(X)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0)).tolist()
    dam3 = DenseAssociativeMemory(X, F="power", n=3)
    dexp = DenseAssociativeMemory(X, F="exp", beta=0.05)
    fns = {"classical": lambda: ch.step(cue, generator=torch.Generator().manual_seed(0)),
           "classical_naive": lambda: naive_classical_sweep(ch._t_int, cue, order),
           "dam_power3": lambda: dam3.step(cue, generator=torch.Generator().manual_seed(0)),
           "dam_exp": lambda: dexp.step(cue, generator=torch.Generator().manual_seed(0))}
    t = interleave(fns, max(2, rounds // 2))
    same = bool(torch.equal(fns["classical"](), fns["classical_naive"]()))
    rows.append({"case": f"classical sweep N={N} B={B}", "ours_s": t["classical"]["min"],
                 "bare_s": t["classical_naive"]["min"], "ratio_vs_bare": t["classical"]["min"] / t["classical_naive"]["min"],
                 "identical_to_naive": same, "per_cue_us": t["classical"]["min"] / B * 1e6})
    for k, label in (("dam_power3", f"Dense AM n=3 sweep N={N} K={K} B={B} ({dam3._mode}, {dam3._work})".replace("torch.", "")),
                     ("dam_exp", f"Dense AM exp sweep N={N} K={K} B={B}")):
        rows.append({"case": label, "ours_s": t[k]["min"], "per_cue_us": t[k]["min"] / B * 1e6})
    return rows


def case_rk4(rounds, quick=False):
    """One RK4 step of TwoLayerNetwork (``net.rk4_step``, the step ``simulate`` takes) against its
    four derivative evaluations (``net.derivatives``), from a state that is not a previous step's
    output (the step concatenates it into its flat layout: the dearer case)."""
    from .. import TwoLayerNetwork
    from ..lagrangians import LogSumExp, Quadratic

    rows = []
    shapes = [(64, 200, 16)] if quick else [(64, 200, 16), (256, 10_000, 64), (784, 2_000, 256)]
    for Nf, Nh, B in shapes:
        g = torch.Generator().manual_seed(5)
        xi = torch.sign(torch.randn(Nh, Nf, generator=g))
        net = TwoLayerNetwork(xi, Quadratic(), LogSumExp(0.2), tau_f=1.0, tau_h=0.1)
        v = torch.randn(B, Nf, generator=g)
        h = v @ xi.T

        def four():
            for _ in range(4):
                net.derivatives(v, h)

        small = Nf * Nh * B < 1e6
        t = interleave({"rk4": lambda: net.rk4_step(v, h, 0.01), "four": four},
                       rounds * (3 if small else 1), inner=50 if small else 1)
        rows.append({"case": f"RK4 step N_f={Nf} N_h={Nh} B={B}", "ours_s": t["rk4"]["min"], "bare_s": t["four"]["min"],
                     "ratio_vs_bare": t["rk4"]["min"] / t["four"]["min"], "ratio_paired_median": paired_ratio(t, "rk4", "four")})
    return rows


def case_streaming(rounds, quick=False):
    """A memory-mapped bank streamed in chunks: peak resident memory against the bank's size."""
    from ..streaming import StreamingMemory, write_bank

    N, K, B = (64, 200_000, 64) if quick else (64, 2_000_000, 256)
    with tempfile.TemporaryDirectory() as d:
        g = torch.Generator().manual_seed(6)
        blocks = (torch.randint(0, 2, (min(100_000, K - i), N), generator=g).float() * 2 - 1 for i in range(0, K, 100_000))
        bank = write_bank(os.path.join(d, "bank.safetensors"), blocks, n_memories=K, n_features=N, checksum=False)
        cue_idx = torch.arange(B) * (K // B)
        target = bank.rows(0, K)[cue_idx] if quick else torch.stack([bank.rows(int(i), int(i) + 1)[0] for i in cue_idx])
        cue = torch.where(torch.rand(B, N, generator=g) < 0.05, -target, target)
        sm = StreamingMemory(bank, beta=1.0)
        t0 = time.perf_counter()
        peak = {}
        r = None

        def go():
            nonlocal r
            r = sm.recall(cue, max_steps=3)

        peak["mib"] = peak_extra_mib(go)
        sec = time.perf_counter() - t0
        acc = float((torch.sign(r.state) == target).all(-1).float().mean())
        return [{"case": f"streaming memmap K={K} N={N} B={B}, {r.steps} steps", "ours_s": sec,
                 "peak_mib": peak["mib"], "bank_mib": bank.nbytes / 2 ** 20, "recall_exact_fraction": acc,
                 "gflops": 4 * B * K * N * r.steps / sec / 1e9}]


# ---------------------------------------------------------------------------------------------------
# table and command
# ---------------------------------------------------------------------------------------------------
def _fmt(v, kind):
    if v is None:
        return "-"
    if kind == "ms":
        return f"{v * 1e3:.3f}" if v < 0.01 else f"{v * 1e3:.1f}"
    if kind == "x":
        return f"{v:.2f}"
    if kind == "pct":
        return f"{100 * v:.0f}%"
    return f"{v:.1f}"


def print_table(rows, peak):
    print(f"peak matmul now (2048^2 float32): torch {peak['torch']:.0f} GFLOP/s, numpy {peak['numpy']:.0f} GFLOP/s")
    head = f"{'case':<50}{'ours ms':>10}{'bare ms':>10}{'ratio':>7}{'GFLOP/s':>9}{'of peak':>8}{'peak MiB':>9}{'plain ms':>10}{'speedup':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case'][:49]:<50}{_fmt(r.get('ours_s'), 'ms'):>10}{_fmt(r.get('bare_s'), 'ms'):>10}"
              f"{_fmt(r.get('ratio_vs_bare'), 'x'):>7}{_fmt(r.get('gflops'), 'f'):>9}{_fmt(r.get('fraction_of_peak'), 'pct'):>8}"
              f"{_fmt(r.get('peak_mib'), 'f'):>9}{_fmt(r.get('plain_s'), 'ms'):>10}{_fmt(r.get('speedup_vs_plain'), 'x'):>8}")
    extra = [r for r in rows if "recall_exact_fraction" in r or "identical_to_naive" in r]
    for r in extra:
        bits = []
        if "recall_exact_fraction" in r:
            bits.append(f"exact recall {r['recall_exact_fraction']:.1%}")
        if "max_abs_diff_vs_float32_step" in r:
            bits.append(f"max |step - float32 step| {r['max_abs_diff_vs_float32_step']:.2e}")
        if "identical_to_naive" in r:
            bits.append(f"identical to the naive sweep: {r['identical_to_naive']}")
        print(f"  {r['case']}: " + ", ".join(bits))
    paired = [r for r in rows if any(k.endswith("paired_median") for k in r)]
    if paired:
        print("medians of per-round ratios (ours against its reference timed in the same round):")
    for r in paired:
        bits = []
        if "fraction_of_peak_paired_median" in r:
            bits.append(f"of peak {r['fraction_of_peak_paired_median']:.0%} "
                        f"(model step {r['model_step_fraction_of_peak_paired_median']:.0%})")
        if "speedup_vs_plain_paired_median" in r:
            bits.append(f"speedup vs plain torch {r['speedup_vs_plain_paired_median']:.2f}x")
        if "ours_over_sdpa_paired_median" in r:
            bits.append("time ours / plain torch {:.2f}, / SDPA {:.2f}, / numpy {:.2f}, / ours without the compiled "
                        "kernel {:.2f}".format(r["ours_over_plain_paired_median"], r["ours_over_sdpa_paired_median"],
                                               r["ours_over_numpy_paired_median"],
                                               r["ours_over_without_compiled_paired_median"]))
        if "ratio_paired_median" in r:
            bits.append(f"ratio {r['ratio_paired_median']:.2f}")
        print(f"  {r['case']}: " + ", ".join(bits))


def write_json_atomic(path: str, payload) -> None:
    from .._io import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(payload, indent=1).encode())


def calibrate_shapes(shapes, rounds: int) -> int:
    """Calibrate the retrieval kernel for each shape (plain torch against the kernel's variants and
    chunk sizes; replaces the cached decision of its shape class) and print the decisions."""
    from .. import _kernels

    print(f"calibration cache: {_kernels.cache_path()}")
    print(f"paths available: {_kernels.available_paths(torch.float32)} (float32), "
          f"{_kernels.available_paths(torch.float64)} (float64)")
    for name, N, K, B in shapes:
        if B * K * 2 * N < 2 * _kernels.SMALL_WORK:
            print(f"  {name}: below the calibrated sizes (tiny problems run directly)")
            continue
        t0 = time.perf_counter()
        path, chunk, variant = _kernels.calibrate(B, N, K, rounds=rounds)
        took = time.perf_counter() - t0
        what = "plain torch" if path == "torch" else f"kernel, chunk {chunk}, {variant or 'Python loop'}"
        print(f"  {name}: {what} ({took:.1f} s)")
    return 0


def check_output_path(name: str, path: str) -> None:
    """Refuse, before anything is measured, an output path the results could not be written to: an
    empty name, an existing directory or non-regular file (a FIFO would block), a parent directory
    that is missing, not a directory or not writable."""
    if not str(path).strip():
        raise ValueError(f"{name}: got an empty path; expected a file to write the results to")
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise IsADirectoryError(f"{name}: {path!r} is a directory; expected a file to write the results to")
    if os.path.lexists(full) and not os.path.isfile(full):
        raise ValueError(f"{name}: {path!r} exists and is not a regular file; expected a file to write the results to")
    d = os.path.dirname(full)
    if not os.path.exists(d):
        raise FileNotFoundError(f"{name}: directory {d!r} does not exist")
    if not os.path.isdir(d):
        raise NotADirectoryError(f"{name}: {d!r} is not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: directory {d!r} is not writable")


def run(args) -> int:
    from .._validation import check_int

    rounds = check_int("--rounds", args.rounds, minimum=1)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad or not cases:
        raise ValueError(f"--cases: got {args.cases!r}; expected a comma-separated subset of {', '.join(CASES)}")
    if args.json is not None:
        check_output_path("--json", args.json)
    shapes = QUICK_SHAPES if args.quick else RETRIEVAL_SHAPES + SHARP_SHAPES
    if args.calibrate:
        return calibrate_shapes(shapes[:2] if args.quick else RETRIEVAL_SHAPES[:2], rounds)
    rows = []
    from tqdm import tqdm

    for c in tqdm(cases, desc="bench", unit="case"):
        if c == "retrieval":
            rows += case_retrieval(shapes, rounds, plain=not args.no_plain)
        elif c == "lowp":
            rows += case_lowp(shapes, rounds)
        elif c == "recall":
            rows += case_recall(rounds)
        elif c == "binary":
            rows += case_binary(rounds, args.quick)
        elif c == "rk4":
            rows += case_rk4(rounds, args.quick)
        elif c == "streaming":
            rows += case_streaming(rounds, args.quick)
    peak = peak_gflops(rounds)
    print_table(rows, peak)
    if args.json:
        write_json_atomic(args.json, {"machine": machine(), "peak_gflops_end": peak, "rounds": rounds, "rows": rows})
        print(f"wrote {args.json}")
    return 0
