"""The general two-layer network (KH eq. 1-4): energy descent, dE/dt of eq. (4), fixed points,
integrators, clamping and bad input."""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from assocmem import DivergenceError, TwoLayerNetwork
from assocmem.lagrangians import (
    Exp, LayerNorm, LogSumExp, Power, Quadratic, RectifiedPower, Sigmoid, Spherical, Tanh,
)

# convex pairs whose dynamics stay bounded: (L_v factory, L_h factory)
PAIRS = [
    (lambda b: Tanh(b), lambda b: Quadratic()),
    (lambda b: Tanh(b), lambda b: LogSumExp(b)),
    (lambda b: Sigmoid(b), lambda b: Quadratic()),
    (lambda b: Sigmoid(b), lambda b: Tanh(b)),
    (lambda b: Tanh(b), lambda b: RectifiedPower(2)),
    (lambda b: Quadratic(), lambda b: LogSumExp(b)),
    (lambda b: Quadratic(), lambda b: Tanh(b)),
    (lambda b: Quadratic(), lambda b: Sigmoid(b)),
    (lambda b: Spherical(), lambda b: RectifiedPower(2)),
    (lambda b: Spherical(), lambda b: LogSumExp(b)),
    (lambda b: LayerNorm(), lambda b: LogSumExp(b)),
    (lambda b: LayerNorm(), lambda b: Tanh(b)),
]

NONSMOOTH_H = {i for i, (_, lh) in enumerate(PAIRS) if isinstance(lh(1.0), RectifiedPower)}


