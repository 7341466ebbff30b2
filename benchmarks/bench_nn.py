"""Speed of ``assocmem.nn.Hopfield`` against plain PyTorch attention on the same shapes.

Two pairings, each forward (eval, no grad) and forward+backward (train):
  * no projections: ``Hopfield(E, num_heads=H, projections=False)`` vs split heads +
    ``F.scaled_dot_product_attention`` + merge heads (what one writes by hand);
  * projections: ``Hopfield.from_multihead_attention(mha)`` vs the ``nn.MultiheadAttention`` it copies
    (self-attention, batch_first; in eval without grad MHA takes its fused native fast path).
Each also with a boolean key padding mask. And ``assocmem.nn.compat.Hopfield`` (hopfield-layers'
defaults: three LayerNorms, stacked projections) against the same forward written in plain torch
(``F.layer_norm``, ``F.linear``, ``F.scaled_dot_product_attention``) with its own parameters, and against
hopfield-layers' ``Hopfield`` with the same weights when ``import hflayers`` works (one step and
``update_steps_max=3``). Timings are interleaved medians; the printed number is the ratio ours /
reference (1.00 = same speed). Results go to JSON and a PNG.

Run:  .venv/bin/python benchmarks/bench_nn.py [--quick] [--compat-only] [--threads N] [--out out/bench_nn]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from assocmem.nn import Hopfield
from assocmem.nn import compat

SHAPES = {  # name: (batch, set size L = S, embedding E, heads H)
    "tiny": (1, 8, 32, 2),
    "small": (8, 32, 64, 4),
    "medium": (16, 128, 128, 4),
    "large": (16, 512, 256, 8),
}


def plain_sdpa(H):
    def f(x, mask):
        B, L, E = x.shape
        h = x.view(B, L, H, E // H).transpose(1, 2)
        keep = None if mask is None else ~mask[:, None, None, :]
        o = F.scaled_dot_product_attention(h, h, h, attn_mask=keep)
        return o.transpose(1, 2).reshape(B, L, E)
    return f


def timeit(fn, min_time: float) -> float:
    """Seconds per call: calls batched until one batch takes >= min_time."""
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt >= min_time:
            return dt / n
        n = max(n * 2, int(n * min_time / max(dt, 1e-9)) + 1)


def compare(ours, ref, x, mask, mode, repeats, min_time):
    def fwd(f):
        def run():
            with torch.no_grad():
                f(x, mask)
        return run

    xg = x.detach().clone().requires_grad_()  # gradients to the input as well as the parameters

    def fwdbwd(f, params):
        def run():
            for p in params:
                p.grad = None
            xg.grad = None
            f(xg, mask).sum().backward()
        return run

    if mode == "forward":
        a, b = fwd(ours[0]), fwd(ref[0])
    else:
        a, b = fwdbwd(*ours), fwdbwd(*ref)
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):  # interleaved, so that load changes hit both alike
        ta.append(timeit(a, min_time))
        tb.append(timeit(b, min_time))
    return statistics.median(ta), statistics.median(tb)


def cases(shape, seed=0):
    B, L, E, H = shape
    torch.manual_seed(seed)
    x = torch.randn(B, L, E)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, L - L // 4:] = True  # last quarter of every set is padding
    hop_np = Hopfield(E, num_heads=H, projections=False)
    mha = nn.MultiheadAttention(E, H, batch_first=True)
    hop = Hopfield.from_multihead_attention(mha)
    sd = plain_sdpa(H)
    for m in (hop_np, mha, hop):
        m.eval()
    out = []
    for masked in (False, True):
        mk = mask if masked else None
        out.append(("no projections" + (", padding mask" if masked else ""), x, mk,
                    (lambda x, m: hop_np(x, key_padding_mask=m), []),
                    (sd, [])))
        out.append(("projections vs MultiheadAttention" + (", padding mask" if masked else ""), x, mk,
                    (lambda x, m: hop(x, key_padding_mask=m), list(hop.parameters())),
                    (lambda x, m: mha(x, x, x, key_padding_mask=m, need_weights=False)[0], list(mha.parameters()))))
    return out, (hop, mha)


def plain_hflayers_default(comp, H):
    """compat.Hopfield's default forward (self-association) in plain torch, with its parameters."""
    core = comp.association_core
    lns = (comp.norm_state_pattern, comp.norm_stored_pattern, comp.norm_pattern_projection)
    wq, wk, wv = core.in_proj_weight.chunk(3)
    bq, bk, bv = core.in_proj_bias.chunk(3)

    def f(x, mask):
        B, L, E = x.shape
        q, k, v = (F.layer_norm(x, (E,), n.weight, n.bias, n.eps) for n in lns)
        q, k, v = (F.linear(t, w, b).view(B, L, H, E // H).transpose(1, 2) for t, w, b in ((q, wq, bq), (k, wk, bk), (v, wv, bv)))
        keep = None if mask is None else ~mask[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return core.out_proj(o.transpose(1, 2).reshape(B, L, E))
    return f


def compat_cases(shape, seed=0):
    """compat.Hopfield against plain torch, and against hflayers when importable."""
    B, L, E, H = shape
    torch.manual_seed(seed)
    x = torch.randn(B, L, E)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, L - L // 4:] = True
    comp = compat.Hopfield(input_size=E, num_heads=H).eval()
    params = list(comp.parameters())
    out = [("compat (hflayers defaults) vs plain torch, padding mask", x, mask,
            (lambda x, m: comp(x, stored_pattern_padding_mask=m), params), (plain_hflayers_default(comp, H), params))]
    try:
        import hflayers
    except ImportError:
        return out
    hf = hflayers.Hopfield(input_size=E, num_heads=H).eval()
    hf.load_state_dict(comp.state_dict())
    comp3 = compat.Hopfield(input_size=E, num_heads=H, update_steps_max=3).eval()
    hf3 = hflayers.Hopfield(input_size=E, num_heads=H, update_steps_max=3).eval()
    comp3.load_state_dict(comp.state_dict())
    hf3.load_state_dict(comp.state_dict())
    out.append(("compat vs hflayers, padding mask", x, mask, (lambda x, m: comp(x, stored_pattern_padding_mask=m), params),
                (lambda x, m: hf(x, stored_pattern_padding_mask=m), list(hf.parameters()))))
    out.append(("compat vs hflayers, 3 updates, padding mask", x, mask,
                (lambda x, m: comp3(x, stored_pattern_padding_mask=m), list(comp3.parameters())),
                (lambda x, m: hf3(x, stored_pattern_padding_mask=m), list(hf3.parameters()))))
    return out


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over ``path`` (assocmem's bank writer)."""
    from assocmem._io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def figure(rows) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, mode in zip(axes, ("forward", "forward+backward")):
        sub = [r for r in rows if r["mode"] == mode]
        labels = [f"{r['shape']}: {r['case']}" for r in sub]
        ax.barh(range(len(sub)), [r["ratio"] for r in sub],
                color=["C0" if "no proj" in r["case"] else "C2" if "compat" in r["case"] else "C1" for r in sub])
        ax.axvline(1.0, c="k", lw=0.8)
        ax.set_yticks(range(len(sub)), labels, fontsize=7)
        ax.set_xlabel("time ratio: assocmem / reference (plain torch, MHA or hflayers)")
        ax.set_title(mode)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, no 'large' shape")
    p.add_argument("--compat-only", action="store_true", help="only the assocmem.nn.compat rows")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("out/bench_nn"))
    a = p.parse_args(argv)
    if a.threads is not None:
        if a.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(a.threads)
    repeats = a.repeats or (3 if a.quick else 7)
    if repeats < 1:
        p.error("--repeats must be >= 1")
    min_time = 0.05 if a.quick else 0.2
    shapes = {k: v for k, v in SHAPES.items() if not (a.quick and k == "large")}
    rows = []
    jobs = []
    for name, shape in shapes.items():
        cs = [] if a.compat_only else cases(shape)[0]
        for c in cs + compat_cases(shape):
            for mode in ("forward", "forward+backward"):
                jobs.append((name, shape, c, mode))
    for name, shape, (case, x, mk, ours, ref), mode in tqdm(jobs, desc="bench_nn", leave=False):
        t_ours, t_ref = compare(ours, ref, x, mk, mode, repeats, min_time)
        rows.append({"shape": name, "B_L_E_H": list(shape), "case": case, "mode": mode,
                     "ours_us": t_ours * 1e6, "plain_us": t_ref * 1e6, "ratio": t_ours / t_ref})
    print(f"{'shape':7s} {'(B, L, E, H)':16s} {'mode':17s} {'case':55s} {'ours us':>10s} {'ref us':>10s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['shape']:7s} {str(tuple(r['B_L_E_H'])):16s} {r['mode']:17s} {r['case']:55s} "
              f"{r['ours_us']:10.1f} {r['plain_us']:10.1f} {r['ratio']:6.2f}")
    ratios = [r["ratio"] for r in rows]
    print(f"ratio ours/reference: median {statistics.median(ratios):.2f}, max {max(ratios):.2f} over {len(rows)} measurements")
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "repeats": repeats, "min_time_s": min_time,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    atomic_write(a.out / "bench_nn.json", json.dumps({"meta": meta, "rows": rows}, indent=1).encode())
    atomic_write(a.out / "bench_nn.png", figure(rows))
    print(f"wrote {a.out}/bench_nn.json and bench_nn.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
