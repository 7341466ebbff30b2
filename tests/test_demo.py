"""`assocmem demo`: small versions of the MNIST demo and of the kanji / colours / repertoire examples,
the scoring helpers checked against independent references, and the report folder they write."""
import json

import pytest
import torch

from assocmem.cli import main
from assocmem.demos import _common, colors, kanji, mnist, repertoire

REQUIRED = {"model", "corruption", "n_memories", "exact_recall", "pixel_error", "steps", "seconds"}
EXAMPLE_KEYS = REQUIRED - {"pixel_error"}  # colours and embeddings have no pixels


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.one_thread)


# -- helpers ---------------------------------------------------------------------------------------
def test_corruptions_have_the_stated_sizes():
    g = torch.Generator().manual_seed(0)
    t = torch.ones(400, 784)
    flips, known = _common.corrupt(t, "flip 20%", (28, 28), g)
    assert known.all() and abs(float(flips.float().mean()) - 0.2) < 0.01
    flips, known = _common.corrupt(t, "occlude bottom half", (28, 28), g)
    k = known.view(400, 28, 28)
    assert not flips.any() and k[:, :14].all() and not k[:, 14:].any()
    flips, known = _common.corrupt(t, "erase 30%", (28, 28), g)
    assert not flips.any() and abs(float((~known).float().mean()) - 0.3) < 0.01


