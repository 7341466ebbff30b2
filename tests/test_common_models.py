"""The common checks every model class must pass (the idea of scikit-learn's check_estimator):
energy never increases along recall; a batch recalls exactly what its rows recall one by one;
float32 and float64 agree; a bank round trip recalls identically; bad input raises the package's
errors naming the argument; a cue that requires grad is accepted (or refused with a clear error).

Every model class of the package is listed in CASES; a test fails when a public model class has no
case, so a new model cannot skip the checks."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import assocmem
from assocmem import (ClassicalHopfield, DenseAssociativeMemory, ModernHopfield, SphericalMemory,
                      TwoLayerNetwork)
from assocmem.bio import DendriticEIMemory, ThresholdMemory
from assocmem.lagrangians import LogSumExp, Quadratic
from assocmem.models import AssociativeMemory


def _pm1(K, N, seed):
    return torch.randint(0, 2, (K, N), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1


def _flip(x, frac, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(x.shape, generator=g, dtype=torch.float64) < frac
    return torch.where(mask, -x, x)


@dataclass
class Case:
    name: str
    make: Callable[[torch.dtype], object]            # dtype -> model
    cues: Callable[[object, int], torch.Tensor]      # (model, B) -> cues (B, N) in the model's dtype
    recall: Callable[[object, torch.Tensor], object]  # -> an object with .state, .energy (or None)
    exact: bool = False                              # float32 and float64 recall identical states
    energy_tol: float = 1e-9                         # allowed rise of the energy per step (relative)


def _recall_seeded(m, c):
    return m.recall(c, max_steps=30, generator=torch.Generator().manual_seed(7))


def _binary_cues(patterns_of):
    def cues(m, B):
        xi = patterns_of(m)
        return _flip(xi[:B].to(torch.float64), 0.15, 11).to(xi.dtype)
    return cues


def _two_layer_recall(net, c):
    tr = net.simulate(c, t_max=10.0, dt=0.1, method="rk4")
    tr.state = tr.final_v[0] if c.ndim == 1 else tr.final_v  # a trajectory keeps the batch axis
    return tr


CASES = [
    Case("classical", lambda dt: ClassicalHopfield(_pm1(12, 80, 0).to(dt)), _binary_cues(lambda m: m.xi),
         _recall_seeded, exact=True),
    Case("dense-power", lambda dt: DenseAssociativeMemory(_pm1(60, 40, 1).to(dt), F="power", n=3),
         _binary_cues(lambda m: m.xi), _recall_seeded, exact=True),
    Case("dense-exp", lambda dt: DenseAssociativeMemory(_pm1(60, 40, 2).to(dt), F="exp", beta=0.5),
         _binary_cues(lambda m: m.xi), _recall_seeded, exact=True),
    Case("modern", lambda dt: ModernHopfield(_pm1(50, 32, 3).to(dt), beta=0.3),
         lambda m, B: (_flip(m.xi[:B].double(), 0.2, 12) * 0.7).to(m.xi.dtype), lambda m, c: m.recall(c, max_steps=50)),
    Case("spherical", lambda dt: SphericalMemory(_pm1(40, 32, 4).to(dt), F="power", n=3),
         lambda m, B: _flip(m.xi[:B].double(), 0.2, 13).to(m.xi.dtype), lambda m, c: m.recall(c, max_steps=50)),
    Case("two-layer", lambda dt: TwoLayerNetwork(_pm1(20, 16, 5).to(dt) / 4, Quadratic(), LogSumExp(beta=2.0)),
         lambda m, B: _flip(m.xi[:B].double() * 4, 0.2, 14).to(m.xi.dtype), _two_layer_recall, energy_tol=1e-7),
    Case("threshold", lambda dt: ThresholdMemory(torch.randn(8, 120, generator=torch.Generator().manual_seed(6),
                                                             dtype=torch.float64).to(dt), theta=0.21),
         lambda m, B: torch.randn(B, 120, generator=torch.Generator().manual_seed(15), dtype=torch.float64).to(m.xi.dtype),
         lambda m, c: m.recall(c, t_max=60.0), energy_tol=1e-7),
    Case("dendritic-ei", lambda dt: DendriticEIMemory((_pm1(6, 60, 8).to(dt) + 1) / 2, n=4),
         lambda m, B: ((_flip(m.xi[:B].double() * 2 - 1, 0.1, 16) + 1) / 2).to(m.xi.dtype),
         lambda m, c: m.recall(c, t_max=150.0), exact=True),
]
IDS = [c.name for c in CASES]


def test_every_model_class_has_a_case():
    covered = {type(c.make(torch.float64)) for c in CASES}
    public = {obj for obj in vars(assocmem).values() if inspect.isclass(obj) and issubclass(obj, AssociativeMemory)
              and obj is not AssociativeMemory}
    public |= {DendriticEIMemory, ThresholdMemory, TwoLayerNetwork}
    assert public <= covered, f"model classes without common checks: {sorted(c.__name__ for c in public - covered)}"


def _energy(r):
    e = r.energy
    return None if e is None else e


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_energy_never_increases_along_recall(case, dtype):
    m = case.make(dtype)
    r = case.recall(m, case.cues(m, 4))
    e = _energy(r)
    if e is None:
        pytest.skip(f"{case.name}: no energy function (documented on its result type)")
    e = e.double()
    assert bool(torch.isfinite(e).all())
    tol = case.energy_tol if dtype == torch.float64 else 1e-4
    rise = (e[1:] - e[:-1]) / (1 + e[:-1].abs())
    assert float(rise.max()) <= tol, f"energy rose by {float(rise.max()):.3g}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_batch_equals_one_by_one(case):
    m = case.make(torch.float64)
    c = case.cues(m, 3)
    batch = case.recall(m, c).state
    for i in range(3):
        one = case.recall(m, c[i:i + 1]).state
        torch.testing.assert_close(batch[i:i + 1], one, rtol=0, atol=1e-9)
        single = case.recall(m, c[i]).state
        assert single.shape == c[i].shape
        torch.testing.assert_close(single, one[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_and_float64_agree(case):
    m64, m32 = case.make(torch.float64), case.make(torch.float32)
    c = case.cues(m64, 4)
    s64 = case.recall(m64, c).state
    s32 = case.recall(m32, c.float()).state
    assert s32.dtype == torch.float32 and s64.dtype == torch.float64
    if case.exact:
        assert torch.equal(s32.double(), s64)
    else:
        torch.testing.assert_close(s32.double(), s64, rtol=0, atol=2e-3 * (1 + float(s64.abs().max())))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("layout", ["file", "dir"])
def test_save_and_load_recall_identically(case, layout, tmp_path):
    m = case.make(torch.float64)
    path = tmp_path / ("b.safetensors" if layout == "file" else "b")
    m.save(path)
    back = assocmem.load(path)
    assert type(back) is type(m)
    c = case.cues(m, 3)
    a, b = case.recall(m, c), case.recall(back, c)
    assert torch.equal(a.state, b.state)
    if _energy(a) is not None:
        assert torch.equal(a.energy, b.energy)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_cues_raise_the_packages_errors(case):
    m = case.make(torch.float64)
    c = case.cues(m, 2)
    nan = c.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite|NaN|finite"):
        case.recall(m, nan)
    with pytest.raises(ValueError, match=r"\d"):
        case.recall(m, c[:, :-1])  # one feature short
    with pytest.raises(TypeError):
        case.recall(m, None)
    with pytest.raises(TypeError):
        case.recall(m, "cue")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_cue_that_requires_grad_is_accepted(case):
    m = case.make(torch.float64)
    c = case.cues(m, 2).requires_grad_(True)
    r = case.recall(m, c)
    plain = case.recall(m, c.detach())
    torch.testing.assert_close(r.state.detach(), plain.state, rtol=0, atol=1e-12)
