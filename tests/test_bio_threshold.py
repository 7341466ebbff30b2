"""ThresholdMemory (Kafraj, Krotov & Latham 2026; MODELS.md section 5): the change of variables to
KH eq. (1), stability of all 2^N_h hidden states, the paper's bound, the basin of attraction against
a Gaussian prediction, energy descent, learning, and bad input."""
import math

import assocmem

import pytest
import torch
from torch.distributions import Normal

from assocmem import TwoLayerNetwork
from assocmem.bio import ThresholdMemory, stability_bound
from assocmem.lagrangians import Heaviside, Quadratic


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.one_thread)


def _tm(n_visible, n_hidden, seed, **kw):
    return ThresholdMemory.random(n_visible, n_hidden, generator=torch.Generator().manual_seed(seed), **kw)


def test_equations_are_kh_eq1_after_v_equals_c_u():
    """The network integrated (xi/sqrt(N_v), quadratic L_v, Heaviside L_h) reproduces the section-5
    equations written directly, with v = sqrt(N_v/N_h) u."""
    tm = _tm(50, 7, 0, theta=0.3, tau_v=20.0, tau_h=1.0)
    tm.xi = tm.xi.double()
    g = torch.Generator().manual_seed(1)
    v = torch.randn(5, 50, generator=g, dtype=torch.float64) * 3
    h = torch.rand(5, 7, generator=g, dtype=torch.float64) * 2 - 0.5
    h = torch.where((h - 0.3).abs() < 1e-3, h + 0.01, h)
    net = tm.network
    assert isinstance(net, TwoLayerNetwork)
    assert isinstance(net.lagrangian_v, Quadratic) and isinstance(net.lagrangian_h, Heaviside)
    c = tm.scale
    assert c == pytest.approx(math.sqrt(50 / 7))
    du, dh_net = net.derivatives(v / c, h)
    dv, dh = tm.derivatives(v, h)
    torch.testing.assert_close(du * c, dv, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dh_net, dh, rtol=1e-12, atol=1e-12)
    # the synapses are symmetric and the fixed-point coupling is J = xi xi^T / N_v
    torch.testing.assert_close(net.xi @ net.xi.T, tm.J)


@pytest.mark.parametrize("n_hidden", range(4, 13))
def test_every_binary_hidden_state_is_stable_when_nv_is_100_nh(n_hidden):
    tm = _tm(100 * n_hidden, n_hidden, seed=n_hidden)
    assert tm.stable_fraction() == 1.0
    states = tm.all_states()
    assert states.shape == (2**n_hidden, n_hidden) and len(set(map(tuple, states.tolist()))) == 2**n_hidden
    assert bool(tm.is_stable(states).all())


def test_stability_check_against_a_plain_loop():
    """is_stable and the chunked enumeration agree with s == Θ(J s - θ) written out element by element."""
    tm = _tm(24, 5, seed=3)  # N_v/N_h small: many states unstable
    J = tm.J.tolist()
    expected = []
    for code in range(32):
        s = [(code >> (4 - k)) & 1 for k in range(5)]
        fields = [sum(J[m][k] * s[k] for k in range(5)) for m in range(5)]
        expected.append(all((f > tm.theta) == bool(b) for f, b in zip(fields, s)))
    got = tm.is_stable(tm.all_states()).tolist()
    assert got == expected
    assert 0 < sum(expected) < 32
    assert tm.stable_fraction() == pytest.approx(sum(expected) / 32)
    assert tm.stable_fraction(chunk=7) == pytest.approx(sum(expected) / 32)


def test_stable_fraction_falls_as_nv_over_nh_shrinks_and_respects_the_bound():
    n_hidden, ratios, seeds = 8, [2, 5, 10, 20, 40], range(4)
    fracs = [sum(_tm(r * n_hidden, n_hidden, seed=s).stable_fraction() for s in seeds) / len(seeds) for r in ratios]
    assert all(a <= b + 1e-12 for a, b in zip(fracs, fracs[1:])), fracs
    assert fracs[0] < 0.5 and fracs[-1] > 0.99
    for r, f in zip(ratios, fracs):
        assert f >= stability_bound(r * n_hidden, n_hidden) - 0.02, (r, f)
    assert stability_bound(1200, 12) > 0.9999 and stability_bound(16, 8) == 0.0


