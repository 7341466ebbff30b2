"""Model B with sparse separation functions (sparsemax, alpha-entmax as the memory Lagrangian):
exact one-step retrieval above the margin, energy descent, the functional form against a direct
computation, the two-layer network it is the tau_h -> 0 limit of, bank round trip, bad input."""
import pytest
import torch

import assocmem
from assocmem import ModernHopfield
from assocmem.functional import retrieve
from assocmem.lagrangians import Entmax, Sparsemax, entmax


def _pm1(K, N, seed):
    return torch.randint(0, 2, (K, N), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1


@pytest.mark.parametrize("separation,alpha", [("sparsemax", 2.0), ("entmax", 1.5), ("entmax", 1.25)])
def test_exact_one_step_retrieval_above_the_margin(separation, alpha):
    xi = _pm1(300, 64, 0)
    cue = xi[:8].clone()
    cue[:, :10] *= -1  # overlap 44 with its pattern; random others ~ +-8 * 3 at most here
    s = cue @ xi.T
    top2 = s.topk(2, dim=-1).values
    beta = 1.05 / ((alpha - 1) * float((top2[:, 0] - top2[:, 1]).min()))  # beta * margin just above 1/(alpha-1)
    sparse = ModernHopfield(xi, beta=beta, separation=separation, alpha=alpha)
    assert torch.equal(sparse.step(cue), xi[:8])  # exactly the stored patterns
    dense = ModernHopfield(xi, beta=beta)
    assert float((dense.step(cue) - xi[:8]).abs().max()) > 0  # softmax is never exact


@pytest.mark.parametrize("separation", ["sparsemax", "entmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_energy_never_increases_along_recall(separation, dtype):
    xi = _pm1(100, 32, 1).to(dtype)
    m = ModernHopfield(xi, beta=0.08, separation=separation)
    cue = xi[:6] * 0.5 + 0.3 * torch.randn(6, 32, generator=torch.Generator().manual_seed(2)).to(dtype)
    e = m.recall(cue, max_steps=40).energy.double()
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert float(((e[1:] - e[:-1]) / (1 + e[:-1].abs())).max()) <= tol
    # the energy is 1/2 v.v - L_h(xi v) with the declared Lagrangian
    lag = Entmax(1.5, 0.08) if separation == "entmax" else Sparsemax(0.08)
    v = cue.double()
    torch.testing.assert_close(m.energy(cue).double(), 0.5 * (v * v).sum(-1) - lag.value(v @ xi.double().T),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.7])
def test_functional_retrieve_equals_a_direct_computation(alpha):
    q = torch.randn(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    k = torch.randn(40, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    v = torch.randn(40, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sep = "sparsemax" if alpha == 2.0 else "entmax"
    out, omega = retrieve(q, k, v, beta=0.7, separation=sep, alpha=alpha, return_lse=True)
    torch.testing.assert_close(out, entmax(0.7 * q @ k.T, alpha) @ v, rtol=0, atol=1e-12)
    torch.testing.assert_close(omega / 0.7, Entmax(alpha, 0.7).value(q @ k.T), rtol=0, atol=1e-12)
    mask = torch.zeros(5, 40, dtype=torch.bool)
    mask[:, 20:] = True
    torch.testing.assert_close(retrieve(q, k, v, beta=0.7, separation=sep, alpha=alpha, mask=mask),
                               retrieve(q, k[:20], v[:20], beta=0.7, separation=sep, alpha=alpha), rtol=0, atol=1e-12)
    q1 = q[0].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: retrieve(t, k, v, beta=0.7, separation=sep, alpha=alpha), (q1,))


@pytest.mark.parametrize("separation", ["sparsemax"])
def test_two_layer_network_reduces_to_the_model(separation):
    """As tau_h -> 0 the network with the Entmax memory layer (KH eq. 1) ends where the model's
    recall ends (KH section 3)."""
    xi = _pm1(30, 20, 6) / 2
    m = ModernHopfield(xi, beta=0.5, separation=separation)
    cue = xi[:3] * 2 * 0.8
    fixed = m.recall(cue, max_steps=200, tol=1e-12).state
    net = m.as_network(tau_f=1.0, tau_h=0.01)
    assert isinstance(net.lagrangian_h, Entmax)
    tr = net.simulate(cue, t_max=30.0, dt=0.01, method="rk4")
    torch.testing.assert_close(tr.final_v, fixed, rtol=0, atol=1e-4)


@pytest.mark.parametrize("layout", ["x.safetensors", "x"])
def test_bank_round_trip_keeps_the_separation(tmp_path, layout):
    m = ModernHopfield(_pm1(10, 8, 7), beta=0.5, separation="entmax", alpha=1.7)
    m.save(tmp_path / layout)
    back = assocmem.load(tmp_path / layout)
    assert back.separation == "entmax" and back.alpha == 1.7
    cue = _pm1(3, 8, 8)
    assert torch.equal(back.recall(cue).state, m.recall(cue).state)
    plain = ModernHopfield(_pm1(10, 8, 7), beta=0.5)
    assert plain._bank_config()[0] == {"beta": 0.5}  # softmax banks keep the 0.1 format


def test_bad_separation_input_is_refused():
    xi = _pm1(4, 3, 9)
    with pytest.raises(ValueError, match="separation"):
        ModernHopfield(xi, separation="argmax")
    with pytest.raises(ValueError, match="alpha"):
        ModernHopfield(xi, separation="entmax", alpha=1.0)
    with pytest.raises(ValueError, match="separation"):
        retrieve(xi[:1], xi, separation="relu")
    with pytest.raises(ValueError, match="alpha"):
        retrieve(xi[:1], xi, separation="entmax", alpha=0.5)
