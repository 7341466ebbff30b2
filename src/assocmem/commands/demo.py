"""``assocmem demo``: the main job. Stores random +-1 patterns far above the classical capacity
in every effective model and recalls them from corrupted cues (KH section 3)."""
from __future__ import annotations

import time

import torch
from tqdm import tqdm


def register(sub):
    p = sub.add_parser("demo", help="store patterns in every model and recall them from corrupted cues")
    p.add_argument("--n-features", type=int, default=200, help="N, feature neurons (default 200)")
    p.add_argument("--n-memories", type=int, default=400, help="K, stored patterns (default 400 = 2 N)")
    p.add_argument("--flip", type=float, default=0.15, help="fraction of cue bits flipped (default 0.15)")
    p.add_argument("--cues", type=int, default=100, help="number of cues (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from .. import ClassicalHopfield, DenseAssociativeMemory, ModernHopfield, SphericalMemory
    from .._validation import check_in_range, check_int

    N = check_int("--n-features", args.n_features, minimum=2)
    K = check_int("--n-memories", args.n_memories, minimum=1)
    B = check_int("--cues", args.cues, minimum=1)
    flip = check_in_range("--flip", args.flip, 0.0, 1.0)
    g = torch.Generator().manual_seed(args.seed)
    xi = torch.randint(0, 2, (K, N), generator=g).float() * 2 - 1
    idx = torch.randint(0, K, (B,), generator=g)
    target = xi[idx]
    flips = torch.rand(B, N, generator=g) < flip
    cue = torch.where(flips, -target, target)
    models = {
        "classical": ClassicalHopfield(xi),
        "dense power n=3": DenseAssociativeMemory(xi, F="power", n=3),
        "dense exp": DenseAssociativeMemory(xi, F="exp", beta=0.2),
        "modern beta=0.2": ModernHopfield(xi, beta=0.2),
        "spherical n=3": SphericalMemory(xi, F="power", n=3),
    }
    print(f"{K} random +-1 patterns of N = {N} (K/N = {K / N:.2f}; classical limit 0.138 N = {0.138 * N:.0f}), "
          f"{B} cues with {flip:.0%} of bits flipped")
    rows = []
    for name, m in tqdm(models.items(), desc="recall", unit="model"):
        t0 = time.perf_counter()
        r = m.recall(cue, max_steps=50, generator=g)
        sec = time.perf_counter() - t0
        exact = (torch.sign(r.state) == target).all(-1).float().mean().item()
        err = (torch.sign(r.state) != target).float().mean().item()
        rows.append((name, exact, err, r.steps, sec))
    print(f"{'model':<18}{'exact recall':>14}{'bit error':>11}{'steps':>7}{'seconds':>9}")
    for name, exact, err, steps, sec in rows:
        print(f"{name:<18}{exact:>14.1%}{err:>11.4f}{steps:>7d}{sec:>9.2f}")
    return 0
