"""Every Lagrangian: closed-form activation = autograd of the value, closed-form Legendre term and
curvature = their definitions, convexity where claimed, and finiteness at |x| = 1e4."""
import math

import pytest
import torch

from assocmem.lagrangians import (
    CATALOG,
    Abs,
    Exp,
    Heaviside,
    LayerNorm,
    Lagrangian,
    LogSumExp,
    Power,
    Quadratic,
    RectifiedPower,
    Sigmoid,
    Spherical,
    Tanh,
    Entmax,
    Sparsemax,
    from_spec,
)

ALL = [
    Quadratic(), Abs(), Tanh(1.0), Tanh(3.5), Sigmoid(1.0), Sigmoid(0.3), RectifiedPower(2), RectifiedPower(3),
    Power(2), Power(3), Power(4), Exp(1.0), Exp(0.5), LogSumExp(1.0), LogSumExp(4.0), Spherical(), LayerNorm(),
    LayerNorm(gamma=2.0, eps=0.1), Heaviside(0.5), Heaviside(0.21),
    Entmax(1.5, 1.0), Entmax(1.5, 3.0), Entmax(1.25, 2.0), Entmax(3.0, 0.5), Sparsemax(1.0), Sparsemax(4.0),
]
IDS = [repr(l) for l in ALL]


def test_catalog_lists_every_class():
    assert set(CATALOG) >= {"Quadratic", "Abs", "Tanh", "Sigmoid", "RectifiedPower", "Power", "Exp", "LogSumExp", "Spherical", "LayerNorm"}
    for lag in ALL:
        again = from_spec(lag.spec())
        x = torch.randn(3, 5, dtype=torch.float64)
        assert torch.allclose(again.value(x), lag.value(x))


@pytest.mark.parametrize("lag", ALL, ids=IDS)
def test_activation_equals_autograd_of_value(lag: Lagrangian):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 7, generator=g, dtype=torch.float64) * 2
    x = x + 0.01 * torch.sign(x)  # keep away from the kinks of |x| and max(x, 0)
    assert lag.value(x).shape == (6,)
    torch.testing.assert_close(lag.activation(x), lag.activation_autograd(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("lag", ALL, ids=IDS)
def test_legendre_and_curvature_match_definitions(lag):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2 + 0.01
    dx = torch.randn(4, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(lag.legendre(x), (x * lag.activation(x)).sum(-1) - lag.value(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lag.curvature(x, dx), Lagrangian.curvature(lag, x, dx), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("lag", ALL, ids=IDS)
def test_convexity_claims_hold(lag):
    g = torch.Generator().manual_seed(2)
    worst = math.inf
    for _ in range(20):
        x = torch.randn(5, generator=g, dtype=torch.float64) * 3 + 0.01
        H = torch.autograd.functional.hessian(lambda z: lag.value(z.unsqueeze(0))[0], x)
        worst = min(worst, torch.linalg.eigvalsh(0.5 * (H + H.T)).min().item())
    if lag.convex:
        assert worst > -1e-9
    else:  # an honest flag: the odd power really is not convex
        assert worst < 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lag", ALL, ids=IDS)
def test_finite_and_accurate_at_1e4(lag, dtype):
    x = torch.tensor([[1e4, -1e4, 3.0, -2.0, 0.5]], dtype=dtype)
    ref = torch.tensor([[1e4, -1e4, 3.0, -2.0, 0.5]], dtype=torch.float64)
    if isinstance(lag, Exp):  # exp(1e4) is beyond every float: the true value is +inf
        x, ref = x.clamp(max=50.0), ref.clamp(max=50.0)
    if isinstance(lag, Power) and lag.n >= 4 and dtype == torch.float32:
        x, ref = x.clamp(-1e3, 1e3), ref.clamp(-1e3, 1e3)  # (1e4)^4 = 1e16 is fine, 1e4^n for n>9 is not
    val, act, leg = lag.value(x), lag.activation(x), lag.legendre(x)
    for t in (val, act, leg):
        assert torch.isfinite(t).all()
    if lag.additive:  # compare term by term: a sum of +-1e12 cancels in any float format
        val = torch.stack([lag.value(x[:, i : i + 1]) for i in range(5)], -1)
        ref_val = torch.stack([lag.value(ref[:, i : i + 1]) for i in range(5)], -1)
    else:
        ref_val = lag.value(ref)
    torch.testing.assert_close(val.double(), ref_val, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(act.double(), lag.activation(ref), rtol=1e-6, atol=1e-6)


def test_stable_closed_forms_at_extremes():
    assert Tanh(1).value(torch.tensor([[1e4]])).item() == pytest.approx(1e4 - math.log(2), rel=1e-7)
    assert Sigmoid(1).value(torch.tensor([[1e4]])).item() == pytest.approx(1e4, rel=1e-7)
    assert Sigmoid(1).value(torch.tensor([[-1e4]])).item() == 0.0
    assert LogSumExp(1).value(torch.tensor([[1e4, 1e4]])).item() == pytest.approx(1e4 + math.log(2), rel=1e-7)
    # Legendre term of log cosh tends to log(2)/beta without cancellation
    assert Tanh(2.0).legendre(torch.tensor([[1e4]])).item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    assert Sigmoid(1.0).legendre(torch.tensor([[1e4]])).item() == pytest.approx(0.0, abs=1e-6)


def test_additivity_flags():
    x = torch.randn(3, 4, dtype=torch.float64)
    for lag in ALL:
        if lag.additive:  # L(x) = sum_i G(x_i): separable over coordinates
            parts = sum(lag.value(x[:, i : i + 1]) for i in range(4))
            torch.testing.assert_close(parts, lag.value(x))
    assert not LogSumExp().additive and not Spherical().additive and not LayerNorm().additive


def test_bad_parameters():
    with pytest.raises(ValueError, match="beta"):
        Tanh(0.0)
    with pytest.raises(ValueError, match="beta"):
        LogSumExp(-1.0)
    with pytest.raises(ValueError, match="n"):
        RectifiedPower(0)
    with pytest.raises(TypeError, match="n"):
        Power(2.5)
    with pytest.raises(ValueError, match="lagrangian spec"):
        from_spec({"name": "Nope"})