def test_a_stable_state_is_a_fixed_point_of_the_dynamics():
    tm = _tm(300, 5, seed=4)
    s = tm.all_states()[[3, 10, 21]]
    v = tm.memory(s)
    dv, dh = tm.derivatives(v, s @ tm.J)
    assert dv.abs().max() < 1e-5 and dh.abs().max() < 1e-5
    r = tm.recall(v)
    assert torch.equal(r.hidden, s) and bool(r.converged.all())
    torch.testing.assert_close(r.state, v, atol=1e-4, rtol=0)


def test_recall_from_visible_noise_matches_the_gaussian_prediction_and_descends_in_energy():
    """A noisy memory is recalled when the hidden code it switches on is the memory's code: with
    h = J s + sigma_v sqrt(N_h/N_v) z, P(recovered) = prod_mu Phi(|J s - θ|_mu / (sigma_v sqrt(N_h/N_v)))."""
    n_v, n_h = 400, 6
    tm = _tm(n_v, n_h, seed=0)
    s = tm.all_states().repeat(3, 1)
    g = torch.Generator().manual_seed(2)
    out = {}
    for frac in (0.04, 1.0):
        sigma = math.sqrt(frac * n_v / n_h)
        v0 = tm.memory(s) + sigma * torch.randn(s.shape[0], n_v, generator=g)
        r = tm.recall(v0)
        assert bool(r.converged.all())
        assert torch.equal(r.hidden, tm.encode(v0))  # tau_v >> tau_h: the first hidden code is kept
        recovered = (r.hidden == s).all(-1).double().mean().item()
        predicted = Normal(0.0, 1.0).cdf((s @ tm.J - tm.theta).abs() / (sigma * math.sqrt(n_h / n_v))).prod(-1).mean().item()
        assert recovered == pytest.approx(predicted, abs=0.08)
        # the visible state is the memory of the final hidden code, and the energy never rose
        torch.testing.assert_close(r.state, tm.memory(r.hidden), atol=0.3, rtol=0)
        assert float(r.energy.diff(dim=0).max()) <= 1e-4
        out[frac] = recovered
    assert out[0.04] > 0.9 and out[1.0] < 0.3


def test_float64_and_single_cue():
    tm = _tm(200, 4, seed=5)
    tm.xi = tm.xi.double()
    s = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    r = tm.recall(tm.memory(s) + 0.5)
    assert r.state.shape == (200,) and r.hidden.shape == (4,) and r.state.dtype == torch.float64
    assert torch.equal(r.hidden, s)


def test_fit_stores_training_images_as_distinct_stable_memories():
    g = torch.Generator().manual_seed(6)
    n_img, n_v, n_h = 40, 120, 16
    images = (torch.rand(n_img, n_v, generator=g) < 0.3).float()
    tm = ThresholdMemory.random(n_v, n_h, generator=g, theta=0.3)
    before = tm.recall(images)
    err_before = (before.state - images).pow(2).sum(-1).mean().item()
    history = tm.fit(images, epochs=150, lr=0.05, batch_size=20, beta=20.0, generator=g, progress=False)
    assert history[-1] < 0.5 * history[0]
    r = tm.recall(images)
    err_after = (r.state - images).pow(2).sum(-1).mean().item()
    assert err_after < 0.5 * err_before
    codes = {tuple(c) for c in r.hidden.tolist()}
    assert len(codes) >= 0.9 * n_img  # nearly every image has its own minimum
    assert bool(tm.is_stable(r.hidden).all())  # and they are fixed points of the dynamics


