"""assocmem.capacity and ``assocmem capacity``: batched dynamics equal the models' own recall, the
search finds the capacity of a known criterion, the published capacities are reproduced, bad input."""
import json
import os

import numpy as np
import pytest
import torch

from assocmem import ClassicalHopfield, DenseAssociativeMemory
from assocmem import capacity as cap
from assocmem import theory as th
from assocmem.cli import main

from conftest import pm1


def _flip(x, frac, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(x.shape, generator=g) < frac, -x, x)


# ---- batched dynamics == the models' recall --------------------------------------------------------
def test_classical_async_recall_equals_model_recall():
    xi = pm1(40, 150, seed=1)
    cue = _flip(xi, 0.2, 2)
    m = ClassicalHopfield(xi)
    r = m.recall(cue, max_steps=6, generator=torch.Generator().manual_seed(5))
    T = m._t_int.unsqueeze(0)
    s, conv = cap.classical_async_recall(T, cue, torch.zeros(40, dtype=torch.long), 6, torch.Generator().manual_seed(5))
    assert torch.equal(s, r.state) and torch.equal(conv, r.converged)
    assert 0 < int(conv.sum()) < 40 or bool(conv.all())


def test_classical_async_recall_batches_trials_with_different_K():
    """Three trials with 10, 25 and 40 stored patterns in one call: each trial's rows end where that
    trial's own model takes them (the sweep orders are the k-th randperm of the same seed in both)."""
    N, Ks = 120, [10, 25, 40]
    xis = [pm1(k, N, seed=10 + j) for j, k in enumerate(Ks)]
    cues = [_flip(x[:8], 0.15, 20 + j) for j, x in enumerate(xis)]
    T = torch.stack([ClassicalHopfield(x)._t_int for x in xis])
    s, conv = cap.classical_async_recall(T, torch.cat(cues), torch.arange(3).repeat_interleave(8), 20,
                                         torch.Generator().manual_seed(3))
    for j, x in enumerate(xis):
        r = ClassicalHopfield(x).recall(cues[j], max_steps=20, generator=torch.Generator().manual_seed(3))
        assert torch.equal(s[8 * j:8 * j + 8], r.state)
        assert torch.equal(conv[8 * j:8 * j + 8], r.converged)


@pytest.mark.parametrize("F,n,beta", [("power", 3, 1.0), ("power", 4, 1.0), ("rectified_power", 3, 1.0), ("exp", 3, 0.5)])
def test_dense_async_recall_equals_model_recall_with_padding(F, n, beta):
    N, Ks = 40, [60, 150]
    xis = [pm1(k, N, seed=30 + j) for j, k in enumerate(Ks)]
    cues = [_flip(x[:12], 0.2, 40 + j) for j, x in enumerate(xis)]
    stacked = torch.zeros(2, max(Ks), N)
    for j, x in enumerate(xis):
        stacked[j, :len(x)] = x
    s, conv = cap.dense_async_recall(stacked, torch.tensor(Ks), torch.cat(cues), torch.arange(2).repeat_interleave(12), 4,
                                     torch.Generator().manual_seed(7), F=F, n=n, beta=beta)
    for j, x in enumerate(xis):
        r = DenseAssociativeMemory(x, F=F, n=n, beta=beta).recall(cues[j], max_steps=4, generator=torch.Generator().manual_seed(7))
        assert torch.equal(s[12 * j:12 * j + 12], r.state)
        assert torch.equal(conv[12 * j:12 * j + 12], r.converged)


def test_classical_stable_is_the_fixed_point_test():
    N = 100
    stored = pm1(20, N, seed=3)
    probes = torch.cat([stored, pm1(10, N, seed=4)])  # 20 stored + 10 foreign patterns
    m = ClassicalHopfield(stored)
    ref = (m.step(probes, generator=torch.Generator().manual_seed(0)) == probes).all(-1)
    got = cap.classical_stable(probes.unsqueeze(0), stored.unsqueeze(0), torch.tensor([20]))[0]
    assert torch.equal(got, ref)
    assert 0 < int(ref[:20].sum()) <= 20 and int(ref[20:].sum()) == 0
    # zero padding rows in the stored set change nothing
    padded = torch.cat([stored, torch.zeros(7, N)]).unsqueeze(0)
    assert torch.equal(cap.classical_stable(probes.unsqueeze(0), padded, torch.tensor([20]))[0], ref)


@pytest.mark.parametrize("model,kw", [("classical", {}), ("dense", {"n": 3}), ("dense", {"F": "exp", "beta": 0.5}),
                                      ("dense", {"F": "rectified_power", "n": 4}), ("modern", {"beta": 2.0}),
                                      ("spherical", {"n": 3})])
