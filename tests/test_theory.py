"""assocmem.theory: the reference capacity formulas of MODELS.md sections 4-5."""
import math

import numpy as np
import pytest
from scipy.stats import entropy

from assocmem import theory as th


def test_ags_is_0138_N():
    assert th.amit_gutfreund_sompolinsky(1000) == pytest.approx(138.0)
    assert th.ALPHA_AGS == 0.138
    np.testing.assert_allclose(th.amit_gutfreund_sompolinsky([100, 500]), [13.8, 69.0])


@pytest.mark.parametrize("N", [2, 10, 200, 1000, 10**6])
def test_mceliece_and_most_fixed_points(N):
    assert th.mceliece(N) == pytest.approx(N / (4 * math.log(N)))
    assert th.most_fixed_points(N) == pytest.approx(N / (2 * math.log(N)))
    assert th.most_fixed_points(N) == pytest.approx(2 * th.mceliece(N))


def test_double_factorial():
    assert [th.double_factorial(k) for k in (-1, 0, 1, 2, 3, 4, 5, 7, 9)] == [1, 1, 1, 2, 3, 8, 15, 105, 945]


@pytest.mark.parametrize("N", [10, 100, 777])
def test_kh2016_formula(N):
    L = math.log(N)
    # n = 2 is the classical "most patterns fixed" capacity; (2n-3)!! = 1, 3, 15, 105 for n = 2..5
    assert th.krotov_hopfield_2016(N, 2) == pytest.approx(th.most_fixed_points(N))
    assert th.krotov_hopfield_2016(N, 3) == pytest.approx(N**2 / (2 * 3 * L))
    assert th.krotov_hopfield_2016(N, 4) == pytest.approx(N**3 / (2 * 15 * L))
    assert th.krotov_hopfield_2016(N, 5) == pytest.approx(N**4 / (2 * 105 * L))


def test_array_in_array_out_scalar_in_float_out():
    out = th.krotov_hopfield_2016(np.array([10, 100]), 3)
    assert isinstance(out, np.ndarray) and out.shape == (2,)
    assert isinstance(th.mceliece(100), float)


@pytest.mark.parametrize("rho", [0.0, 0.05, 0.1, 0.25, 0.4])
def test_demircigil_exponent_matches_entropy_form(rho):
    # I(x) = ln 2 - h((1 + x) / 2) with h the binary entropy in nats: an independent form
    x = 1 - 2 * rho
    p = (1 + x) / 2
    I = math.log(2) - (entropy([p, 1 - p]) if 0 < p < 1 else 0.0)
    assert th.demircigil_exponent(rho) == pytest.approx(I / 2, abs=1e-12)
    assert th.demircigil(20, rho) == pytest.approx(math.exp(20 * I / 2))


def test_demircigil_at_rho_0_is_2_to_the_N_over_2():
    assert th.demircigil(30) == pytest.approx(2.0 ** 15)


def test_hidden_neuron_bound():
    assert th.hidden_neuron_bound(64) == 64.0


def test_threshold_bound_formula_and_shape():
    v, h = 800.0, 8.0
    ref = 1 - h * math.sqrt((h + 1) / v) * math.exp(-v / (8 * (h + 1))) / math.sqrt(math.pi / 2)
    assert th.threshold_no_flip_bound(v, h) == pytest.approx(ref)
    b = th.threshold_no_flip_bound(400, np.arange(1, 60))
    assert np.all(np.diff(b) <= 0) and b.min() >= 0.0 and b.max() <= 1.0  # falls with N_h, clipped
    assert th.threshold_no_flip_bound(10, 50) == 0.0  # the raw formula is negative here
    assert np.all(np.diff(th.threshold_no_flip_bound(np.arange(20, 2000, 10), 5)) >= 0)  # rises with N_v


def test_threshold_bound_agrees_with_bio():
    bio = pytest.importorskip("assocmem.bio")
    for nv in (50, 100, 800, 5000):
        for nh in (1, 4, 12, 40):
            assert th.threshold_no_flip_bound(nv, nh) == pytest.approx(bio.stability_bound(nv, nh), abs=1e-12)


@pytest.mark.parametrize("nv", [50, 100, 400, 800, 3000])
def test_threshold_capacity_bits_is_the_largest_passing(nv):
    bits = th.threshold_capacity_bits(nv, 0.99)
    if bits:
        assert th.threshold_no_flip_bound(nv, bits) >= 0.99
    assert th.threshold_no_flip_bound(nv, bits + 1) < 0.99


@pytest.mark.parametrize("call", [
    lambda: th.mceliece(0), lambda: th.mceliece(-5), lambda: th.mceliece(1), lambda: th.most_fixed_points(float("nan")),
    lambda: th.krotov_hopfield_2016(100, 1), lambda: th.amit_gutfreund_sompolinsky(0),
    lambda: th.demircigil_exponent(0.5), lambda: th.demircigil_exponent(-0.1), lambda: th.hidden_neuron_bound(0),
    lambda: th.threshold_no_flip_bound(0, 3), lambda: th.threshold_capacity_bits(100, 1.0),
    lambda: th.mceliece([]),
])
def test_bad_input_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_bad_type_type_error():
    with pytest.raises(TypeError):
        th.mceliece("100")
    with pytest.raises(TypeError):
        th.krotov_hopfield_2016(100, 2.5)
    with pytest.raises(TypeError):
        th.mceliece(True)
