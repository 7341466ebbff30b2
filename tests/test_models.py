"""The effective models of KH section 3: attention parity, energies equal to the general energy (2)
at h = xi g, reduction of the two-layer dynamics, energy descent, real capacity behaviour, clamping,
and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from assocmem import (
    ClassicalHopfield,
    DenseAssociativeMemory,
    ModernHopfield,
    SphericalMemory,
)
from assocmem.lagrangians import Spherical, Tanh

from conftest import pm1


def flip(x, frac, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(x.shape, generator=g) < frac, -x, x)


# 1. Model B is attention ----------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.05, 1.0, 7.5])
def test_modern_step_equals_scaled_dot_product_attention(beta):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 16, generator=g, dtype=torch.float64)
    q = torch.randn(9, 16, generator=g, dtype=torch.float64)
    ours = ModernHopfield(X, beta=beta).step(q)
    ref = F.scaled_dot_product_attention(q, X, X, scale=beta)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


# 2. effective energies = general energy (2) at h = xi g ---------------------------------------------
def general_energy_at_slaved_h(net, v):
    g = net.lagrangian_v.activation(v)
    return net.energy(v, g @ net.xi.T)


@pytest.mark.parametrize(
    "make",
    [
        lambda X: DenseAssociativeMemory(X, F="power", n=3),
        lambda X: DenseAssociativeMemory(X, F="power", n=4),
        lambda X: DenseAssociativeMemory(X, F="rectified_power", n=3),
        lambda X: DenseAssociativeMemory(X, F="exp", beta=0.1),
    ],
)
def test_binary_energy_equals_general_energy(make):
    X = pm1(30, 24, seed=1, dtype=torch.float64)
    m = make(X)
    s = pm1(7, 24, seed=2, dtype=torch.float64)
    torch.testing.assert_close(m.energy(s), general_energy_at_slaved_h(m.as_network(), s), rtol=1e-12, atol=1e-9)


def test_classical_energy_equals_general_energy_up_to_diagonal_constant():
    X = pm1(10, 40, seed=1, dtype=torch.float64)
    m = ClassicalHopfield(X)
    s = pm1(5, 40, seed=3, dtype=torch.float64)
    K = X.shape[0]
    torch.testing.assert_close(m.energy(s), general_energy_at_slaved_h(m.as_network(), s) + K / 2, rtol=1e-12, atol=1e-10)
    # and equals -1/2 s^T T s with the Hebbian matrix
    T = X.T @ X / 40
    T.fill_diagonal_(0)
    torch.testing.assert_close(m.energy(s), -0.5 * ((s @ T) * s).sum(-1))


def test_continuous_energies_equal_general_energy():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(20, 12, generator=g, dtype=torch.float64)
    v = torch.randn(6, 12, generator=g, dtype=torch.float64)
    for m in (ModernHopfield(X, beta=0.7), SphericalMemory(X, F="power", n=4), SphericalMemory(X, F="exp", beta=0.5),
              DenseAssociativeMemory(X / 4, F="rectified_power", n=3, lagrangian_v=Tanh(3.0))):
        torch.testing.assert_close(m.energy(v), general_energy_at_slaved_h(m.as_network(), v), rtol=1e-12, atol=1e-10)


# 3. reduction: the two-layer network with small tau_h lands on the effective model's fixed point -------
TAU_H = 0.01  # documented in docs/models.md


def cues_near_patterns(X, B, noise, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, X.shape[0], (B,), generator=g)
    return X[idx] + noise * torch.randn(B, X.shape[1], generator=g, dtype=X.dtype), idx


@pytest.mark.parametrize("seed", range(4))
def test_reduction_model_B(seed):
    X = pm1(12, 20, seed=seed, dtype=torch.float64)
    m = ModernHopfield(X, beta=0.3)
    cue, _ = cues_near_patterns(X, 16, 0.8, seed)
    r = m.recall(cue, max_steps=500, tol=1e-12)
    tr = m.as_network(tau_f=1.0, tau_h=TAU_H).simulate(cue, t_max=60, dt=0.005, tol=1e-8, record_every=100)
    assert r.converged.all() and tr.converged.all()
    torch.testing.assert_close(tr.final_v, r.state, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_reduction_model_A_continuous(seed):
    X = pm1(15, 20, seed=seed, dtype=torch.float64) / math.sqrt(20)
    m = DenseAssociativeMemory(X, F="rectified_power", n=3, lagrangian_v=Tanh(10.0), dt=0.02)
    cue, idx = cues_near_patterns(X, 16, 0.15, seed)
    r = m.recall(cue, max_steps=5000, tol=1e-10)
    net = m.as_network(tau_f=1.0, tau_h=TAU_H)
    tr = net.simulate(cue, t_max=60, dt=0.005, tol=1e-8, record_every=100)
    assert r.converged.all() and tr.converged.all()
    g_eff, g_net = torch.tanh(10 * r.state), torch.tanh(10 * tr.final_v)
    torch.testing.assert_close(g_net, g_eff, atol=1e-5, rtol=0)
    assert torch.equal(torch.sign(g_net), torch.sign(X[idx]))  # and it is the memory


@pytest.mark.parametrize("seed", range(4))
def test_reduction_model_C(seed):
    X = pm1(10, 20, seed=seed, dtype=torch.float64) / math.sqrt(20)  # keeps |v| of order 1
    # alpha = 5 (any alpha >= 0 is allowed, KH eq. 19) keeps |v| near 1, so directions settle fast
    m = SphericalMemory(X, F="power", n=4, alpha=5.0)
    cue, idx = cues_near_patterns(X, 16, 0.3 / math.sqrt(20), seed)
    r = m.recall(cue, max_steps=2000, tol=1e-12)
    net = m.as_network(tau_f=1.0, tau_h=TAU_H)
    tr = net.simulate(cue / cue.norm(dim=-1, keepdim=True), t_max=60, dt=0.008, tol=1e-8, record_every=100)
    g_net = tr.final_v / tr.final_v.norm(dim=-1, keepdim=True)
    assert r.converged.all() and tr.converged.all()
    torch.testing.assert_close(g_net, r.state, atol=1e-6, rtol=0)


# 4. energy never increases during any recall ----------------------------------------------------------
MODELS = {
    "classical": lambda X: ClassicalHopfield(X),
    "dense-power3": lambda X: DenseAssociativeMemory(X, F="power", n=3),
    "dense-rect4": lambda X: DenseAssociativeMemory(X, F="rectified_power", n=4),
    "dense-exp": lambda X: DenseAssociativeMemory(X, F="exp", beta=0.5),
    "modern": lambda X: ModernHopfield(X, beta=0.2),
    "spherical-power3": lambda X: SphericalMemory(X, F="power", n=3),
    "spherical-exp": lambda X: SphericalMemory(X, F="exp", beta=0.3),
}


@settings(max_examples=60)
@example(name="spherical-power3", K=5, N=2, seed=130, frac=0.0, clamp=True)  # an update with no free part
@given(name=st.sampled_from(sorted(MODELS)), K=st.integers(1, 40), N=st.integers(2, 30),
       seed=st.integers(0, 10_000), frac=st.floats(0.0, 0.5), clamp=st.booleans())
def test_energy_never_increases_during_recall(name, K, N, seed, frac, clamp):
    X = pm1(K, N, seed=seed, dtype=torch.float64)
    m = MODELS[name](X)
    cue = flip(X[: min(K, 4)], frac, seed)
    if cue.shape[0] < 4:
        cue = torch.cat([cue, pm1(4 - cue.shape[0], N, seed=seed + 1, dtype=torch.float64)])
    mask = (torch.rand(N, generator=torch.Generator().manual_seed(seed)) < 0.3) if clamp else None
    r = m.recall(cue, max_steps=30, clamp=mask, generator=torch.Generator().manual_seed(seed))
    e = r.energy
    assert e.shape == (r.steps + 1, 4)
    assert ((e[1:] - e[:-1]) <= 1e-9 * (1 + e[:-1].abs())).all()
    if mask is not None:
        # spherical models hold the clamped coordinates at the cue's normalised values, as the model
        # normalises (bit for bit: torch's own norm() rounds sqrt differently on some CPUs)
        assert torch.equal(r.state[:, mask], cue[:, mask] if name not in ("spherical-power3", "spherical-exp")
                           else Spherical().activation(cue)[:, mask])


def test_dense_n2_has_the_same_trajectories_as_classical():
    X = pm1(12, 64, seed=5)
    cue = flip(X[:10], 0.3, 5)
    a, b = ClassicalHopfield(X), DenseAssociativeMemory(X, F="power", n=2)
    ga, gb = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    xa, xb = cue, cue
    for _ in range(6):
        xa, xb = a.step(xa, generator=ga), b.step(xb, generator=gb)
        assert torch.equal(xa, xb)


def test_sweep_is_seedable_and_batch_independent():
    X = pm1(20, 50, seed=6)
    m = DenseAssociativeMemory(X, F="power", n=3)
    cue = flip(X[:5], 0.35, 6)
    r1 = m.recall(cue, generator=torch.Generator().manual_seed(3))
    r2 = m.recall(cue, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1.state, r2.state)
    single = m.recall(cue[2], generator=torch.Generator().manual_seed(3))
    assert single.state.shape == (50,) and single.energy.ndim == 1


# 5. capacity behaviour is real --------------------------------------------------------------------------
def recall_rate(model, X, n_cues, frac, seed):
    cue = flip(X[:n_cues], frac, seed)
    r = model.recall(cue, max_steps=30, generator=torch.Generator().manual_seed(seed))
    return (r.state == X[:n_cues]).all(-1).float().mean().item()


def test_classical_capacity_limits():
    N = 200
    low = pm1(int(0.05 * N), N, seed=7)
    high = pm1(int(0.3 * N), N, seed=8)
    assert recall_rate(ClassicalHopfield(low), low, 10, 0.05, 1) == 1.0
    assert recall_rate(ClassicalHopfield(high), high, 40, 0.05, 1) < 0.1


def test_dense_n3_stores_far_more_and_still_fails_far_beyond_theory():
    N = 100
    theory = N**2 / (2 * 3 * math.log(N))  # KH2016, about 362
    many = pm1(2 * N, N, seed=9)  # 200: 14x the classical 0.138 N
    assert recall_rate(DenseAssociativeMemory(many, F="power", n=3), many, 40, 0.05, 2) >= 0.95
    assert recall_rate(ClassicalHopfield(many), many, 40, 0.05, 2) == 0.0
    too_many = pm1(int(12 * theory), N, seed=10)
    assert recall_rate(DenseAssociativeMemory(too_many, F="power", n=3), too_many, 40, 0.05, 3) < 0.2


# 6. pattern completion with clamp -----------------------------------------------------------------------
def test_clamped_completion_fills_unknown_pixels():
    X = pm1(300, 100, seed=11)
    cue = X[:8].clone()
    known = torch.zeros(100, dtype=torch.bool)
    known[:50] = True
    cue[:, 50:] = 0.0
    r = ModernHopfield(X, beta=0.5).recall(cue, clamp=known)
    assert torch.equal(r.state[:, :50], X[:8, :50])
    assert torch.equal(torch.sign(r.state[:, 50:]), X[:8, 50:])
    bcue = X[:8].clone()
    bcue[:, 50:] = 1.0  # binary model: unknown bits start at +1 and are free
    rb = DenseAssociativeMemory(X, F="power", n=3).recall(bcue, clamp=known, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rb.state, X[:8])


# bad input -----------------------------------------------------------------------------------------------
def test_bad_input():
    X = pm1(5, 10)
    with pytest.raises(ValueError, match="patterns.*-1 and \\+1"):
        ClassicalHopfield(X * 0.5)
    with pytest.raises(ValueError, match="patterns.*-1 and \\+1"):
        DenseAssociativeMemory(X + 1)
    with pytest.raises(ValueError, match="patterns.*empty"):
        ModernHopfield(torch.zeros(0, 10))
    with pytest.raises(ValueError, match="patterns.*non-finite"):
        ModernHopfield(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="beta.*> 0"):
        ModernHopfield(X, beta=0)
    with pytest.raises(ValueError, match="n: got 1"):
        DenseAssociativeMemory(X, n=1)
    with pytest.raises(ValueError, match="F: got 'cubic'"):
        SphericalMemory(X, F="cubic")
    with pytest.raises(ValueError, match="cue.*last dimension 10"):
        ModernHopfield(X).recall(torch.randn(3, 9))
    with pytest.raises(ValueError, match="cue.*non-finite"):
        ModernHopfield(X).recall(torch.full((10,), float("nan")))
    with pytest.raises(ValueError, match="cue.*-1 and \\+1"):
        ClassicalHopfield(X).recall(torch.zeros(10))
    with pytest.raises(ValueError, match="clamp"):
        ModernHopfield(X).recall(X[0], clamp=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="patterns"):
        ModernHopfield("not a tensor")


def test_large_beta_and_n_do_not_overflow():
    X = pm1(60, 100, seed=12)
    cue = flip(X[:6], 0.1, 12)
    for m in (ModernHopfield(X, beta=1e3), DenseAssociativeMemory(X, F="exp", beta=1e3),
              DenseAssociativeMemory(X, F="power", n=20), SphericalMemory(X, F="power", n=20),
              SphericalMemory(X, F="exp", beta=1e3)):
        r = m.recall(cue, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(r.state).all()
        assert not torch.isnan(r.energy).any()
        assert torch.equal(torch.sign(r.state), X[:6]), type(m).__name__
    e = DenseAssociativeMemory(X, F="power", n=20).energy(X[:2])
    assert torch.isfinite(e).all() and (e < 0).all()


def test_recall_never_returns_or_writes_the_callers_tensor():
    """Recall's state is a new tensor (also when no step is taken, and for a ready float batch that
    skips the input copy); the cue is left as it was."""
    g = torch.Generator().manual_seed(40)
    xi = torch.randint(0, 2, (50, 16), generator=g).float() * 2 - 1
    for model in (ModernHopfield(xi, beta=0.5), DenseAssociativeMemory(xi, n=3)):
        cue = xi[:4].clone()
        cue[:, :3] *= -1
        keep = cue.clone()
        for steps in (0, 1, 5):
            r = model.recall(cue, max_steps=steps)
            assert r.state is not cue and r.state.data_ptr() != cue.data_ptr()
            r.state.add_(1.0)
            assert torch.equal(cue, keep)


# 7. the sweep engine gives the recalls of the former per-neuron implementation ----------------------------
# An independent reference: the asynchronous sweeps as DenseAssociativeMemory._step and
# ClassicalHopfield._step computed them before the sweep engine (one randperm per sweep, every
# neuron's energy comparison evaluated over all memories), copied here unchanged in substance.
def _old_dense_sweep(xi, x, generator, clamp, F, n, beta):
    K, N = xi.shape
    bits = n * math.log2(N + 1) + math.log2(K) + 1
    if F == "exp":
        mode, work = "log", torch.float64 if xi.dtype == torch.float64 else torch.float32
    elif bits < 23:
        mode, work = "exact", torch.float32
    elif bits < 52:
        mode, work = "exact", torch.float64
    else:
        mode, work = "normalised", torch.float64
    xt = xi.to(work).T.contiguous()
    s = x.to(work).clone()
    h = s @ xt
    order = torch.randperm(N, generator=generator).tolist()
    if mode == "normalised":
        for i in order:
            col, old = xt[i], s[:, i]
            hp = h + (1.0 - old).unsqueeze(-1) * col
            hn = h - (1.0 + old).unsqueeze(-1) * col
            scale = torch.maximum(hp.abs().amax(-1, keepdim=True), hn.abs().amax(-1, keepdim=True)).clamp_min(1.0)
            hp, hn = hp / scale, hn / scale
            if F == "power":
                pref = (hp.pow(n) - hn.pow(n)).sum(-1)
            else:
                pref = (torch.clamp(hp, min=0).pow(n) - torch.clamp(hn, min=0).pow(n)).sum(-1)
            new = torch.where(pref > 0, 1.0, torch.where(pref < 0, -1.0, old)).to(s.dtype)
            if clamp is not None:
                new = torch.where(clamp[:, i], old, new)
            h.addr_(new - old, col)
            s[:, i] = new
        return s.to(x.dtype)

    def G(a):
        if mode == "log":
            return torch.logsumexp(beta * a, -1)
        if F == "power":
            return a.pow(n).sum(-1)
        return torch.clamp(a, min=0).pow(n).sum(-1)

    g = G(h)
    for i in order:
        old = s[:, i]
        hq = torch.addr(h, old, xt[i], alpha=-2.0)
        gq = G(hq)
        pref = old * (g - gq)
        new = torch.where(pref > 0, 1.0, torch.where(pref < 0, -1.0, old)).to(s.dtype)
        if clamp is not None:
            new = torch.where(clamp[:, i], old, new)
        flip = new != old
        if bool(flip.any()):
            h = torch.where(flip.unsqueeze(-1), hq, h)
            g = torch.where(flip, gq, g)
            s[:, i] = new
    return s.to(x.dtype)


def _old_classical_sweep(xi, x, generator, clamp):
    K, N = xi.shape
    work = torch.float64 if (N * K >= 2**23 or xi.dtype == torch.float64) else torch.float32
    w = xi.to(work).T @ xi.to(work)
    w.fill_diagonal_(0)
    s = x.to(work).clone()
    u = s @ w
    for i in torch.randperm(N, generator=generator).tolist():  # one neuron at a time, every field updated
        old = s[:, i]
        new = torch.where(u[:, i] > 0, 1.0, torch.where(u[:, i] < 0, -1.0, old))
        if clamp is not None:
            new = torch.where(clamp[:, i], old, new)
        u.addr_(new - old, w[i])
        s[:, i] = new
    return s.to(x.dtype)


def _old_recall(sweep, x, max_steps, generator, clamp=None):
    """The former recall loop: sweeps of the rows still moving until a sweep changes nothing."""
    x = x.clone()
    converged = torch.zeros(x.shape[0], dtype=torch.bool)
    steps = 0
    for s in range(1, max_steps + 1):
        active = (~converged).nonzero().flatten()
        ca = None if clamp is None else clamp[active]
        new = sweep(x[active], generator, ca)
        converged[active] = (new == x[active]).all(-1)
        x[active] = new
        steps = s
        if bool(converged.all()):
            break
    return x, converged, steps


DENSE_CASES = [("power", 3, 1.0), ("power", 4, 1.0), ("rectified_power", 3, 1.0), ("power", 2, 1.0),
               ("exp", 3, 0.5), ("exp", 3, 1.0), ("exp", 3, 1e3), ("power", 20, 1.0)]


@pytest.mark.parametrize("F,n,beta", DENSE_CASES)
@pytest.mark.parametrize("clamped", [False, True])
def test_dense_recall_equals_former_implementation(F, n, beta, clamped):
    """Same recalled states, convergence and sweep counts as the per-neuron sweeps the models used
    before the sweep engine, for the same generator: exact and normalised powers, log-space exp,
    very large beta and n, clamps, a load near and above capacity (some cues fail)."""
    for K, N, B, frac, seed in ((150, 40, 24, 0.25, 1), (600, 64, 16, 0.3, 2)):
        xi = pm1(K, N, seed=seed)
        cue = flip(xi[:B], frac, seed + 10)
        clamp = (torch.rand(B, N, generator=torch.Generator().manual_seed(seed)) < 0.2) if clamped else None
        m = DenseAssociativeMemory(xi, F=F, n=n, beta=beta)
        r = m.recall(cue, max_steps=8, clamp=clamp, generator=torch.Generator().manual_seed(seed + 3))
        ref, conv, steps = _old_recall(lambda x, g, c: _old_dense_sweep(xi, x, g, c, F, n, beta), cue, 8,
                                       torch.Generator().manual_seed(seed + 3), clamp)
        assert torch.equal(r.state, ref), (K, N)
        assert torch.equal(r.converged, conv) and r.steps == steps
        # the energy trace is the energy of the states after every sweep
        assert torch.equal(r.energy[-1], m.energy(r.state))


@pytest.mark.parametrize("K,N,B,clamped", [(10, 100, 30, False), (40, 150, 40, True), (300, 120, 25, False)])
def test_classical_recall_equals_former_implementation(K, N, B, clamped):
    xi = pm1(K, N, seed=K)
    cue = flip(xi[:B] if B <= K else pm1(B, N, seed=K + 1), 0.2, K + 2)
    clamp = (torch.rand(N, generator=torch.Generator().manual_seed(K)) < 0.3).expand(B, N) if clamped else None
    m = ClassicalHopfield(xi)
    r = m.recall(cue, max_steps=30, clamp=clamp, generator=torch.Generator().manual_seed(7))
    ref, conv, steps = _old_recall(lambda x, g, c: _old_classical_sweep(xi, x, g, c), cue, 30,
                                   torch.Generator().manual_seed(7), clamp)
    assert torch.equal(r.state, ref) and torch.equal(r.converged, conv) and r.steps == steps
    assert torch.equal(r.energy[-1], m.energy(r.state))


@pytest.mark.slow
@pytest.mark.parametrize("F", ["power", "exp"])
def test_dense_recall_at_benchmark_size_equals_former_implementation(F):
    """The benchmark's problem (benchmarks/bench_dense_recall.py): 32 cues, 20 % flipped, over 10,000
    patterns of N = 784, F = x^3 and exp (beta = 1): the same states as the former sweeps."""
    g = torch.Generator().manual_seed(0)
    xi = torch.randint(0, 2, (10_000, 784), generator=g).float() * 2 - 1
    cue = xi[:32].clone()
    idx = torch.rand(32, 784, generator=g).argsort(-1)[:, :156]
    cue.scatter_(1, idx, -cue.gather(1, idx))
    r = DenseAssociativeMemory(xi, F=F, n=3).recall(cue, generator=torch.Generator().manual_seed(1))
    ref, conv, steps = _old_recall(lambda x, gen, c: _old_dense_sweep(xi, x, gen, c, F, 3, 1.0), cue, 100,
                                   torch.Generator().manual_seed(1))
    assert torch.equal(r.state, ref) and torch.equal(r.converged, conv) and r.steps == steps
    assert torch.equal(r.state, xi[:32])


@pytest.mark.parametrize("F", ["power", "rectified_power", "exp"])
@pytest.mark.parametrize("beta", [0.37, 1.0, 20.0, 400.0])
def test_exact_ties_keep_the_state(F, beta):
    """Flipping neuron 0 of s = (1, 1, 1) with memories (1, 1, 1) and (-1, 1, 1) turns the overlaps
    {3, 1} into {1, 3}: the energy is unchanged for every F, so the KH2016 rule keeps s_0 (rounding in
    a log-sum-exp must not decide it)."""
    xi = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    m = DenseAssociativeMemory(xi, F=F, n=3, beta=beta)
    s = torch.ones(4, 3)
    for seed in range(4):
        assert torch.equal(m.step(s, generator=torch.Generator().manual_seed(seed)), s)


def test_sweep_numerics_are_chosen_by_what_fits():
    from assocmem.models.sweep import OverlapSweeps

    assert DenseAssociativeMemory(pm1(50, 30), F="power", n=3)._work == torch.float32  # 2 x 50 x 3 x 32^2 < 2^24
    assert DenseAssociativeMemory(pm1(50, 30), F="power", n=3, dtype=torch.float64)._mode == "exact"
    assert DenseAssociativeMemory(pm1(50, 300), F="power", n=4)._work == torch.float64
    assert DenseAssociativeMemory(pm1(50, 300), F="power", n=20)._mode == "scaled"
    assert DenseAssociativeMemory(pm1(50, 300), F="exp", beta=2.0)._mode == "log"
    assert DenseAssociativeMemory(pm1(50, 300), F="exp", beta=1e3)._mode == "direct"
    with pytest.raises(TypeError, match="lagrangian_h"):
        OverlapSweeps(pm1(5, 8), Tanh(1.0))


def test_grouped_sweeps_equal_one_model_per_group():
    """The capacity lab's use: several pattern sets of different sizes (zero-padded) in one run, each
    row with its own set, give every row the recall of its own model."""
    from assocmem.models import hidden_lagrangian
    from assocmem.models.sweep import OverlapSweeps, run_sweeps

    N, Ks = 36, [20, 90, 55]
    xis = [pm1(k, N, seed=70 + j) for j, k in enumerate(Ks)]
    cues = [flip(x[:6], 0.25, 80 + j) for j, x in enumerate(xis)]
    stacked = torch.zeros(3, max(Ks), N)
    for j, x in enumerate(xis):
        stacked[j, : len(x)] = x
    group = torch.tensor([2, 0, 1]).repeat_interleave(6)  # rows not sorted by group
    s0 = torch.cat([cues[2], cues[0], cues[1]])
    for fname, n, beta in (("power", 3, 1.0), ("exp", 3, 0.7), ("power", 20, 1.0)):
        run = run_sweeps(OverlapSweeps(stacked, hidden_lagrangian(fname, n, beta), torch.tensor(Ks)), s0, 5,
                         torch.Generator().manual_seed(4), group=group)
        for j, rows in ((2, slice(0, 6)), (0, slice(6, 12)), (1, slice(12, 18))):
            r = DenseAssociativeMemory(xis[j], F=fname, n=n, beta=beta).recall(cues[j], max_steps=5,
                                                                                generator=torch.Generator().manual_seed(4))
            assert torch.equal(run.state[rows], r.state), (fname, j)
            assert torch.equal(run.converged[rows], r.converged)


# 8. a cue that requires grad ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda X: ClassicalHopfield(X), lambda X: DenseAssociativeMemory(X, n=3),
                                  lambda X: DenseAssociativeMemory(X, F="exp", beta=0.5)])
def test_binary_models_take_a_cue_that_requires_grad_by_value(make):
    """ClassicalHopfield.recall/step failed on such a cue ('sub(): functions with out=... don't support
    automatic differentiation'); the binary sweeps use it by value, as documented, like the other
    models accept it."""
    X = pm1(6, 40, seed=3)
    m = make(X)
    cue = flip(X[:3], 0.1, 3)
    g_cue = cue.clone().requires_grad_(True)
    r = m.recall(g_cue, generator=torch.Generator().manual_seed(0))
    ref = m.recall(cue, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r.state, ref.state) and not r.state.requires_grad
    s = m.step(g_cue, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s, m.step(cue, generator=torch.Generator().manual_seed(1)))
    assert g_cue.grad is None and torch.equal(g_cue.detach(), cue)


# 9. declared Lagrangians, the registry, bank declarations -----------------------------------------------------
def test_models_declare_their_lagrangians_and_the_network_follows():
    from assocmem.lagrangians import Abs, Exp, LogSumExp, Power, Quadratic

    X = pm1(8, 12, seed=4, dtype=torch.float64)
    cases = [(ClassicalHopfield(X), Abs, Quadratic), (DenseAssociativeMemory(X, F="exp", beta=0.3), Abs, Exp),
             (DenseAssociativeMemory(X, n=4), Abs, Power), (ModernHopfield(X, beta=0.4), Quadratic, LogSumExp),
             (SphericalMemory(X, n=4, alpha=2.0), Spherical, Power)]
    for m, lv, lh in cases:
        assert type(m.lagrangian_v) is lv and type(m.lagrangian_h) is lh
        net = m.as_network(tau_f=1.0, tau_h=0.1)
        assert net.lagrangian_h is m.lagrangian_h
    assert cases[-1][0].as_network().alpha == 2.0
    torch.testing.assert_close(cases[0][0].as_network().xi, X / math.sqrt(12))


def test_registry_builds_every_named_model():
    from assocmem.models import by_name, entry, names

    assert names()[:6] == ("classical", "dense", "dense-power", "dense-exp", "modern", "spherical")
    X = pm1(10, 16, seed=5)
    for name in names():
        m = by_name(name, X)
        assert isinstance(m, entry(name).cls) and m.binary == entry(name).binary
    assert by_name("dense-exp", X, beta=0.25).F == "exp" and by_name("dense-exp", X, beta=0.25).beta == 0.25
    assert by_name("dense-power", X, n=5).n == 5
    assert by_name("spherical", X, F="exp", beta=2.0).F == "exp"
    with pytest.raises(ValueError, match="model: got 'hopfield'"):
        by_name("hopfield", X)
    with pytest.raises(ValueError, match="F: got 'power' for model 'dense-exp'"):
        by_name("dense-exp", X, F="power")
    with pytest.raises(TypeError, match="gamma: model 'modern'"):
        by_name("modern", X, gamma=2.0)


def test_bank_declarations_keep_the_stored_configuration():
    """Each class states what it stores, with the keys bank.py stored before the classes did, so
    banks saved by earlier versions load."""
    X = pm1(6, 8, seed=6)
    want = {
        ClassicalHopfield(X): {},
        DenseAssociativeMemory(X, F="exp", n=4, beta=0.7): {"F": "exp", "n": 4, "beta": 0.7, "tau_f": 1.0, "dt": 0.1,
                                                            "lagrangian_v": None},
        DenseAssociativeMemory(X, lagrangian_v=Tanh(3.0), dt=0.05): {"F": "power", "n": 3, "beta": 1.0, "tau_f": 1.0,
                                                                     "dt": 0.05, "lagrangian_v": {"name": "Tanh", "beta": 3.0}},
        ModernHopfield(X, beta=0.3): {"beta": 0.3},
        SphericalMemory(X, F="exp", n=5, alpha=0.5, beta=2.0): {"F": "exp", "n": 5, "alpha": 0.5, "beta": 2.0},
    }
    for m, cfg in want.items():
        got, tensors = m._bank_config()
        assert got == cfg and torch.equal(tensors["xi"], X)
        back = type(m)._from_bank(got, tensors)
        assert type(back) is type(m) and torch.equal(back.xi, m.xi) and back._bank_config()[0] == cfg
        with pytest.raises(ValueError, match="unexpected keys"):
            type(m)._from_bank({**got, "extra": 1}, tensors)