def test_score_and_steps_from_energy():
    target = torch.tensor([[1.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    state = torch.tensor([[0.3, -2.0, 5.0, 1e-3], [1.0, 0.0, -1.0, 1.0]])
    exact, err = _common.score(state, target)
    assert exact.tolist() == [True, False]
    assert err.tolist() == [0.0, 0.5]  # a zero has no sign: wrong
    # cue 0 changes at steps 1 and 2 then is frozen; cue 1 never changes; cue 2 changes until the end
    e = torch.tensor([[5.0, 3.0, 9.0], [4.0, 3.0, 8.0], [2.0, 3.0, 7.0], [2.0, 3.0, 6.0]])
    assert _common.steps_from_energy(e, steps=3).tolist() == [3, 1, 3]
    padded = _common.pad_traces([e[:2, :1], e[:, 1:]])
    assert padded[:, 0].tolist() == [5.0, 4.0, 4.0, 4.0] and padded.shape == (4, 3)


@pytest.fixture(scope="module")
def digits():
    from assocmem.data import load_mnist

    return load_mnist("train", n=300, binarize=True)


def _cues(xi, kind, B=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    target = xi[torch.randperm(xi.shape[0], generator=g)[:B]]
    flips, known = _common.corrupt(target, kind, (28, 28), g)
    return target, flips, known


def test_modern_recall_equals_the_nearest_stored_digit(digits):
    """Independent reference: with beta = 0.5 on +-1 pixels the modern network goes to the stored
    digit of largest overlap with the cue, so the measured exact recall must match that count."""
    xi, _ = digits
    cfg = mnist.MnistDemoConfig(n_memories=300)
    model = mnist._models(xi, cfg)["modern"]()
    for kind in ("flip 20%", "occlude bottom half"):
        target, flips, known = _cues(xi, kind, B=40)
        res = mnist._recall_cell("modern", model, target, flips, known, cfg, torch.Generator().manual_seed(0), 16)
        cue = torch.where(known, torch.where(flips, -target, target), torch.zeros_like(target))
        nearest = xi[(cue @ xi.T).argmax(-1)]
        reference = (nearest == target).all(-1)
        assert torch.equal(res["exact"], reference)
        assert float(reference.float().mean()) > 0.8


@pytest.mark.parametrize("name", mnist.MODELS)
def test_energy_never_increases_during_recall(digits, name):
    xi, _ = digits
    cfg = mnist.MnistDemoConfig(n_memories=300)
    model = mnist._models(xi, cfg)[name]()
    for kind in ("flip 20%", "erase 30%"):
        target, flips, known = _cues(xi, kind, B=3)
        res = mnist._recall_cell(name, model, target, flips, known, cfg, torch.Generator().manual_seed(0), 8)
        e = res["energy"]
        rise = (e[1:] - e[:-1]) / e[:-1].abs().clamp_min(1.0)
        assert float(rise.max()) <= (1e-3 if name == "two-layer" else 1e-6), name
        assert float(e[-1].mean()) < float(e[0].mean())


# -- the MNIST demo, small ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("demo") / "report"
    cues = {m: 8 for m in mnist.MODELS}
    cues["two-layer"] = 4
    cfg = mnist.MnistDemoConfig(n_memories=300, cues=cues)
    records, index = mnist.run(out, cfg=cfg, progress=False, data=digits)
    return out, records, index


def test_small_demo_records(small_run):
    out, records, index = small_run
    assert [(r["model"], r["corruption"]) for r in records] == [(m, c) for m in mnist.MODELS for c in _common.CORRUPTIONS]
    for r in records:
        assert REQUIRED <= set(r) and r["n_memories"] == 300
        assert 0.0 <= r["exact_recall"] <= 1.0 and 0.0 <= r["pixel_error"] <= 1.0 and r["seconds"] >= 0
    by = {(r["model"], r["corruption"]): r for r in records}
    for c in _common.CORRUPTIONS:
        assert by[("modern", c)]["exact_recall"] >= 0.75
        assert by[("two-layer", c)]["exact_recall"] >= 0.75
    # 300 correlated digits are far above the classical capacity: it recalls none from flipped cues
    assert by[("classical", "flip 20%")]["exact_recall"] == 0.0
    assert by[("classical", "flip 20%")]["pixel_error"] > 10 * by[("modern", "flip 20%")]["pixel_error"]


def test_small_demo_report_files(small_run):
    out, records, index = small_run
    assert index == out / "index.html"
    page = index.read_text()
    assert '<table id="results">' in page and page.count("<tr>") == len(records) + 1
    for m in mnist.MODELS:
        assert f"<td>{m}</td>" in page and (out / f"recall_{m}.png").is_file()
    assert page.count('src="data:image/png;base64,') == 8  # bar chart, 6 grids, energy curves
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(records))
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert REQUIRED <= set(header)
    assert not list(out.parent.glob(".tmp-*")) and not list(out.parent.glob(".old-*"))


def test_demo_command_prints_the_table(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["demo", "--memories", "80", "--cues", "3", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "exact recall" in text and "two-layer" in text and f"Report: {out / 'index.html'}" in text
    first = json.loads((out / "results.json").read_text())
    assert len(first) == 18 and all(r["n_memories"] == 80 and r["cues"] == 3 for r in first)
    # a second run replaces the earlier report as a whole
    assert main(["demo", "--memories", "60", "--cues", "2", "--out", str(out), "--no-progress", "--seed", "1"]) == 0
    second = json.loads((out / "results.json").read_text())
    assert all(r["n_memories"] == 60 for r in second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_demo_refuses_an_out_that_is_not_a_report(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert main(["demo", "--memories", "50", "--cues", "2", "--out", str(f), "--no-progress"]) == 2
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.md").write_text("keep me too")
    assert main(["demo", "--memories", "50", "--cues", "2", "--out", str(d), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("assocmem demo: error: --out") for line in err)
    assert f.read_text() == "keep me" and [p.name for p in d.iterdir()] == ["notes.md"]
    assert main(["demo", "--memories", "1", "--no-progress", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


# -- the other examples, small -------------------------------------------------------------------------
def test_kanji_example_small(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSOCMEM_CACHE", str(tmp_path / "cache"))
    records, index = kanji.run(tmp_path / "k", n_memories=300, cues=6, progress=False)
    assert len(records) == len(kanji.MODELS) * len(kanji.CORRUPTIONS)
    by = {(r["model"], r["corruption"]): r for r in records}
    assert all(REQUIRED <= set(r) and r["n_memories"] == 300 and r["cues"] == 6 for r in records)
    assert by[("modern", "occlude bottom half")]["exact_recall"] >= 0.8
    assert by[("modern", "first 2/3 of strokes")]["exact_recall"] >= 0.5
    assert '<table id="results">' in index.read_text()


def test_colors_example_recalls_the_nearest_stored_colour(tmp_path):
    records, index = colors.run(tmp_path / "c", n_memories=2000, cues=100, progress=False)
    assert [r["corruption"] for r in records] == [f"noise sigma = {s}" for s in colors.NOISE]
    for r in records:
        assert EXAMPLE_KEYS <= set(r) and r["n_features"] == 3
        assert r["nearest_recall"] >= 0.95  # checked against brute-force nearest-neighbour search
    assert records[0]["exact_recall"] >= 0.95 and records[-1]["exact_recall"] < records[0]["exact_recall"]
    assert (index.parent / "swatches.png").is_file()


def test_repertoire_example_recalls_from_noise(tmp_path):
    records, index = repertoire.run(tmp_path / "r", n_memories=2000, cues=50, progress=False)
    assert [r["n_features"] for r in records] == [32] * len(repertoire.NOISE)
    assert records[0]["exact_recall"] == 1.0 and records[0]["cosine"] > 0.999
    assert records[-1]["exact_recall"] <= records[0]["exact_recall"]
    assert all(r["us_per_cue"] > 0 for r in records)


def test_demo_command_runs_an_example(tmp_path, capsys):
    out = tmp_path / "col"
    assert main(["demo", "--example", "colors", "--memories", "300", "--cues", "20", "--out", str(out), "--no-progress"]) == 0
    assert "nearest stored recalled" in capsys.readouterr().out
    assert (out / "index.html").is_file() and (out / "results.csv").is_file()