def make_net(seed, n_f, n_h, pair, beta, tau_ratio, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xi = torch.randn(n_h, n_f, generator=g, dtype=dtype) / math.sqrt(n_f)
    lv, lh = PAIRS[pair]
    net = TwoLayerNetwork(xi, lv(beta), lh(beta), tau_f=1.0, tau_h=tau_ratio)
    v0 = torch.randn(3, n_f, generator=g, dtype=dtype) * 2
    return net, v0


net_cases = dict(
    seed=st.integers(0, 10_000),
    n_f=st.integers(2, 12),
    n_h=st.integers(1, 12),
    pair=st.integers(0, len(PAIRS) - 1),
    beta=st.floats(0.3, 4.0),
    tau_ratio=st.sampled_from([0.2, 0.5, 1.0, 3.0]),
)


@settings(max_examples=60)
@given(**net_cases)
def test_energy_never_increases_along_rk4(seed, n_f, n_h, pair, beta, tau_ratio):
    net, v0 = make_net(seed, n_f, n_h, pair, beta, tau_ratio)
    dt = 0.04 * min(1.0, tau_ratio)
    h0 = torch.randn(3, n_h, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    tr = net.simulate(v0, h0=h0, t_max=3.0, dt=dt, tol=1e-10)
    e = tr.energy
    tol = 1e-10 + 10 * dt**4 * (1 + e.abs().max())  # rk4 local error is O(dt^5)
    assert (e[1:] - e[:-1]).max() <= tol


@settings(max_examples=50)
@example(seed=655, n_f=12, n_h=7, pair=4, beta=2.25, tau_ratio=0.2)  # a hidden current crosses 0 at step k
@given(**net_cases)
def test_energy_rate_of_eq4_matches_numerical_derivative(seed, n_f, n_h, pair, beta, tau_ratio):
    net, v0 = make_net(seed, n_f, n_h, pair, beta, tau_ratio)
    dt = 1e-3 * min(1.0, tau_ratio)
    h0 = torch.randn(3, n_h, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 2))
    tr = net.simulate(v0, h0=h0, t_max=40 * dt, dt=dt, tol=1e-14)
    if tr.steps < 40:  # converged before: nothing moves
        return
    k = 20
    numeric = (tr.energy[k + 1] - tr.energy[k - 1]) / (2 * dt)
    analytic = net.energy_rate(tr.v[k], tr.h[k])
    assert torch.all(analytic <= 1e-12)
    # max(h, 0)^2 has a kink in its curvature at h = 0, so dE/dt (eq. 4) jumps when a hidden current
    # crosses 0: a central difference across the crossing does not measure the derivative there
    smooth = torch.ones(analytic.shape[0], dtype=torch.bool)
    if pair in NONSMOOTH_H:
        smooth = ~((tr.h[k - 1] > 0) != (tr.h[k + 1] > 0)).any(-1)
    scale = analytic.abs() + 1e-6
    ok = (numeric - analytic).abs() <= 3e-3 * scale + 1e-6
    assert torch.all(ok | ~smooth), (numeric, analytic, smooth)


@pytest.mark.parametrize("method", ["rk4", "euler", "dopri5", "bosh3"])
def test_converged_state_is_fixed_point(method):
    g = torch.Generator().manual_seed(0)
    xi = torch.sign(torch.randn(6, 30, generator=g, dtype=torch.float64))
    net = TwoLayerNetwork(xi, Quadratic(), LogSumExp(0.5), tau_f=1.0, tau_h=0.2)
    cue = xi[:4] * (torch.rand(4, 30, generator=g, dtype=torch.float64) > 0.3)
    tr = net.simulate(cue, t_max=60.0, dt=0.05 if method != "euler" else 0.01, method=method, tol=1e-7)
    assert tr.converged.all()
    rh, rv = net.fixed_point_residual(tr.final_v, tr.final_h)
    assert rh.max() < 1e-6 and rv.max() < 1e-6
    # and the fixed point is the stored memory
    assert torch.equal(torch.sign(tr.final_v), xi[:4])
    assert tr.steps < 60 / 0.01  # stopped early


def test_rk4_matches_adaptive_solution():
    net, v0 = make_net(3, 8, 5, 1, 2.0, 0.5)
    a = net.simulate(v0, t_max=2.0, dt=0.01, method="rk4", tol=1e-14)
    b = net.simulate(v0, t_max=2.0, dt=0.5, method="dopri5", tol=1e-14, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.final_v, b.final_v, rtol=1e-6, atol=1e-7)
    assert a.t[-1].item() == pytest.approx(2.0) and b.t[-1].item() == pytest.approx(2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_shapes(dtype):
    g = torch.Generator().manual_seed(0)
    xi = torch.randn(7, 9, generator=g).to(dtype)
    net = TwoLayerNetwork(xi, Tanh(2.0), Quadratic(), tau_f=2.0, tau_h=0.5)
    tr = net.simulate(torch.randn(9, generator=g), t_max=1.0, dt=0.1, record_every=3)
    assert tr.v.dtype == dtype and tr.v.shape[1:] == (1, 9) and tr.h.shape[1:] == (1, 7)
    assert tr.energy.shape == (tr.t.shape[0], 1)
    assert tr.t[0] == 0 and tr.t[-1].item() == pytest.approx(1.0)
    dv, dh = net.derivatives(tr.final_v, tr.final_h)
    assert dv.shape == (1, 9) and dh.shape == (1, 7)


def test_input_current_enters_energy_and_fixed_point():
    g = torch.Generator().manual_seed(0)
    xi = torch.randn(4, 6, generator=g, dtype=torch.float64) / 3
    I = torch.randn(6, generator=g, dtype=torch.float64)
    net = TwoLayerNetwork(xi, Tanh(1.0), Quadratic(), tau_f=1.0, tau_h=0.5, input_current=I)
    tr = net.simulate(torch.zeros(2, 6, dtype=torch.float64), t_max=200, dt=0.05, tol=1e-8)
    assert tr.converged.all()
    v, h = tr.final_v, tr.final_h
    torch.testing.assert_close(v, torch.tanh(v) @ xi.T @ xi + I, atol=1e-6, rtol=0)  # v = xi^T f + I, f = h = xi g
    assert (tr.energy.diff(dim=0) <= 1e-9).all()


def test_clamped_neurons_stay_fixed():
    g = torch.Generator().manual_seed(0)
    xi = torch.sign(torch.randn(5, 20, generator=g, dtype=torch.float64))
    net = TwoLayerNetwork(xi, Quadratic(), LogSumExp(1.0), tau_f=1.0, tau_h=0.1)
    cue = xi[2].clone()
    cue[10:] = 0
    mask = torch.zeros(20, dtype=torch.bool)
    mask[:10] = True
    tr = net.simulate(cue, t_max=30, dt=0.05, clamp=mask)
    assert torch.equal(tr.v[:, 0, :10], cue[:10].expand(tr.v.shape[0], 10))
    assert torch.equal(torch.sign(tr.final_v[0, 10:]), xi[2, 10:])
    assert (tr.energy.diff(dim=0) <= 1e-9).all()


def test_bad_input_messages():
    xi = torch.randn(4, 6)
    with pytest.raises(ValueError, match="xi.*expected a 2-D"):
        TwoLayerNetwork(torch.randn(6), Quadratic(), Quadratic())
    with pytest.raises(ValueError, match="xi: 1 non-finite"):
        TwoLayerNetwork(torch.tensor([[1.0, float("nan")]]), Quadratic(), Quadratic())
    with pytest.raises(ValueError, match="tau_f.*> 0"):
        TwoLayerNetwork(xi, Quadratic(), Quadratic(), tau_f=0)
    with pytest.raises(ValueError, match="tau_h.*> 0"):
        TwoLayerNetwork(xi, Quadratic(), Quadratic(), tau_h=-1.0)
    with pytest.raises(TypeError, match="lagrangian_h.*Lagrangian"):
        TwoLayerNetwork(xi, Quadratic(), torch.tanh)
    net = TwoLayerNetwork(xi, Tanh(), Quadratic())
    with pytest.raises(ValueError, match=r"v0.*expected last dimension N_f = 6"):
        net.simulate(torch.randn(2, 5))
    with pytest.raises(ValueError, match="v0.*non-finite"):
        net.simulate(torch.tensor([[0.0, 1, 2, 3, 4, float("inf")]]))
    with pytest.raises(ValueError, match="method.*'rk4'"):
        net.simulate(torch.randn(6), method="rk5")
    with pytest.raises(ValueError, match="h0.*expected shape \\(1, 4\\)"):
        net.simulate(torch.randn(6), h0=torch.randn(2, 3))
    with pytest.raises(ValueError, match="clamp"):
        net.simulate(torch.randn(6), clamp=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="dt"):
        net.simulate(torch.randn(6), dt=0)
    with pytest.raises(ValueError, match="input_current"):
        TwoLayerNetwork(xi, Tanh(), Quadratic(), input_current=torch.randn(5))


def test_divergence_raises_clear_error():
    g = torch.Generator().manual_seed(0)
    xi = torch.randn(5, 8, generator=g, dtype=torch.float64)
    # non-convex, unbounded hidden Lagrangian and a huge step: the state blows up
    net = TwoLayerNetwork(xi, Quadratic(), Power(3), tau_f=1.0, tau_h=0.1)
    with pytest.raises(DivergenceError, match=r"diverged at step \d+ .*non-finite values in the (feature layer v|memory layer h|energy)"):
        net.simulate(torch.randn(2, 8, generator=g, dtype=torch.float64) * 3, t_max=100.0, dt=0.5)
    net = TwoLayerNetwork(xi, Quadratic(), Exp(5.0), tau_f=1.0, tau_h=1.0)
    with pytest.raises(DivergenceError):
        net.simulate(torch.ones(1, 8, dtype=torch.float64) * 5, t_max=50.0, dt=1.0, method="euler")


def test_trainable_xi_gets_gradients():
    xi = torch.nn.Parameter(torch.randn(4, 6, dtype=torch.float64) * 0.3)
    net = TwoLayerNetwork(xi, Tanh(1.0), LogSumExp(2.0), tau_f=1.0, tau_h=0.5)
    assert any(p is xi for p in net.parameters())
    tr = net.simulate(torch.randn(2, 6, dtype=torch.float64), t_max=1.0, dt=0.1, tol=1e-12)
    tr.final_v.pow(2).sum().backward()
    assert xi.grad is not None and torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0


def _generic_rk4(net, v, h, dt, clamp=None):
    from assocmem import integrators

    return integrators.rk4_step(lambda s: net.derivatives(s[0], s[1], clamp), (v, h), dt)


@settings(max_examples=25, deadline=None)
@given(**net_cases, current=st.booleans(), clamped=st.booleans())
def test_rk4_step_equals_the_generic_step(seed, n_f, n_h, pair, beta, tau_ratio, current, clamped):
    """TwoLayerNetwork.rk4_step (flat buffers, one matrix-vector product for the weighted sum) is the
    classical RK4 step of integrators.rk4_step on the same derivatives, input current and clamp."""
    net, v0 = make_net(seed, n_f, n_h, pair, beta, tau_ratio)
    g = torch.Generator().manual_seed(seed + 1)
    if current:
        net.input_current = torch.randn(n_f, generator=g, dtype=torch.float64)
    clamp = (torch.rand(3, n_f, generator=g) < 0.4) if clamped else None
    h0 = torch.randn(3, n_h, generator=g, dtype=torch.float64)
    v_before, h_before = v0.clone(), h0.clone()
    for dt in (0.05, 0.013):
        v1, h1 = net.rk4_step(v0, h0, dt, clamp)
        rv, rh = _generic_rk4(net, v0, h0, dt, clamp)
        torch.testing.assert_close(v1, rv, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h1, rh, rtol=1e-12, atol=1e-12)
        if clamped:
            assert torch.equal(v1[clamp], v0[clamp])
    assert torch.equal(v0, v_before) and torch.equal(h0, h_before)  # inputs never written


def test_rk4_step_chains_threads_and_autograd():
    g = torch.Generator().manual_seed(3)
    xi = torch.randn(30, 12, generator=g, dtype=torch.float64) / 4
    net = TwoLayerNetwork(xi, Tanh(1.0), LogSumExp(2.0), tau_f=1.0, tau_h=0.3)
    v, h = torch.randn(5, 12, generator=g, dtype=torch.float64), torch.randn(5, 30, generator=g, dtype=torch.float64)
    # a chain of steps (each output is read as one flat state, not copied) equals the generic chain
    a, b = (v, h), (v, h)
    for _ in range(20):
        a = net.rk4_step(*a, 0.1)
        b = _generic_rk4(net, *b, 0.1)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # an earlier step's output is not overwritten by later steps
    first = net.rk4_step(v, h, 0.1)
    kept = tuple(x.clone() for x in first)
    net.rk4_step(*first, 0.1)
    net.rk4_step(v * 2, h, 0.1)
    assert all(torch.equal(x, y) for x, y in zip(first, kept))
    # the same shape stepped in several threads at once (scratch is per thread)
    import concurrent.futures as cf

    cues = [torch.randn(5, 12, generator=g, dtype=torch.float64) for _ in range(8)]
    want = [_generic_rk4(net, c, h, 0.1) for c in cues]

    def run(c):
        out = (c, h)
        for _ in range(200):
            out = net.rk4_step(c, h, 0.1)
        return out

    with cf.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(run, cues))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    # with a trainable xi the step is recorded by autograd (the generic step), same values
    p = torch.nn.Parameter(xi.clone())
    tnet = TwoLayerNetwork(p, Tanh(1.0), LogSumExp(2.0), tau_f=1.0, tau_h=0.3)
    v1, h1 = tnet.rk4_step(v, h, 0.1)
    torch.testing.assert_close((v1, h1), net.rk4_step(v, h, 0.1), rtol=1e-12, atol=1e-12)
    (v1.sum() + h1.sum()).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_simulate_flat_rk4_equals_generic_rk4():
    """simulate's rk4 (flat buffers, no autograd) and the generic step it takes when xi is trainable
    follow the same trajectory."""
    g = torch.Generator().manual_seed(4)
    xi = torch.randn(20, 10, generator=g, dtype=torch.float64) / 3
    cue = torch.randn(4, 10, generator=g, dtype=torch.float64)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[:3] = True
    kw = dict(t_max=3.0, dt=0.05, tol=1e-12, clamp=mask)
    fast = TwoLayerNetwork(xi, Quadratic(), LogSumExp(1.5), tau_f=1.0, tau_h=0.2).simulate(cue, **kw)
    slow = TwoLayerNetwork(torch.nn.Parameter(xi.clone()), Quadratic(), LogSumExp(1.5), tau_f=1.0, tau_h=0.2).simulate(cue, **kw)
    assert fast.steps == slow.steps == 60 and fast.nfe == slow.nfe
    for a, b in ((fast.v, slow.v), (fast.h, slow.h), (fast.energy, slow.energy)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)
    assert torch.equal(fast.v[:, :, :3], cue[:, :3].expand(61, -1, -1))


def test_rk4_step_bad_input():
    net = TwoLayerNetwork(torch.randn(4, 6), Tanh(), Quadratic())
    with pytest.raises(ValueError, match=r"v, h: got .*expected shapes \(B, 6\) and \(B, 4\)"):
        net.rk4_step(torch.randn(2, 5), torch.randn(2, 4), 0.1)
    with pytest.raises(ValueError, match=r"v, h: got .*expected shapes"):
        net.rk4_step(torch.randn(2, 6), torch.randn(3, 4), 0.1)
    with pytest.raises(ValueError, match=r"v, h: got .*dtype torch.float32"):
        net.rk4_step(torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="dt"):
        net.rk4_step(torch.randn(2, 6), torch.randn(2, 4), 0.0)


def test_rk4_step_rejects_bad_clamp_and_current():
    net = TwoLayerNetwork(torch.randn(4, 6), Tanh(), Quadratic())
    v, h = torch.randn(2, 6), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"clamp: got .*expected a bool mask of shape \(6,\) or \(2, 6\)"):
        net.rk4_step(v, h, 0.1, clamp=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="clamp"):
        net.rk4_step(v, h, 0.1, clamp=torch.ones(3, 6, dtype=torch.bool))
    net = TwoLayerNetwork(torch.randn(4, 6), Tanh(), Quadratic(), input_current=torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"input_current: got .*expected batch size 2"):
        net.rk4_step(v, h, 0.1)
    # a good clamp holds the clamped neurons
    mask = torch.zeros(6, dtype=torch.bool)
    mask[:2] = True
    net = TwoLayerNetwork(torch.randn(4, 6), Tanh(), Quadratic())
    assert torch.equal(net.rk4_step(v, h, 0.1, clamp=mask)[0][:, :2], v[:, :2])