def test_lab_recall_is_the_models_recall(model, kw):
    """The lab's batched evaluation of two trials with different K gives, trial for trial, what the
    trial's own model recalls from the same cues with the same generator (the lab runs the models'
    sweep engine for all trials at once, or the models themselves)."""
    from assocmem.capacity.patterns import _mix
    from assocmem.models import by_name

    N = 32
    spec = cap.capacity_settings(model, "recall", flip=0.2, trials=2, probes=8, **kw)
    exp = cap._Experiment(spec, N)
    K = {"classical": [2, 6], "spherical": [6, 16]}.get(model, [60, 150])
    got = exp.evaluate([0, 1], K)
    pats, targets, ok = exp._targets([0, 1], K)
    cues = exp._cues([0, 1], targets)
    want = []
    for j, k in enumerate(K):
        m = by_name(model, pats[j, :k], **kw)
        st = m.recall(cues[j], max_steps=spec.max_steps, generator=torch.Generator().manual_seed(_mix(0, N, 1, 31))).state
        if model == "spherical":
            st = st * targets[j].norm(dim=-1, keepdim=True)
        want.append(((torch.where(st >= 0, 1.0, -1.0) == targets[j]).all(-1).double() * ok[j]).sum() / ok[j].sum())
    assert torch.equal(got, torch.stack(want))
    assert float(got.max()) > 0.0


# ---- patterns and cues -----------------------------------------------------------------------------
def test_random_patterns_kinds():
    g = torch.Generator().manual_seed(0)
    p = cap.random_patterns(400, 200, "pm1", generator=g)
    assert set(p.unique().tolist()) == {-1.0, 1.0} and abs(float(p.mean())) < 0.02
    b = cap.random_patterns(400, 200, "binary", coding_level=0.2, generator=g)
    assert set(b.unique().tolist()) == {0.0, 1.0} and abs(float(b.mean()) - 0.2) < 0.01
    z = cap.random_patterns(400, 200, "gaussian", generator=g, dtype=torch.float64)
    assert z.dtype == torch.float64 and abs(float(z.std()) - 1) < 0.01


