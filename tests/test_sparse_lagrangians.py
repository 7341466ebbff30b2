"""Entmax and Sparsemax Lagrangians against independent computations: sparsemax by sorting (Martins &
Astudillo 2016) and entmax by scipy's root finder on the normalisation condition, both written here;
the margin property (exact one-hot above beta * margin = 1/(alpha - 1)); gradients; bad input."""
import math

import numpy as np
import pytest
import torch

from assocmem.lagrangians import Entmax, LogSumExp, Sparsemax, entmax, from_spec

scipy_optimize = pytest.importorskip("scipy.optimize")


def sparsemax_reference(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    for i, row in enumerate(z):
        srt = np.sort(row)[::-1]
        k = np.arange(1, row.size + 1)
        cs = np.cumsum(srt)
        kmax = k[1 + k * srt > cs].max()
        tau = (cs[kmax - 1] - 1) / kmax
        out[i] = np.maximum(row - tau, 0)
    return out


def entmax_reference(z: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty_like(z)
    for i, row in enumerate(z):
        zz = (alpha - 1) * row

        def mass(tau):
            return np.sum(np.maximum(zz - tau, 0) ** (1 / (alpha - 1))) - 1

        tau = scipy_optimize.brentq(mass, zz.max() - 1 - 1e-9, zz.max(), xtol=1e-300, rtol=1e-15, maxiter=500)
        out[i] = np.maximum(zz - tau, 0) ** (1 / (alpha - 1))
    return out


def _scores(seed: int, shape=(16, 9), scale=2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_sparsemax_equals_the_sort_reference(beta):
    x = _scores(0)
    p = Sparsemax(beta=beta).activation(x)
    np.testing.assert_allclose(p.numpy(), sparsemax_reference(beta * x.numpy()), rtol=0, atol=1e-12)
    assert bool((p == 0).any()), "a sparse activation should have zeros here"


@pytest.mark.parametrize("alpha", [1.5, 1.25, 1.8, 2.0, 3.0])
@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_entmax_equals_a_root_finding_reference(alpha, beta):
    x = _scores(1)
    p = Entmax(alpha=alpha, beta=beta).activation(x)
    np.testing.assert_allclose(p.numpy(), entmax_reference(beta * x.numpy(), alpha), rtol=0, atol=1e-10)
    torch.testing.assert_close(p.sum(-1), torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.5, 1.25, 2.0])
def test_value_is_the_max_over_the_simplex(alpha):
    """L(x) = max_p [p.(beta x) + H_alpha(p)] / beta: the activation attains it and random points of
    the simplex never exceed it."""
    beta = 2.0
    x = _scores(2, (4, 6))
    lag = Entmax(alpha=alpha, beta=beta)
    p = torch.from_numpy(entmax_reference(beta * x.numpy(), alpha))
    H = (1 - (p ** alpha).sum(-1)) / (alpha * (alpha - 1))
    torch.testing.assert_close(lag.value(x), ((p * beta * x).sum(-1) + H) / beta, rtol=0, atol=1e-10)
    q = torch.distributions.Dirichlet(torch.ones(6, dtype=torch.float64)).sample((500,))
    for b in range(4):
        vals = (q @ (beta * x[b]) + (1 - (q ** alpha).sum(-1)) / (alpha * (alpha - 1))) / beta
        assert float(vals.max()) <= float(lag.value(x[b:b + 1])[0]) + 1e-12


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_margin_property_gives_exact_one_hot(alpha):
    """beta (s_mu - max_{nu != mu} s_nu) >= 1/(alpha - 1) gives exactly e_mu; just below it does not."""
    thr = 1.0 / (alpha - 1.0)
    beta = 1.0
    s = torch.tensor([[0.0, -3.0, 1.0, 0.2]], dtype=torch.float64)
    at = s.clone()
    at[0, 2] = 0.2 + thr / beta
    p = entmax(beta * at, alpha)
    assert torch.equal(p, torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=torch.float64))
    below = s.clone()
    below[0, 2] = 0.2 + 0.98 * thr / beta
    assert float(entmax(beta * below, alpha)[0, 3]) > 0
    # softmax never is one-hot
    assert float(torch.softmax(beta * at, -1)[0, 3]) > 0


def test_alpha_near_one_approaches_softmax():
    x = _scores(3, (3, 5), scale=1.0)
    d = (Entmax(alpha=1.001, beta=1.0).activation(x) - LogSumExp(1.0).activation(x)).abs().max()
    assert float(d) < 5e-3


@pytest.mark.parametrize("lag", [Entmax(1.5, 1.0), Entmax(1.3, 2.0), Sparsemax(1.5)], ids=repr)
def test_gradcheck_of_activation_and_value(lag):
    x = _scores(4, (3, 6)).requires_grad_(True)
    assert torch.autograd.gradcheck(lag.activation, (x,))
    assert torch.autograd.gradcheck(lag.value, (x,))
    assert torch.autograd.gradgradcheck(lag.value, (x,))


def test_learnable_beta_gets_a_gradient():
    beta = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
    lag = Entmax(alpha=1.5, beta=beta)
    x = _scores(5, (2, 5))
    (lag.value(x).sum() + lag.activation(x)[:, 0].sum()).backward()
    assert beta.grad is not None and math.isfinite(float(beta.grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lag", [Entmax(1.5, 1.0), Entmax(1.7, 1.0), Sparsemax(1.0)], ids=repr)
def test_stable_at_large_inputs(lag, dtype):
    x = (_scores(6, (4, 8)) * 1e4 / 2).to(dtype)
    for f in (lag.value, lag.activation, lag.legendre):
        assert bool(torch.isfinite(f(x)).all())
    p = lag.activation(x)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, dtype=dtype))


@pytest.mark.parametrize("alpha", [1.0, 0.5, -2, float("nan"), float("inf"), "1.5", True])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        Entmax(alpha=alpha)


def test_spec_round_trip():
    for lag in (Entmax(1.7, 2.5), Sparsemax(3.0)):
        again = from_spec(lag.spec())
        assert type(again) is type(lag) and again.alpha == lag.alpha and again.beta == lag.beta
