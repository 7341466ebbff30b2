"""DendriticEIMemory (Kafraj, Krotov, Bicknell & Latham 2025 abstract; MODELS.md section 6): the six
claims as measured facts — Dale's law, no saturated rate, non-silent non-cued memory neurons,
perfect recall at K = 5 N_f, failure of the same network with linear dendrites, capacity growing
with n — plus the connectivity being the one the dynamics use, and bad input."""
import pytest
import torch

from assocmem.bio import DendriticEIMemory

N_F, K = 200, 1000  # K = 5 N_f
FLOOR_HZ = 0.5  # stated floor for the rate of every non-cued memory neuron (r0 = 1 Hz by default)


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.one_thread)


def _patterns(k, n, seed=0, a=0.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(k, n, generator=g) < a).float()


def _flip(patterns, frac, seed=1):
    g = torch.Generator().manual_seed(seed)
    B, N = patterns.shape
    idx = torch.rand(B, N, generator=g).argsort(-1)[:, : round(frac * N)]
    cue = patterns.clone()
    cue.scatter_(1, idx, 1 - cue.gather(1, idx))
    return cue


@pytest.fixture(scope="module")
def big():
    """N_f = 200, coding level 0.5, K = 5 N_f, 100 cues with 10 % of their bits flipped."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    xi = _patterns(K, N_F)
    dm = DendriticEIMemory(xi, n=6)
    cue_idx = torch.arange(0, K, 10)
    r = dm.recall(_flip(xi[cue_idx], 0.1))
    torch.set_num_threads(n)
    return dm, xi, cue_idx, r


def test_perfect_recall_at_k_5nf(big):
    dm, xi, idx, r = big
    assert r.state.shape == (len(idx), N_F) and set(r.state.unique().tolist()) <= {0.0, 1.0}
    exact = (r.state == xi[idx]).all(-1).double().mean().item()
    assert exact >= 0.99
    assert bool(r.converged.all())


def test_no_rate_saturates(big):
    dm, _, _, r = big
    for name, spec in dm.populations.items():
        rates = r.rates[name]
        assert rates.shape == (r.state.shape[0], spec["size"])
        assert float(rates.max()) < 0.9 * spec["max_rate"], name
        assert float(rates.min()) >= 0.0


def test_non_cued_memory_neurons_fire(big):
    dm, xi, idx, r = big
    m = r.rates["memory"]
    cued = torch.zeros_like(m, dtype=torch.bool)
    cued[torch.arange(len(idx)), idx] = True
    assert float(m[~cued].min()) > FLOOR_HZ
    # the recalled memory neuron is the single one above the dendritic threshold
    assert bool((m[cued] > dm.theta_d).all()) and bool((m[~cued] < dm.theta_d).all())
    # feature neurons are not silent either (positive bias): off features fire at about x_off
    assert float(r.rates["feature"].min()) > 0.5 * dm.x_off


def test_linear_dendrites_with_the_same_baseline_fail():
    xi = _patterns(K, N_F)
    lin = DendriticEIMemory(xi, n=6, dendrites="linear")
    idx = torch.arange(0, K, 50)
    r = lin.recall(_flip(xi[idx], 0.1), t_max=150.0)
    assert (r.state == xi[idx]).all(-1).double().mean().item() < 0.5
    # and the baseline is the culprit: the same linear network with near-silent memory neurons recalls
    quiet = DendriticEIMemory(xi, n=6, dendrites="linear", r0=0.01)
    r = quiet.recall(_flip(xi[idx], 0.1), t_max=150.0)
    assert (r.state == xi[idx]).all(-1).double().mean().item() >= 0.95


def test_higher_n_stores_more():
    xi = _patterns(600, 100, seed=3)  # K = 6 N_f
    idx = torch.arange(0, 600, 30)
    cue = _flip(xi[idx], 0.1, seed=4)
    got = {}
    for n in (2, 6):
        r = DendriticEIMemory(xi, n=n).recall(cue, t_max=200.0)
        got[n] = (r.state == xi[idx]).all(-1).double().mean().item()
    assert got[2] < 0.5 and got[6] == 1.0


def test_dales_law_and_connectivity_drives_the_dynamics():
    xi = _patterns(60, 40, seed=5)
    dm = DendriticEIMemory(xi, n=4)
    pops = dm.populations
    assert {"feature", "memory"} <= set(pops) and pops["memory"]["size"] == 60 and pops["feature"]["size"] == 40
    assert {p["type"] for p in pops.values()} == {"E", "I"}
    conns = dm.connectivity()
    signs = {}
    for pre, post, w, sign in conns:
        assert w.shape == (pops[pre]["size"], pops[post]["size"])
        assert float(w.min()) >= 0.0 and sign in (+1, -1)
        signs.setdefault(pre, set()).add(sign)
    for name, s in signs.items():  # one sign per presynaptic population, + for E and - for I
        assert s == ({+1} if pops[name]["type"] == "E" else {-1}), name
    assert set(signs) == set(pops)  # every population projects somewhere
    # the memory -> feature weights are the stored patterns themselves, in the order given
    W = {(pre, post): (w, sign) for pre, post, w, sign in conns}
    torch.testing.assert_close(W[("memory", "feature")][0] / dm.w, xi)

    # recompute every population's drive from the listed projections and compare with the dynamics
    g = torch.Generator().manual_seed(6)
    B = 3
    rates = {name: torch.rand(B, p["size"], generator=g) * 30 for name, p in pops.items()}
    rates["memory"][:, :5] += 10.0  # a few memory neurons above the dendritic threshold
    x, m, q, ff, fb = (rates[k] for k in ("feature", "memory", "shunt", "ff", "fb"))

    def inp(post, pre, transform=lambda r: r):
        w, sign = W[(pre, post)]
        return sign * transform(rates[pre]) @ w

    D = dm._D
    u_x = dm.b + inp("feature", "memory", D) + inp("feature", "fb")
    h = inp("memory", "feature") + inp("memory", "ff")
    torch.testing.assert_close(h, inp("shunt", "feature") + inp("shunt", "ff"))
    shunt = dm.kappa - inp("memory", "shunt")  # divisive: the shunting input sits in the denominator
    u_m = dm.r0 + dm.r1 * dm._F(h) / shunt
    u_q = dm.q1 * dm._F(h)
    u_ff = inp("ff", "feature")
    u_fb = inp("fb", "memory", D)
    E, I = dm.max_rate_e, dm.max_rate_i
    expected = [
        (-x + u_x.clamp(0, E)) / dm.tau_e,
        (-m + u_m.clamp(0, E)) / dm.tau_e,
        (-q + u_q.clamp(0, I)) / dm.tau_s,
        (-ff + u_ff.clamp(0, I)) / dm.tau_i,
        (-fb + u_fb.clamp(0, I)) / dm.tau_i,
    ]
    for got, want in zip(dm.derivatives((x, m, q, ff, fb)), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_batched_and_single_cues_and_partial_cues():
    xi = _patterns(150, 60, seed=7)
    dm = DendriticEIMemory(xi, n=6)
    r1 = dm.recall(_flip(xi[4:5], 0.1, seed=8)[0])
    assert r1.state.shape == (60,) and r1.rates["memory"].shape == (150,) and r1.converged.shape == ()
    assert torch.equal(r1.state, xi[4])
    cue = xi[:10].clone()
    cue[:, :15] = 0.5  # a quarter of the bits unknown
    r = dm.recall(cue)
    assert torch.equal(r.state, xi[:10])
    assert int(r.rates["memory"].argmax(-1).ne(torch.arange(10)).sum()) == 0


def test_float64():
    xi = _patterns(80, 50, seed=9).double()
    r = DendriticEIMemory(xi).recall(_flip(xi[:5], 0.1))
    assert r.state.dtype == torch.float64 and torch.equal(r.state, xi[:5])


def test_bad_input():
    good = _patterns(10, 20)
    for bad in (good * 2 - 1, good + 0.5, good * 2):
        with pytest.raises(ValueError, match="patterns.*0 and 1"):
            DendriticEIMemory(bad)
    nan = good.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="patterns.*non-finite"):
        DendriticEIMemory(nan)
    with pytest.raises(ValueError, match="dendrites"):
        DendriticEIMemory(good, dendrites="sigmoid")
    with pytest.raises(ValueError, match="theta_d"):
        DendriticEIMemory(good, r0=5.0, theta_d=4.0)
    empty = good.clone()
    empty[3] = 0
    with pytest.raises(ValueError, match="pattern 3 is all 0s"):
        DendriticEIMemory(empty)
    dm = DendriticEIMemory(good)
    with pytest.raises(ValueError, match=r"cue.*\[0, 1\]"):
        dm.recall(good * 2 - 1)
    cue = good[:2].clone()
    cue[1, 1] = float("nan")
    with pytest.raises(ValueError, match="cue.*non-finite"):
        dm.recall(cue)
    with pytest.raises(ValueError, match="N_f = 20"):
        dm.recall(torch.zeros(2, 21))
