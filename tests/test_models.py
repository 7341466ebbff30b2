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
