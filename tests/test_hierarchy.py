"""Networks of any number of layers (Krotov 2021, Hierarchical Associative Memory): the energy and
-dE/dg against an independent computation, the two-layer case against TwoLayerNetwork, energy
descent (KH eq. 4 term by term) on random graphs, every catalog Lagrangian on every layer,
convolutional synapses, clamps and currents per layer, integrators, per-row convergence, the
effective energy with a fast layer integrated out, banks, gradients and bad input."""
import math
import signal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import assocmem
from assocmem import DivergenceError, TwoLayerNetwork
from assocmem.integrators import MAX_STEPS
from assocmem.integrators import rk4_step as generic_rk4
from assocmem.lagrangians import (
    CATALOG, Exp, LayerNorm, LogSumExp, Power, Quadratic, RectifiedPower, Sigmoid, Spherical, Tanh,
)
from assocmem.network import ConvSynapse, Layer, Network, NetworkTrajectory, Synapse

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one intra-op thread (see conftest)."""


def rnd(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D) * scale


# ---------------------------------------------------------------------------------------------------
# against an independent computation: four layers with a skip connection
# ---------------------------------------------------------------------------------------------------
# Lagrangians written here from their definitions (not the library's): value L(x); the activation
# is its autograd gradient, the Hessian its autograd Hessian
REF_L = {
    "v": lambda x: 0.5 * (x * x).sum(-1),                                  # Quadratic
    "h1": lambda x: (torch.log(torch.cosh(1.5 * x)) / 1.5).sum(-1),         # Tanh(1.5)
    "h2": lambda x: (torch.log1p(torch.exp(0.7 * x)) / 0.7).sum(-1),        # Sigmoid(0.7)
    "h3": lambda x: torch.logsumexp(2.0 * x, -1) / 2.0,                     # LogSumExp(2)
}
SIZES = {"v": 7, "h1": 5, "h2": 4, "h3": 3}
TAUS = {"v": 1.0, "h1": 0.5, "h2": 0.3, "h3": 0.1}
EDGES = [("h1", "v"), ("h2", "h1"), ("h3", "h2"), ("h2", "v")]  # a chain and a skip connection v -> h2


def four_layer(seed=0):
    layers = {"v": Layer(Quadratic(), 7, tau=1.0), "h1": Layer(Tanh(1.5), 5, tau=0.5),
              "h2": Layer(Sigmoid(0.7), 4, tau=0.3), "h3": Layer(LogSumExp(2.0), 3, tau=0.1)}
    ws = [rnd(SIZES[u], SIZES[l], seed=seed + i, scale=0.6) for i, (u, l) in enumerate(EDGES)]
    return Network(layers, [Synapse(u, l, w) for (u, l), w in zip(EDGES, ws)]), ws


def ref_activation(name, x):
    """dL/dx by autograd, differentiable in x when x requires grad."""
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(REF_L[name](xg).sum(), xg, create_graph=True)
    return g


def ref_energy(xs, ws, currents):
    """E = sum_l [x_l . g_l - L_l(x_l)] - sum_edges g_u . W g_l - sum_l I_l . g_l, from the definition."""
    gs = {n: ref_activation(n, x) for n, x in xs.items()}
    e = sum((xs[n] * gs[n]).sum(-1) - REF_L[n](xs[n]) for n in xs)
    for (u, l), w in zip(EDGES, ws):
        e = e - torch.einsum("bi,ij,bj->b", gs[u], w, gs[l])
    for n, cur in currents.items():
        e = e - (cur * gs[n]).sum(-1)
    return e


def test_energy_and_minus_dE_dg_match_an_independent_computation():
    net, ws = four_layer()
    B = 3
    xs = {n: rnd(B, s, seed=10 + i, scale=1.3) for i, (n, s) in enumerate(SIZES.items())}
    currents = {"v": rnd(7, seed=20), "h2": rnd(B, 4, seed=21)}
    e = net.energy(xs, input_current=currents)
    torch.testing.assert_close(e, ref_energy(xs, ws, currents).detach(), rtol=0, atol=1e-10)
    # -dE/dg_l: autograd of the reference energy w.r.t. x_l is Hess(L_l) dE/dg_l; solve for dE/dg_l
    # (every Hessian here is invertible but the softmax layer's, whose Hessian has the zero mode 1:
    # compare there through the Hessian, which is what the dynamics' energy argument uses)
    d = net.derivatives(xs, input_current=currents)
    for n in SIZES:
        x = xs[n].clone().requires_grad_(True)
        (dE_dx,) = torch.autograd.grad(ref_energy({**xs, n: x}, ws, currents).sum(), x)
        for b in range(B):
            H = torch.autograd.functional.hessian(REF_L[n], xs[n][b])
            minus_dE_dg = TAUS[n] * d[n][b]  # tau dx/dt = -dE/dg
            if n == "h3":
                torch.testing.assert_close(H @ minus_dE_dg, -dE_dx[b], rtol=0, atol=1e-10)
            else:
                torch.testing.assert_close(minus_dE_dg, -torch.linalg.solve(H, dE_dx[b]), rtol=0, atol=1e-10)
    # and the same from the library's dx/dt: tau dx/dt = inputs - x + I written out
    gs = {n: ref_activation(n, x).detach() for n, x in xs.items()}
    for n in SIZES:
        u = torch.zeros(B, SIZES[n], dtype=D)
        for (a, b_), w in zip(EDGES, ws):
            if a == n:
                u = u + gs[b_] @ w.T
            if b_ == n:
                u = u + gs[a] @ w
        want = (u - xs[n] + currents.get(n, 0.0)) / TAUS[n]
        torch.testing.assert_close(d[n], want, rtol=0, atol=1e-10)


def test_energy_rate_is_minus_sum_of_curvatures_and_matches_the_time_derivative():
    net, ws = four_layer(seed=3)
    xs = {n: rnd(2, s, seed=30 + i) for i, (n, s) in enumerate(SIZES.items())}
    rate = net.energy_rate(xs)
    d = net.derivatives(xs)
    # dE/dt = sum_l dE/dx_l . dx_l/dt by autograd of the reference energy
    x = {n: t.clone().requires_grad_(True) for n, t in xs.items()}
    e = ref_energy(x, ws, {})
    grads = torch.autograd.grad(e.sum(), list(x.values()))
    chain = sum((g * d[n]).sum(-1) for g, n in zip(grads, x))
    torch.testing.assert_close(rate, chain, rtol=0, atol=1e-10)
    assert (rate <= 0).all()


# ---------------------------------------------------------------------------------------------------
# two layers: the same as TwoLayerNetwork
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lv,lh,alpha", [(Quadratic(), LogSumExp(1.5), 1.0), (Tanh(2.0), RectifiedPower(3), 1.0),
                                         (Spherical(), Power(4), 0.4), (LayerNorm(), Tanh(1.0), 1.0)])
def test_two_layer_network_equals_twolayernetwork(lv, lh, alpha):
    xi = rnd(9, 6, seed=1, scale=0.5)
    cur = rnd(6, seed=2)
    two = TwoLayerNetwork(xi, lv, lh, tau_f=1.0, tau_h=0.25, alpha=alpha, input_current=cur)
    net = Network({"v": Layer(lv, 6, tau=1.0, alpha=alpha), "h": Layer(lh, 9, tau=0.25)}, [Synapse("h", "v", xi)])
    v, h = rnd(4, 6, seed=3), rnd(4, 9, seed=4)
    states, I = {"v": v, "h": h}, {"v": cur}
    torch.testing.assert_close(net.energy(states, input_current=I), two.energy(v, h), rtol=0, atol=1e-12)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(5)) < 0.3
    dv, dh = two.derivatives(v, h, mask)
    d = net.derivatives(states, clamp={"v": mask}, input_current=I)
    torch.testing.assert_close((d["v"], d["h"]), (dv, dh), rtol=0, atol=1e-12)
    torch.testing.assert_close(net.energy_rate(states, input_current=I), two.energy_rate(v, h), rtol=0, atol=1e-12)
    rh, rv = two.fixed_point_residual(v, h)
    r = net.fixed_point_residual(states, input_current=I)
    torch.testing.assert_close((r["h"], r["v"]), (rh, rv), rtol=0, atol=1e-12)
    for method in ("rk4", "euler", "dopri5"):
        a = two.simulate(v, t_max=1.5, dt=0.05, method=method, clamp=mask, tol=1e-12)
        b = net.simulate({"v": v}, t_max=1.5, dt=0.05, method=method, clamp={"v": mask}, input_current=I, tol=1e-12)
        assert isinstance(b, NetworkTrajectory) and a.steps == b.steps and a.nfe == b.nfe
        for x, y in ((a.t, b.t), (a.v, b.states["v"]), (a.h, b.states["h"]), (a.energy, b.energy)):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    # and TwoLayerNetwork is that Network: its network form gives the same
    assert isinstance(two, Network) and two.layer_names == ("v", "h")
    torch.testing.assert_close(two.energy(states), net.energy(states, input_current=I), rtol=0, atol=1e-12)
    tr = two.simulate({"v": v}, t_max=0.5, dt=0.05)
    assert isinstance(tr, NetworkTrajectory)
    torch.testing.assert_close(tr.states["h"], two.simulate(v, t_max=0.5, dt=0.05).h, rtol=0, atol=1e-12)


def test_twolayernetwork_views_and_parameter_names():
    xi = torch.nn.Parameter(rnd(4, 6))
    two = TwoLayerNetwork(xi, Tanh(), LogSumExp(), tau_f=2.0, tau_h=0.5)
    assert [n for n, _ in two.named_parameters()] == ["xi"]  # unchanged by being a Network
    assert two.synapses[0].xi is xi and (two.synapses[0].upper, two.synapses[0].lower) == ("h", "v")
    assert two.layers["v"].lagrangian is two.lagrangian_v and two.layers["h"].tau == 0.5
    assert two.layers["h"].size == 4 and two.layers["v"].size == 6


# ---------------------------------------------------------------------------------------------------
# energy descent on random graphs (KH eq. 4, term by term)
# ---------------------------------------------------------------------------------------------------
# convex Lagrangians with bounded activations: bounded dynamics on any layer (LogSumExp, Spherical,
# LayerNorm are not additive); the bottom layer may also be quadratic
BOUNDED = [lambda b: Tanh(b), lambda b: Sigmoid(b), lambda b: LogSumExp(b), lambda b: Spherical(), lambda b: LayerNorm()]
BOTTOM = BOUNDED + [lambda b: Quadratic()]


def random_graph(seed, n_layers, sizes, lag_idx, beta, taus, extra_edges, dtype=D):
    g = torch.Generator().manual_seed(seed)
    names = [f"l{i}" for i in range(n_layers)]
    layers = {}
    for i, n in enumerate(names):
        make = BOTTOM[lag_idx[i] % len(BOTTOM)] if i == 0 else BOUNDED[lag_idx[i] % len(BOUNDED)]
        layers[n] = Layer(make(beta), sizes[i], tau=taus[i])
    edges = [(names[i + 1], names[i]) for i in range(n_layers - 1)]
    for a, b in extra_edges:
        lo, hi = min(a, b) % n_layers, max(a, b) % n_layers
        if lo != hi and (names[hi], names[lo]) not in edges:
            edges.append((names[hi], names[lo]))
    syn = [Synapse(u, l, torch.randn(layers[u].size, layers[l].size, generator=g, dtype=dtype) / math.sqrt(layers[l].size))
           for u, l in edges]
    net = Network(layers, syn)
    x0 = {n: torch.randn(3, layers[n].size, generator=g, dtype=dtype) * 2 for n in names}
    return net, x0


graphs = dict(
    seed=st.integers(0, 10_000),
    n_layers=st.integers(3, 5),
    sizes=st.lists(st.integers(1, 9), min_size=5, max_size=5),
    lag_idx=st.lists(st.integers(0, 5), min_size=5, max_size=5),
    beta=st.floats(0.3, 3.0),
    taus=st.lists(st.sampled_from([0.2, 0.5, 1.0, 2.0]), min_size=5, max_size=5),
    extra_edges=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), max_size=3),
)


@settings(max_examples=40, deadline=None)
@given(**graphs)
def test_energy_never_increases_on_random_graphs(seed, n_layers, sizes, lag_idx, beta, taus, extra_edges):
    net, x0 = random_graph(seed, n_layers, sizes, lag_idx, beta, taus, extra_edges)
    dt = 0.02 * min(taus[:n_layers])
    tr = net.simulate(x0, t_max=60 * dt, dt=dt, tol=1e-12)
    e = tr.energy
    assert (e[1:] - e[:-1]).max() <= 1e-10 + 10 * dt ** 4 * (1 + e.abs().max())  # rk4: O(dt^5) per step
    assert (net.energy_rate(tr.final) <= 1e-12).all()


@settings(max_examples=25, deadline=None)
@given(**graphs)
def test_energy_rate_matches_the_numerical_derivative_on_random_graphs(seed, n_layers, sizes, lag_idx, beta, taus, extra_edges):
    net, x0 = random_graph(seed, n_layers, sizes, lag_idx, beta, taus, extra_edges)
    dt = 1e-3 * min(taus[:n_layers])
    tr = net.simulate(x0, t_max=20 * dt, dt=dt, tol=1e-14)
    if tr.steps < 20:
        return
    k = 10
    numeric = (tr.energy[k + 1] - tr.energy[k - 1]) / (2 * dt)
    analytic = net.energy_rate({n: s[k] for n, s in tr.states.items()})
    assert (analytic <= 1e-12).all()
    torch.testing.assert_close(numeric, analytic, rtol=3e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# every catalog Lagrangian on every layer
# ---------------------------------------------------------------------------------------------------
def _catalog_instance(name):
    cls = CATALOG[name]
    return {"Power": lambda: Power(2), "RectifiedPower": lambda: RectifiedPower(2), "Exp": lambda: Exp(0.5)}.get(name, cls)()


@pytest.mark.parametrize("name", sorted(CATALOG))
@pytest.mark.parametrize("where", ["v", "h1", "h2"])
def test_every_catalog_lagrangian_on_every_layer(name, where):
    lags = {"v": Quadratic(), "h1": Tanh(1.0), "h2": LogSumExp(1.0)}
    lags[where] = _catalog_instance(name)
    sizes = {"v": 6, "h1": 5, "h2": 4}
    layers = {n: Layer(lags[n], sizes[n], tau=[1.0, 0.5, 0.2][i]) for i, n in enumerate(sizes)}
    net = Network(layers, [Synapse("h1", "v", rnd(5, 6, seed=1, scale=0.3)), Synapse("h2", "h1", rnd(4, 5, seed=2, scale=0.3))])
    x0 = {n: rnd(2, s, seed=3 + i, scale=0.5) for i, (n, s) in enumerate(sizes.items())}
    assert torch.isfinite(net.energy(x0)).all()
    assert {k: v.shape for k, v in net.derivatives(x0).items()} == {k: v.shape for k, v in x0.items()}
    tr = net.simulate(x0, t_max=0.4, dt=0.01, tol=1e-12)
    assert tr.steps == 40 and torch.isfinite(tr.energy).all()
    # dE/dt <= 0 where the theory promises it: convex Lagrangians (KH eq. 4); Abs and Heaviside
    # have activations with jumps, where the energy may jump by a step's worth
    if lags[where].convex and name not in ("Abs", "Heaviside"):
        assert (tr.energy.diff(dim=0) <= 1e-9).all()
        assert (net.energy_rate(x0) <= 1e-12).all()


# ---------------------------------------------------------------------------------------------------
# convolutional synapses
# ---------------------------------------------------------------------------------------------------
def conv_net(seed=0, stride=2, padding=1):
    layers = {"img": Layer(Quadratic(), (2, 7, 6)), "f": Layer(Tanh(1.0), (3, 4, 3), tau=0.3),
              "m": Layer(LogSumExp(2.0), 5, tau=0.1)}
    k = rnd(3, 2, 3, 3, seed=seed, scale=0.3)
    w = rnd(5, 36, seed=seed + 1, scale=0.2)
    return Network(layers, [ConvSynapse("f", "img", k, stride=stride, padding=padding), Synapse("m", "f", w),
                            Synapse("m", "img", rnd(5, 84, seed=seed + 2, scale=0.1))]), k, w


def test_conv_synapse_energy_and_derivatives_against_autograd():
    net, k, _ = conv_net()
    xs = {"img": rnd(2, 2, 7, 6, seed=5), "f": rnd(2, 3, 4, 3, seed=6), "m": rnd(2, 5, seed=7)}
    g = net.activations(xs)
    # the conv term written here: -<g_f, conv2d(g_img)>; the other terms from the library
    gi = g["img"].clone().requires_grad_(True)
    gf = g["f"].clone().requires_grad_(True)
    term = -(torch.nn.functional.conv2d(gi, k, stride=2, padding=1) * gf).sum()
    d_img, d_f = torch.autograd.grad(term, (gi, gf))
    syn = net.synapses
    dense_into_img = (g["m"] @ syn[2].xi).reshape(2, 2, 7, 6)
    dense_into_f = (g["m"] @ syn[1].xi).reshape(2, 3, 4, 3)
    d = net.derivatives(xs)
    torch.testing.assert_close(d["img"], -d_img + dense_into_img - xs["img"], rtol=0, atol=1e-12)
    torch.testing.assert_close(d["f"] * 0.3, -d_f + dense_into_f - xs["f"], rtol=0, atol=1e-12)
    e_conv = (torch.nn.functional.conv2d(g["img"], k, stride=2, padding=1) * g["f"]).flatten(1).sum(-1)
    e_no_conv = Network(dict(net.layers), [Synapse("m", "f", syn[1].xi), Synapse("m", "img", syn[2].xi)]).energy(xs)
    torch.testing.assert_close(net.energy(xs), e_no_conv - e_conv, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((2, 1), (0, 1))])
def test_conv_network_descends_and_converges(stride, padding):
    layers = {"img": Layer(Quadratic(), (1, 6, 6)), "f": Layer(Tanh(1.0), (2,) + _out((6, 6), (3, 3), stride, padding), tau=0.3)}
    f_size = math.prod(layers["f"].shape)
    layers["m"] = Layer(LogSumExp(2.0), 4, tau=0.1)
    net = Network(layers, [ConvSynapse("f", "img", rnd(2, 1, 3, 3, seed=1, scale=0.4), stride=stride, padding=padding),
                           Synapse("m", "f", rnd(4, f_size, seed=2, scale=0.3))])
    tr = net.simulate({"img": rnd(3, 1, 6, 6, seed=3)}, t_max=150.0, dt=0.05, tol=1e-7)
    assert (tr.energy.diff(dim=0) <= 1e-10).all() and tr.converged.all()
    r = net.fixed_point_residual(tr.final)
    assert all(v.max() < 1e-6 for v in r.values())


def _out(hw, k, stride, padding):
    s = stride if isinstance(stride, tuple) else (stride, stride)
    p = padding if isinstance(padding, tuple) else (padding, padding)
    return tuple((n + 2 * pp - kk) // ss + 1 for n, kk, ss, pp in zip(hw, k, s, p))


# ---------------------------------------------------------------------------------------------------
# clamps, currents, integrators, convergence per row
# ---------------------------------------------------------------------------------------------------
def chain3(seed=0, dtype=D):
    layers = {"v": Layer(Quadratic(), 8), "h1": Layer(Tanh(1.0), 6, tau=0.5), "h2": Layer(LogSumExp(2.0), 4, tau=0.2)}
    return Network(layers, [Synapse("h1", "v", rnd(6, 8, seed=seed, scale=0.3).to(dtype)),
                            Synapse("h2", "h1", rnd(4, 6, seed=seed + 1).to(dtype))])


def test_clamp_and_input_current_on_any_layer():
    net = chain3()
    x0 = {"v": rnd(2, 8, seed=3), "h1": rnd(2, 6, seed=4)}
    mask_h1 = torch.zeros(6, dtype=torch.bool)
    mask_h1[:3] = True
    J = rnd(2, 4, seed=5)
    tr = net.simulate(x0, t_max=150.0, dt=0.05, clamp={"h1": mask_h1}, input_current={"h2": J}, tol=1e-8)
    assert tr.converged.all()
    h1 = tr.states["h1"]
    assert torch.equal(h1[:, :, :3], x0["h1"][:, :3].expand(h1.shape[0], -1, -1))  # held exactly
    assert (tr.energy.diff(dim=0) <= 1e-10).all()
    # at the fixed point the current enters the top layer's state: h2 = xi2 g(h1) + J
    fin = tr.final
    xi2 = net.synapses[1].xi
    torch.testing.assert_close(fin["h2"], torch.tanh(fin["h1"]) @ xi2.T + J, rtol=0, atol=1e-7)
    r = net.fixed_point_residual(fin, input_current={"h2": J})
    assert r["h2"].max() < 1e-7 and r["v"].max() < 1e-7
    assert r["h1"].max() > 1e-3  # the clamped neurons are not at their own fixed point


@pytest.mark.parametrize("method", ["euler", "dopri5", "bosh3"])
def test_integrators_agree(method):
    net = chain3()
    x0 = {"v": rnd(3, 8, seed=7)}
    ref = net.simulate(x0, t_max=2.0, dt=0.01, method="rk4", tol=1e-14)
    kw = {"euler": dict(dt=0.002), "dopri5": dict(dt=0.5, rtol=1e-10, atol=1e-12), "bosh3": dict(dt=0.5, rtol=1e-7, atol=1e-9)}[method]
    tr = net.simulate(x0, t_max=2.0, method=method, tol=1e-14, **kw)
    assert tr.t[-1].item() == pytest.approx(2.0)
    tol = {"euler": 5e-3, "dopri5": 1e-7, "bosh3": 1e-4}[method]
    for n in ref.states:
        torch.testing.assert_close(tr.final[n], ref.final[n], rtol=tol, atol=tol)


def test_convergence_is_per_batch_row():
    net = chain3()
    moving = rnd(1, 8, seed=9)
    fixed = net.simulate({"v": rnd(1, 8, seed=10)}, t_max=200.0, dt=0.05, tol=1e-12).final
    x0 = {n: torch.cat([fixed[n], (moving if n == "v" else net.simulate({"v": moving}, t_max=0.01, dt=0.01).final[n])])
          for n in fixed}
    tr = net.simulate(x0, t_max=0.5, dt=0.05, tol=1e-8)
    assert tr.converged.tolist() == [True, False] and tr.steps == 10


def test_rk4_step_equals_the_generic_step_and_chains():
    net = chain3()
    x = {"v": rnd(3, 8, seed=1), "h1": rnd(3, 6, seed=2), "h2": rnd(3, 4, seed=3)}
    mask = {"h1": torch.rand(3, 6, generator=torch.Generator().manual_seed(4)) < 0.5}
    cur = {"v": rnd(8, seed=5)}
    a, b = x, tuple(x.values())
    clamps = net._clamps(mask, 3)
    currents = net._currents(cur, 3)
    for _ in range(5):
        a = net.rk4_step(a, 0.05, clamp=mask, input_current=cur)
        b = generic_rk4(lambda s: net._derivs(s, clamps, currents), b, 0.05)
    for n, y in zip(a, b):
        torch.testing.assert_close(a[n], y, rtol=1e-12, atol=1e-12)
    assert torch.equal(a["h1"][mask["h1"]], x["h1"][mask["h1"]])


# ---------------------------------------------------------------------------------------------------
# the effective energy: a fast top layer integrated out (KH section 3 applied to the top layer)
# ---------------------------------------------------------------------------------------------------
def test_effective_energy_is_the_energy_at_the_fast_layers_steady_state():
    net, ws = four_layer(seed=4)
    xs = {n: rnd(3, s, seed=40 + i) for i, (n, s) in enumerate(SIZES.items())}
    J = rnd(3, seed=45)
    for top, below in (("h3", [("h2", ws[2])]),):
        steady = sum(torch.sigmoid(0.7 * xs[b]) @ w.T for b, w in below) + J
        full = net.energy({**xs, top: steady}, input_current={top: J})
        torch.testing.assert_close(net.effective_energy(xs, top, input_current={top: J}), full, rtol=0, atol=1e-12)
    # a middle layer with two neighbours and a skip: h1 (inputs from v and h2)
    g = net.activations(xs)
    u = g["v"] @ ws[0].T + g["h2"] @ ws[1]
    torch.testing.assert_close(net.effective_energy(xs, "h1"), net.energy({**xs, "h1": u}), rtol=0, atol=1e-12)
    # -L_top(xi g): the KH eq. (13) form when the top layer is a softmax layer
    e_top = -torch.logsumexp(2.0 * (g["h2"] @ ws[2].T), -1) / 2.0
    rest = Network({n: net.layers[n] for n in ("v", "h1", "h2")},
                   [Synapse("h1", "v", ws[0]), Synapse("h2", "h1", ws[1]), Synapse("h2", "v", ws[3])])
    torch.testing.assert_close(net.effective_energy(xs, "h3"),
                               rest.energy({n: xs[n] for n in ("v", "h1", "h2")}) + e_top, rtol=0, atol=1e-12)


def _reduced_field(net, top):
    """The reduced dynamics from the effective energy alone: tau_l dx_l/dt = -dE_eff/dg_l, with
    dE_eff/dg_l = Hess(L_l)^-1 dE_eff/dx_l (autograd; the layers kept are additive, so the Hessian
    is the diagonal d g_i / d x_i, one Jacobian-vector product with ones)."""
    names = [n for n in net.layer_names if n != top]
    layers = net.layers

    def field(state):
        xs = {n: s.detach().requires_grad_(True) for n, s in zip(names, state)}
        with torch.enable_grad():
            grads = torch.autograd.grad(net.effective_energy(xs, top).sum(), list(xs.values()))
        out = []
        for n, gx, x in zip(names, grads, state):
            lag = layers[n].lagrangian
            _, hdiag = torch.func.jvp(lag.activation, (x.detach(),), (torch.ones_like(x),))
            out.append(-(gx / hdiag) / layers[n].tau)
        return tuple(out)

    return names, field


def test_full_dynamics_approach_the_effective_dynamics_as_the_top_layer_gets_fast():
    g = torch.Generator().manual_seed(11)
    xi1 = torch.randn(6, 8, generator=g, dtype=D) * 0.4
    xi2 = torch.randn(5, 6, generator=g, dtype=D)
    x0 = {"v": torch.randn(2, 8, generator=g, dtype=D), "h1": torch.randn(2, 6, generator=g, dtype=D)}

    def net_with(tau_top):
        return Network({"v": Layer(Tanh(0.8), 8, tau=1.0), "h1": Layer(Sigmoid(1.0), 6, tau=0.5),
                        "h2": Layer(LogSumExp(3.0), 5, tau=tau_top)},
                       [Synapse("h1", "v", xi1), Synapse("h2", "h1", xi2)])

    names, field = _reduced_field(net_with(1.0), "h2")
    # the reduced trajectory (rk4 on -dE_eff/dg), t in [0, 1]
    y = tuple(x0[n] for n in names)
    dt = 0.005
    for _ in range(200):
        y = generic_rk4(field, y, dt)
    errors = []
    for tau in (1e-1, 1e-2, 2e-3):
        net = net_with(tau)
        tr = net.simulate(x0, t_max=1.0, dt=min(dt, tau / 5), tol=1e-14)  # h2 starts at its steady state
        errors.append(max(float((tr.final[n] - yy).abs().max()) for n, yy in zip(names, y)))
        if tau == 2e-3:  # along the way the full energy approaches the effective one
            mid = len(tr.t) // 2
            state = {n: tr.states[n][mid] for n in net.layer_names}
            torch.testing.assert_close(net.energy(state), net.effective_energy(state, "h2"), rtol=0, atol=1e-6)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 5e-4, errors
    assert errors[1] / errors[2] > 3, errors  # first order in tau_top (5x smaller tau)


# ---------------------------------------------------------------------------------------------------
# banks, gradients, reliability, bad input
# ---------------------------------------------------------------------------------------------------
def test_bank_round_trip_and_append(tmp_path):
    net, _, _ = conv_net()
    net.layers["f"].tau = torch.nn.Parameter(torch.tensor(0.3, dtype=D))
    net.synapses[1].xi = torch.nn.Parameter(net.synapses[1].xi.clone())
    xs = {"img": rnd(2, 2, 7, 6, seed=5), "f": rnd(2, 3, 4, 3, seed=6), "m": rnd(2, 5, seed=7)}
    net.save(tmp_path / "conv.safetensors")
    back = assocmem.load(tmp_path / "conv.safetensors")
    assert type(back) is Network and back.layer_names == net.layer_names
    torch.testing.assert_close(back.energy(xs), net.energy(xs), rtol=0, atol=0)
    assert isinstance(back.layers["f"].tau, torch.nn.Parameter) and isinstance(back.synapses[1].xi, torch.nn.Parameter)
    assert isinstance(back.synapses[0], ConvSynapse) and back.synapses[0].stride == (2, 2)
    # appending rows to the first synapse's weight adds memory neurons to its upper layer
    top = Network({"v": Layer(Quadratic(), 8), "h1": Layer(Tanh(1.0), 6, tau=0.5), "mem": Layer(LogSumExp(2.0), 4, tau=0.1)},
                  [Synapse("mem", "h1", rnd(4, 6, seed=1)), Synapse("h1", "v", rnd(6, 8, seed=2, scale=0.3))])
    bank = top.save(tmp_path / "chain")
    assert (bank.n_memories, bank.n_features) == (4, 6)
    bank.append(rnd(3, 6, seed=3))
    grown = assocmem.load(tmp_path / "chain")
    assert grown.layers["mem"].size == 7
    torch.testing.assert_close(grown.synapses[0].xi[:4], top.synapses[0].xi, rtol=0, atol=0)
    tr = grown.simulate({"v": rnd(2, 8, seed=4)}, t_max=1.0, dt=0.05)
    assert tr.states["mem"].shape[-1] == 7


def test_parameters_get_gradients_through_simulate():
    xi1 = torch.nn.Parameter(rnd(6, 8, seed=1, scale=0.3))
    tau = torch.nn.Parameter(torch.tensor(0.5, dtype=D))
    beta = torch.nn.Parameter(torch.tensor(2.0, dtype=D))
    net = Network({"v": Layer(Quadratic(), 8), "h1": Layer(Tanh(1.0), 6, tau=tau), "h2": Layer(LogSumExp(beta), 4, tau=0.2)},
                  [Synapse("h1", "v", xi1), Synapse("h2", "h1", rnd(4, 6, seed=2))])
    assert {n for n, _ in net.named_parameters()} == {"layers.h1.tau", "layers.h2.lagrangian.beta", "synapses.0.xi"}
    tr = net.simulate({"v": rnd(2, 8, seed=3)}, t_max=0.5, dt=0.05, tol=1e-12)
    tr.final["v"].pow(2).sum().backward()
    for p in (xi1, tau, beta):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def _fails_fast(seconds):
    """Turn a call that does not return into a failure (SIGALRM) instead of a hung test run."""

    def handler(signum, frame):
        raise TimeoutError(f"did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    return old


def test_tiny_dt_is_refused_not_run_forever():
    """Regression: simulate(t_max=1, dt=1e-30) looped over 10^30 steps. Refused with a ValueError
    naming dt and t_max (fixed-step and adaptive methods, TwoLayerNetwork and Network)."""
    two = TwoLayerNetwork(rnd(4, 6), Tanh(), LogSumExp())
    net = chain3()
    old = _fails_fast(20)
    try:
        for method in ("rk4", "euler", "dopri5"):
            with pytest.raises(ValueError, match=r"dt, t_max: .*1e-30.*expected at most 10,000,000 steps"):
                two.simulate(rnd(6), t_max=1.0, dt=1e-30, method=method)
            with pytest.raises(ValueError, match=r"dt, t_max: "):
                net.simulate({"v": rnd(8)}, t_max=1.0, dt=1e-30, method=method)
        with pytest.raises(ValueError, match=r"dt, t_max: .*inf steps"):
            two.simulate(rnd(6), t_max=1e300, dt=1e-300)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert MAX_STEPS == 10_000_000
    # at the limit it is accepted (and stops at once: the start is a fixed point)
    still = TwoLayerNetwork(torch.zeros(4, 6, dtype=D), Tanh(), Quadratic())
    tr = still.simulate(torch.zeros(6, dtype=D), t_max=MAX_STEPS * 0.5, dt=0.5)
    assert tr.steps == 0 and tr.converged.all()


def test_divergence_names_the_layer():
    net = Network({"v": Layer(Quadratic(), 4), "h1": Layer(Exp(3.0), 3, tau=1.0), "h2": Layer(Tanh(), 2)},
                  [Synapse("h1", "v", rnd(3, 4, seed=1, scale=3.0)), Synapse("h2", "h1", rnd(2, 3, seed=2))])
    with pytest.raises(DivergenceError, match=r"diverged at step \d+ .*non-finite values in the (layer '\w+'|energy)"):
        net.simulate({"v": torch.full((1, 4), 5.0, dtype=D)}, t_max=50.0, dt=1.0, method="euler")


def test_float32_and_float64():
    for dtype in (torch.float32, torch.float64):
        net = chain3(dtype=dtype)
        tr = net.simulate({"v": torch.randn(2, 8)}, t_max=1.0, dt=0.05)
        assert tr.energy.dtype == dtype and all(s.dtype == dtype for s in tr.states.values())
        assert net.dtype == dtype


def test_bad_input_messages():
    w = rnd(4, 6)
    with pytest.raises(TypeError, match="layers: .*expected a non-empty dict"):
        Network({}, [Synapse("a", "b", w)])
    with pytest.raises(ValueError, match="layer name 'h 1'.*identifier"):
        Network({"h 1": Layer(Tanh(), 4), "v": Layer(Tanh(), 6)}, [Synapse("h 1", "v", w)])
    with pytest.raises(ValueError, match=r"synapses\[0\]: connects the layer 'x'"):
        Network({"h": Layer(Tanh(), 4), "v": Layer(Tanh(), 6)}, [Synapse("x", "v", w)])
    with pytest.raises(ValueError, match=r"synapses\[0\]: xi is .*expected shape \(4, 5\)"):
        Network({"h": Layer(Tanh(), 4), "v": Layer(Tanh(), 5)}, [Synapse("h", "v", w)])
    with pytest.raises(ValueError, match=r"upper, lower: got 'h' twice"):
        Synapse("h", "h", w)
    with pytest.raises(TypeError, match="lagrangian: .*expected an assocmem.lagrangians.Lagrangian"):
        Layer(torch.tanh, 4)
    with pytest.raises(ValueError, match="tau: .*> 0"):
        Layer(Tanh(), 4, tau=0.0)
    with pytest.raises(ValueError, match=r"synapses\[0\]: the convolution of 'img' \(1, 6, 6\).*has shape \(2, 4, 4\); expected the shape of 'f', \(2, 3, 3\)"):
        Network({"img": Layer(Quadratic(), (1, 6, 6)), "f": Layer(Tanh(), (2, 3, 3))}, [ConvSynapse("f", "img", rnd(2, 1, 3, 3))])
    with pytest.raises(ValueError, match="ConvSynapse joins image-shaped layers"):
        Network({"img": Layer(Quadratic(), 36), "f": Layer(Tanh(), (2, 4, 4))}, [ConvSynapse("f", "img", rnd(2, 1, 3, 3))])
    with pytest.raises(ValueError, match=r"synapses\[1\]: weight is .*float32.*expected torch.float64"):
        Network({"a": Layer(Tanh(), 4), "b": Layer(Tanh(), 6), "c": Layer(Tanh(), 2)},
                [Synapse("a", "b", w), Synapse("c", "a", torch.randn(2, 4))])
    net = chain3()
    with pytest.raises(ValueError, match=r"states\['v'\]: got .*expected shape \(8,\) or \(B, 8\) for the layer 'v'"):
        net.energy({"v": rnd(2, 7), "h1": rnd(2, 6), "h2": rnd(2, 4)})
    with pytest.raises(ValueError, match="states: has no state for the layer 'h2'"):
        net.energy({"v": rnd(2, 8), "h1": rnd(2, 6)})
    with pytest.raises(ValueError, match=r"states: got the unknown layer\(s\) \['h3'\]"):
        net.derivatives({"v": rnd(2, 8), "h1": rnd(2, 6), "h2": rnd(2, 4), "h3": rnd(2, 1)})
    with pytest.raises(ValueError, match=r"states: layers have different batch sizes \[2, 3\]"):
        net.energy({"v": rnd(2, 8), "h1": rnd(3, 6), "h2": rnd(2, 4)})
    with pytest.raises(ValueError, match=r"states\['h1'\]: 2 non-finite value"):
        net.energy({"v": rnd(2, 8), "h1": torch.tensor([[0.0] * 5 + [float("nan")]] * 2, dtype=D), "h2": rnd(2, 4)})
    with pytest.raises(ValueError, match="states0: got no layer's state"):
        net.simulate({})
    with pytest.raises(ValueError, match=r"clamp\['h1'\]: got .*expected a bool mask of shape \(6,\) or \(2, 6\)"):
        net.simulate({"v": rnd(2, 8)}, clamp={"h1": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"input_current\['h2'\]: got .*expected shape \(4,\) or \(2, 4\)"):
        net.simulate({"v": rnd(2, 8)}, input_current={"h2": rnd(3, 4)})
    with pytest.raises(ValueError, match="method.*'rk4'"):
        net.simulate({"v": rnd(8)}, method="rk5")
    with pytest.raises(ValueError, match="integrate_out: got 'x'; expected one of the layers"):
        net.effective_energy({"v": rnd(8), "h1": rnd(6)}, "x")
    with pytest.raises(ValueError, match=r"states: has no state for the layer\(s\) \['h1'\]"):
        net.effective_energy({"v": rnd(8)}, "h2")
    alpha_net = Network({"v": Layer(Spherical(), 8, alpha=0.5), "h": Layer(Tanh(), 6)}, [Synapse("h", "v", rnd(6, 8))])
    with pytest.raises(ValueError, match="integrate_out: the layer 'v' has alpha = 0.5; expected alpha = 1"):
        alpha_net.effective_energy({"h": rnd(6)}, "v")
