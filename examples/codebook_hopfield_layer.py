"""Pattern completion from a learned codebook stored in ``assocmem.nn.HopfieldLayer``.

The cue is the top half of an MNIST digit (392 pixels); the memory holds K stored patterns (keys,
matched against the cue) and K values (whole 28x28 digits) and returns ``softmax(beta x Y^T) V``,
a key-value associative lookup (Ramsauer et al. 2020; one step of KH eq. 16 with separate values).
The codebook starts as K random training digits (a plain memory of examples) and is then trained
end to end, with a learned beta, to complete the missing bottom half. Reported: the test error on
the missing half for the mean digit, for the memory of K stored examples, and for the learned codebook.

Run:  .venv/bin/python examples/codebook_hopfield_layer.py        (about a minute on 2 CPU cores)
Writes out/codebook/results.json and out/codebook/codebook.png.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mil_mnist_hopfield_pooling import atomic_write, load_mnist  # noqa: E402

from assocmem.nn import HopfieldLayer  # noqa: E402

TOP = 14 * 28  # the cue: rows 0-13


def completion_error(memory, x) -> float:
    """Mean squared error on the hidden bottom half."""
    with torch.no_grad():
        return float((memory(x[:, :TOP])[:, TOP:] - x[:, TOP:]).square().mean())


def run(num_patterns=256, n_train=50000, n_test=10000, steps=1500, batch_size=256, lr=3e-3, beta=0.2, seed=0,
        progress=True, data=None):
    """Train the codebook; returns a dict of results (``data`` may pass already-loaded MNIST)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    (xtr, _), (xte, yte) = data if data is not None else load_mnist()
    xtr, xte = xtr[:n_train], xte[:n_test]
    memory = HopfieldLayer(TOP, num_patterns, beta=beta, separate_values=True, output_size=784, learn_beta=True)
    seed_idx = torch.randperm(len(xtr), generator=g)[:num_patterns]
    with torch.no_grad():  # start from a memory of K stored training examples
        memory.patterns.copy_(xtr[seed_idx, :TOP])
        memory.values.copy_(xtr[seed_idx])
    mean_digit = xtr.mean(0)
    err_mean = float((mean_digit[TOP:] - xte[:, TOP:]).square().mean())
    # the memory of stored examples at its best fixed beta, chosen on training digits (not the test set)
    held_out = xtr[torch.randperm(len(xtr), generator=g)[:2000]]
    best_beta, err_stored = None, float("inf")
    for b in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0):
        with torch.no_grad():
            memory.hopfield.log_beta.fill_(torch.log(torch.tensor(b)).item())
        e = completion_error(memory, held_out)
        if e < err_stored:
            best_beta, err_stored = b, e
    with torch.no_grad():
        memory.hopfield.log_beta.fill_(torch.log(torch.tensor(best_beta)).item())
    err_stored = completion_error(memory, xte)
    with torch.no_grad():
        memory.hopfield.log_beta.fill_(torch.log(torch.tensor(float(beta))).item())
    opt = torch.optim.Adam(memory.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    t_train = time.perf_counter()
    for _ in tqdm(range(steps), desc="codebook training", disable=not progress, leave=False):
        x = xtr[torch.randint(len(xtr), (batch_size,), generator=g)]
        opt.zero_grad()
        loss = (memory(x[:, :TOP]) - x).square().mean()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - t_train
    err_learned = completion_error(memory, xte)
    return {
        "test_mse_missing_half": {"mean_digit": err_mean, "stored_examples": err_stored, "learned_codebook": err_learned},
        "stored_examples_best_beta": best_beta,
        "learned_beta": float(memory.hopfield.beta.detach()[0]),
        "train_loss": losses,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t0,
        "config": {"num_patterns": num_patterns, "n_train": len(xtr), "n_test": len(xte), "steps": steps,
                   "batch_size": batch_size, "lr": lr, "beta_init": beta, "seed": seed, "threads": torch.get_num_threads()},
        "_memory": memory,
        "_test": xte,
    }


def figure(res) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memory, xte = res["_memory"], res["_test"]
    fig = plt.figure(figsize=(12, 8), layout="constrained")
    codes_f, comp_f, loss_f = fig.subfigures(3, 1, height_ratios=[2, 3, 2])
    codes = memory.values.detach()[:32].clamp(0, 1)
    for j, ax in enumerate(codes_f.subplots(2, 16).flatten()):
        ax.imshow(codes[j].reshape(28, 28).numpy(), cmap="gray_r")
        ax.axis("off")
    codes_f.suptitle("the first 32 learned values of the codebook", fontsize=9)
    with torch.no_grad():
        x = xte[:16]
        comp = memory(x[:, :TOP]).clamp(0, 1)
    grid = comp_f.subplots(3, 16)
    for j in range(16):
        cue = x[j].clone()
        cue[TOP:] = 0.5
        for row, img in enumerate((cue, torch.cat([x[j, :TOP], comp[j, TOP:]]), x[j])):
            grid[row, j].imshow(img.reshape(28, 28).numpy(), cmap="gray_r", vmin=0, vmax=1)
            grid[row, j].set_xticks([])
            grid[row, j].set_yticks([])
    for row, name in enumerate(("cue", "completed", "truth")):
        grid[row, 0].set_ylabel(name, fontsize=8)
    comp_f.suptitle("test digits: the top half is the cue, the memory fills in the bottom half", fontsize=9)
    ax, tx = loss_f.subplots(1, 2)
    ax.plot(res["train_loss"], lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE (whole digit)")
    tx.axis("off")
    e = res["test_mse_missing_half"]
    tx.text(0.0, 0.5, "test MSE on the missing half:\n" + "\n".join(f"  {k.replace('_', ' ')}: {v:.4f}" for k, v in e.items()),
            fontsize=10, family="monospace", va="center")
    fig.suptitle(f"HopfieldLayer with {res['config']['num_patterns']} learned stored patterns completes digits", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patterns", type=int, default=256)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("out/codebook"))
    a = p.parse_args(argv)
    if a.patterns < 1 or a.steps < 1:
        p.error("--patterns and --steps must be >= 1")
    if a.threads is not None:
        if a.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(a.threads)
    res = run(a.patterns, steps=a.steps, seed=a.seed)
    png = figure(res)
    res.pop("_memory")
    res.pop("_test")
    atomic_write(a.out / "results.json", json.dumps(res, indent=1).encode())
    atomic_write(a.out / "codebook.png", png)
    e = res["test_mse_missing_half"]
    print(f"test MSE on the missing half: mean digit {e['mean_digit']:.4f}, {a.patterns} stored examples "
          f"{e['stored_examples']:.4f}, learned codebook {e['learned_codebook']:.4f} (beta {res['learned_beta']:.3g}); "
          f"training {res['train_seconds']:.1f} s; wrote {a.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
