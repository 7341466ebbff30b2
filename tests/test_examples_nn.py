"""Shortened runs of the two layer examples (examples/mil_mnist_hopfield_pooling.py,
examples/codebook_hopfield_layer.py): the training must work, not only run. The full runs and their
numbers are in docs/layers.md."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mil():
    return load("mil_mnist_hopfield_pooling")


@pytest.fixture(scope="module")
def mnist(mil):
    return mil.load_mnist()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is fastest and robust on a busy machine
    yield
    torch.set_num_threads(n)


def test_mnist_file_reads_as_documented(mnist):
    (xtr, ytr), (xte, yte) = mnist
    assert xtr.shape == (50000, 784) and xte.shape == (10000, 784)
    assert float(xtr.min()) >= 0 and float(xtr.max()) <= 1
    assert set(ytr.unique().tolist()) == set(range(10))


def test_bags_are_balanced_and_labelled_by_the_target_digit(mil, mnist):
    (x, y), _ = mnist
    X, pad, lab, inst = mil.make_bags(x[:5000], y[:5000], 200, 9, torch.Generator().manual_seed(0))
    assert float(lab.mean()) == 0.5
    assert torch.equal(inst.any(-1).float(), lab)  # positive exactly when a 9 is in the bag
    assert not bool(inst[pad].any()) and bool((X[pad] == 0).all())
    sizes = (~pad).sum(-1)
    assert int(sizes.min()) >= 6 and int(sizes.max()) <= 14


def test_mil_short_run_learns(mil, mnist):
    res = mil.run(n_train_bags=600, n_test_bags=300, epochs=3, progress=False, data=mnist)
    assert res["train_loss_last_epoch_mean"] < 0.8 * res["train_loss_first_epoch_mean"]
    assert res["test_accuracy"] >= 0.75  # chance is 0.5 (balanced bags); the full run reaches > 0.95
    # the learned state pattern attends to the target digits more than their share of the instances
    assert res["pooling_weight_on_target_digits"] > 1.5 * res["target_fraction_of_instances"]


def test_codebook_short_run_learns(mnist, tmp_path):
    cb = load("codebook_hopfield_layer")
    res = cb.run(num_patterns=64, n_train=5000, n_test=1000, steps=150, progress=False, data=mnist)
    e = res["test_mse_missing_half"]
    assert e["learned_codebook"] < 0.9 * e["stored_examples"]
    assert e["learned_codebook"] < 0.9 * e["mean_digit"]
    assert sum(res["train_loss"][-20:]) < 0.85 * sum(res["train_loss"][:20])
    # the outputs the example writes: a PNG and JSON
    png = cb.figure(res)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    res.pop("_memory"), res.pop("_test")
    cb.atomic_write(tmp_path / "r.json", json.dumps(res).encode())
    assert json.loads((tmp_path / "r.json").read_text())["config"]["num_patterns"] == 64