def test_bad_input():
    xi = torch.randn(4, 30)
    for theta in (0.0, 1.0, 1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match="theta"):
            ThresholdMemory(xi, theta=theta)
    bad = xi.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="xi.*non-finite"):
        ThresholdMemory(bad)
    tm = ThresholdMemory(xi)
    v = torch.randn(2, 30)
    v[0, 0] = float("nan")
    with pytest.raises(ValueError, match="cue.*non-finite"):
        tm.recall(v)
    with pytest.raises(ValueError, match="cue.*N_v = 30"):
        tm.recall(torch.randn(2, 31))
    with pytest.raises(ValueError, match="binary"):
        tm.memory(torch.tensor([0.0, 1.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="images.*non-finite"):
        tm.fit(torch.full((3, 30), float("nan")), progress=False)
    with pytest.raises(ValueError, match="tau_v"):
        ThresholdMemory(xi, tau_v=0.0)
    big = ThresholdMemory.random(100, 25, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"N_h = 25.*N_h <= 24.*sample"):
        big.stable_fraction()
    with pytest.raises(ValueError, match=r"N_h <= 24"):
        big.all_states()
    sample = torch.randint(0, 2, (500, 25), generator=torch.Generator().manual_seed(1))
    assert 0.0 <= big.stable_fraction(states=sample) <= 1.0


@pytest.mark.slow
def test_mnist_experiment_quick(tmp_path):
    """docs/figures/make_bio_mnist.py --quick (10,000 digits, 10 epochs): many distinct stable minima, far more
    recalled states than the 50 that a winner-take-all layer of 50 hidden units allows."""
    import json
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "docs" / "figures" / "make_bio_mnist.py"), "--quick", "--out", str(tmp_path)],
                   check=True, cwd=root, timeout=3600)
    d = json.loads((tmp_path / "bio_mnist.json").read_text())
    for name in ("bio_mnist.png", "bio_mnist_models.csv", "bio_mnist_samples.npz"):
        assert (tmp_path / name).stat().st_size > 0
    assert d["n_training_digits"] == 10000 and d["n_hidden"] == 50
    assert d["distinct_minima"] >= 5000
    assert d["fraction_final_codes_stable"] >= 0.99 and d["fraction_converged"] == 1.0
    rows = {(r["model"], r["cues"]): r for r in d["recall_accuracy"]}
    thr = rows[("threshold, theta = 0.21", "test digits")]
    assert thr["distinct_recalled_states"] > 500 and thr["recall_accuracy"] > 0.6
    for (model, cues), r in rows.items():
        if model.startswith(("Model A", "Model B")):
            assert r["distinct_recalled_states"] <= 50  # one memory per hidden unit (KH eq. 9)
    assert rows[("Model A, F = x^3 (binary)", "test digits")]["recall_accuracy"] < 0.2


def test_distinct_state_count_does_not_split_equal_states():
    """docs/figures/make_bio_mnist.py counts recalled states as one when they agree to 1e-3 of the largest
    |coordinate|: two states straddling a rounding-grid line (0.0125 +- 1e-7) are one state (rounding
    to a 1e-3 grid made them two: 51 "distinct" states for Model B's 50 memories), states 1e-2 apart
    are two, and the tolerance scales with the states (unit vectors with coordinates ~0.04)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "docs" / "figures" / "make_bio_mnist.py"
    spec = importlib.util.spec_from_file_location("bio_mnist", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = torch.tensor([[0.0125 - 1e-7, 1.0], [0.0125 + 1e-7, 1.0], [0.0225, 1.0]], dtype=torch.float64)
    assert len({tuple(t) for t in torch.round(a[:2] * 1e3).tolist()}) == 2  # what the grid did
    assert mod.distinct_states(a[:2]) == 1 and mod.distinct_states(a) == 2
    u = torch.nn.functional.normalize(torch.randn(3, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=-1)
    same = u[:1] + 1e-7
    assert mod.distinct_states(torch.cat([u, same])) == 3
    assert mod.distinct_states(torch.cat([u, u[:1] + 2e-3 * u.abs().max()])) == 4
    assert mod.distinct_states(a[:0]) == 0


def test_recall_takes_cue_and_the_older_v0_spelling():
    m = ThresholdMemory(torch.randn(4, 30, generator=torch.Generator().manual_seed(3)), theta=0.21)
    v = torch.randn(2, 30, generator=torch.Generator().manual_seed(4))
    a, b = m.recall(v, t_max=5.0), m.recall(v0=v, t_max=5.0)
    assert torch.equal(a.state, b.state) and torch.equal(a.energy, b.energy)
    assert isinstance(a, assocmem.RecallResult) and a.hidden.shape == (2, 4) and a.t.ndim == 1
    with pytest.raises(TypeError, match="both"):
        m.recall(v, v0=v)
    with pytest.raises(TypeError, match="missing"):
        m.recall()