def test_corrupt_flips_exact_count_and_occludes_the_end():
    p = cap.random_patterns(50, 100, "pm1", generator=torch.Generator().manual_seed(0))
    c = cap.corrupt(p, flip=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.equal((c != p).sum(-1), torch.full((50,), 10))
    b = (p + 1) / 2
    cb = cap.corrupt(b, flip=0.25, kind="binary", generator=torch.Generator().manual_seed(1))
    assert torch.equal((cb != b).sum(-1), torch.full((50,), 25)) and set(cb.unique().tolist()) <= {0.0, 1.0}
    o = cap.corrupt(p, occlude=0.3, blank=-1.0)
    assert torch.equal(o[:, :70], p[:, :70]) and bool((o[:, 70:] == -1).all())
    n = cap.corrupt(p, noise=0.5, generator=torch.Generator().manual_seed(2))
    assert abs(float((n - p).std()) - 0.5) < 0.02


# ---- the search --------------------------------------------------------------------------------------
class _StepExperiment:
    """A fake experiment whose criterion is 1 up to a known K* per trial and 0 above."""

    def __init__(self, kstar, k_max, **kw):
        self.spec = cap.capacity_settings("classical", "stability", trials=len(kstar), k_max=k_max, **kw)
        self.kstar, self.N, self.calls = kstar, 100, []

    def k_max(self):
        return self.spec.k_max

    def evaluate(self, trials, K):
        self.calls.append((list(trials), list(K)))
        return torch.tensor([1.0 if k <= self.kstar[t] else 0.0 for t, k in zip(trials, K)], dtype=torch.float64)


def test_search_finds_the_step_exactly_and_flags_censoring():
    e = _StepExperiment([1, 7, 64, 100, 333, 0], k_max=400, rel_tol=0.0)
    K, censored, evals = cap._search(e)
    assert K == [1, 7, 64, 100, 333, 0]
    assert censored == [False] * 6
    e = _StepExperiment([50, 1000], k_max=300, rel_tol=0.0)
    K, censored, _ = cap._search(e)
    assert K == [50, 300] and censored == [False, True]


def test_search_relative_tolerance_brackets():
    e = _StepExperiment([5000], k_max=10**5, rel_tol=0.05)
    (K,), _, evals = cap._search(e)
    assert 0.95 * 5000 <= K <= 5000
    assert len(evals) < 30


# ---- published capacities (fast ones; the long ones are in the slow tests and docs/capacity.md) --------
@pytest.mark.parametrize("N", [200, 400, 800])
def test_classical_stability_capacity_matches_mceliece(N):
    est = cap.measure_capacity("classical", N, "stability", trials=5)
    assert abs(est.K / th.most_fixed_points(N) - 1) <= 0.30
    assert est.K > th.mceliece(N)
    assert est.theory == pytest.approx(th.most_fixed_points(N))
    assert not any(est.censored) and len(est.K_trials) == 5


def test_dense_n3_recall_capacity_same_order_as_kh2016():
    est = cap.measure_capacity("dense", 40, "recall", n=3, flip=0.1, trials=2, probes=50)
    assert 1 / 3 < est.K / th.krotov_hopfield_2016(40, 3) < 3
    assert est.K > 3 * th.amit_gutfreund_sompolinsky(40)  # far beyond the classical network


def test_hidden_neurons_cap_the_capacity():
    """Dense AM n = 3 at N = 40 stores ~100 patterns; with N_h = 20 memory neurons only 20 are stored,
    so the recalled fraction is at most 20/K and the estimate is capped at N_h / threshold."""
    est = cap.measure_capacity("dense", 40, "recall", n=3, flip=0.1, trials=2, probes=50, n_hidden=20)
    assert 20 <= min(est.K_trials) and max(est.K_trials) <= 20 / 0.9
    assert est.theory == 20.0


def test_criterion_curve_shape_and_monotone_trend():
    c = cap.criterion_curve("classical", 300, [5, 20, 40, 80], "stability", trials=3)
    assert c.shape == (4, 3) and c.dtype == torch.float64
    m = c.mean(1)
    assert float(m[0]) == 1.0 and float(m[-1]) < 0.1 and bool((m[:-1] >= m[1:]).all())


def test_deterministic_given_seed():
    a = cap.measure_capacity("classical", 100, "recall", flip=0.1, trials=2, probes=30, seed=3)
    b = cap.measure_capacity("classical", 100, "recall", flip=0.1, trials=2, probes=30, seed=3)
    assert a.K_trials == b.K_trials and a.evaluations == b.evaluations


def test_modern_and_spherical_run_and_report_no_theory():
    m = cap.measure_capacity("modern", 10, "recall", flip=0.1, beta=2.0, trials=2, probes=10, k_max=64)
    assert m.theory is None and m.K > 10
    s = cap.measure_capacity("spherical", 12, "stability", F="rectified_power", n=3, trials=1, probes=10, k_max=16)
    assert s.K >= 1


def test_binary_patterns_with_coding_level_in_the_classical_model():
    """Biased patterns (coding level 0.2 mapped to +-1) overload the Hebbian rule much earlier."""
    unb = cap.measure_capacity("classical", 200, "stability", trials=3)
    biased = cap.measure_capacity("classical", 200, "stability", patterns="binary", coding_level=0.2, trials=3)
    assert biased.K < unb.K / 2


def test_fit_exponent():
    N = np.array([10, 20, 40, 80.0])
    slope, se = cap.fit_exponent(N, 3.0 * N ** 2.0)
    assert slope == pytest.approx(2.0) and se == pytest.approx(0.0, abs=1e-9)
    assert cap.fit_exponent([10], [5.0]) == (None, None)
    assert cap.fit_exponent([10, 20], [5.0, 0.0]) == (None, None)  # K = 0 is left out
    slope2, se2 = cap.fit_exponent([10, 20], [5.0, 20.0])
    assert slope2 == pytest.approx(2.0) and se2 is None


def test_scan_report_and_files(tmp_path):
    rep = cap.capacity_scan("classical", [100, 200], "stability", trials=2)
    d = rep.to_dict()
    assert d["model"] == "classical" and d["criterion"] == "stability" and len(d["results"]) == 2
    assert set(d["results"][0]) >= {"N", "K", "K_std", "theory"}
    assert d["exponent"] == pytest.approx(cap.fit_exponent([100, 200], [r.K for r in rep.results])[0])
    paths = cap.write_report(rep, tmp_path / "out")
    assert json.loads(open(paths["json"]).read())["results"][1]["N"] == 200
    assert open(paths["csv"]).read().splitlines()[0].startswith("N,K,K_std,theory")
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp")]


# ---- the biological models through their adapters ------------------------------------------------------
def test_threshold_stability_equals_bio_is_stable():
    bio = pytest.importorskip("assocmem.bio")
    spec = cap.capacity_settings("threshold", "stability", trials=2, probes=64)
    exp = cap._Experiment(spec, 60)
    vals = exp.evaluate([0, 1], [5, 9])  # all 32 states of trial 0; 64 random states of trial 1
    for j, (t, k) in enumerate(zip([0, 1], [5, 9])):
        tm = bio.ThresholdMemory(exp.banks[t].get(k).float(), theta=0.5)
        states = exp._hidden_states(t, k)
        assert float(vals[j]) == pytest.approx(float(tm.is_stable(states).double().mean()))
    assert exp._hidden_states(0, 5).shape == (32, 5)


def test_threshold_capacity_beats_its_bound():
    est = cap.measure_capacity("threshold", 200, "stability", trials=3)
    bits = th.threshold_capacity_bits(200, 0.99)
    assert est.extra["N_h"] >= bits and est.theory == 2.0 ** bits
    assert est.K == pytest.approx(2.0 ** est.extra["N_h"])


def test_threshold_recall_through_bio():
    pytest.importorskip("assocmem.bio")
    c = cap.criterion_curve("threshold", 120, [3], "recall", noise=0.3, trials=1, probes=4)
    assert c.shape == (1, 1) and float(c[0, 0]) == 1.0


def test_dendritic_recall_through_bio():
    pytest.importorskip("assocmem.bio")
    c = cap.criterion_curve("dendritic-ei", 30, [10], "recall", flip=0.1, trials=1, probes=4)
    assert float(c[0, 0]) == 1.0


# ---- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda: cap.measure_capacity("hopfield", 100),
    lambda: cap.measure_capacity("classical", 100, "speed"),
    lambda: cap.measure_capacity("classical", 0),
    lambda: cap.measure_capacity("classical", -10),
    lambda: cap.measure_capacity("classical", 100, "recall", flip=1.5),
    lambda: cap.measure_capacity("classical", 100, "recall", flip=-0.1),
    lambda: cap.measure_capacity("classical", 100, k_max=0),
    lambda: cap.measure_capacity("classical", 100, trials=0),
    lambda: cap.measure_capacity("classical", 100, "stability", flip=0.1),
    lambda: cap.measure_capacity("classical", 100, patterns="gaussian"),
    lambda: cap.measure_capacity("threshold", 100, "recall", flip=0.1),
    lambda: cap.measure_capacity("dense", 100, "recall", noise=0.3),
    lambda: cap.criterion_curve("classical", 100, [10, 0]),
    lambda: cap.capacity_scan("classical", [100, 0]),
    lambda: cap.corrupt(torch.ones(2, 4), flip=2.0),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


# ---- CLI ---------------------------------------------------------------------------------------------------
def test_cli_json_is_one_object_and_files_written(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["capacity", "--model", "classical", "--N", "100,200", "--trials", "2", "--out", str(out), "--json"])
    assert rc == 0
    text = capsys.readouterr().out
    obj = json.loads(text)  # exactly one JSON object on stdout
    assert text.strip().count("\n") == 0
    assert obj["model"] == "classical" and obj["criterion"] == "stability"
    assert [r["N"] for r in obj["results"]] == [100, 200]
    assert all({"N", "K", "K_std", "theory"} <= set(r) for r in obj["results"])
    assert isinstance(obj["exponent"], float) and isinstance(obj["settings"], dict)
    assert sorted(os.listdir(out)) == ["capacity.csv", "capacity.json", "capacity.png"]


def test_cli_table_and_single_N_exponent_null(tmp_path, capsys):
    rc = main(["capacity", "--model", "dense", "--n", "3", "--N", "30", "--criterion", "recall", "--flip", "0.1",
               "--trials", "1", "--cues", "30", "--out", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "KH2016" not in text and "fitted exponent" in text and "n/a" in text
    assert json.loads((tmp_path / "capacity.json").read_text())["exponent"] is None


@pytest.mark.parametrize("argv", [
    ["--model", "hopfield"],
    ["--model", "classical", "--criterion", "speed"],
    ["--model", "classical", "--N", "0"],
    ["--model", "classical", "--N", "100,-5"],
    ["--model", "classical", "--N", "abc"],
    ["--model", "classical", "--criterion", "recall", "--flip", "1.5"],
    ["--model", "classical", "--k-max", "0"],
    ["--model", "classical", "--trials", "0"],
])
def test_cli_bad_input_exit_2_one_line_no_files(tmp_path, capsys, argv):
    out = tmp_path / "never"
    rc = main(["capacity", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("assocmem capacity: error:") and "Traceback" not in err
    assert not out.exists()


# ---- long acceptance experiments (run with -m slow; numbers in docs/capacity.md) ------------------------------
@pytest.mark.slow
def test_classical_overlap_capacity_at_N_1000_is_0138_N():
    est = cap.measure_capacity("classical", 1000, "overlap", trials=5)
    assert 0.12 * 1000 <= est.K <= 0.16 * 1000


@pytest.mark.slow
@pytest.mark.parametrize("n,Ns", [(3, [25, 50, 100, 200]), (4, [30, 50, 80, 120])])
def test_dense_power_exponent_is_n_minus_1(n, Ns):
    rep = cap.capacity_scan("dense", Ns, "recall", n=n, flip=0.1, trials=3)
    assert abs(rep.exponent - (n - 1)) <= 0.35
    for r in rep.results:
        assert 0.1 < r.K / th.krotov_hopfield_2016(r.N, n) < 10
