"""Argument checks of assocmem.functional (retrieve, attention_weights, modern_energy, lse_energy,
hopfield_retrieve, hopfield_energy): wrong N, N = 0, K = 0, mixed dtypes, lists, None, integer
tensors, a string beta, mismatched devices and masks raise TypeError/ValueError naming the argument
(they raised torch's RuntimeError, AttributeError or ctypes.ArgumentError from the compiled path);
valid calls still give the reference result."""
import pytest
import torch

from assocmem import functional as AF

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(B=3, K=40, N=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, generator=g, dtype=dtype), torch.randn(K, N, generator=g, dtype=dtype)


# (B, K, N): plain torch / tiny path, and a shape large enough for the chunked compiled kernel
SHAPES = [(3, 40, 8), (64, 3000, 64)]


def _entry_points():
    yield "retrieve", lambda q, k, beta=1.0, **kw: AF.retrieve(q, k, beta=beta, **kw)
    yield "attention_weights", lambda q, k, beta=1.0, **kw: AF.attention_weights(q, k, beta, **kw)
    yield "modern_energy", lambda q, k, beta=1.0, **kw: AF.modern_energy(q, k, beta)
    yield "hopfield_retrieve", lambda q, k, beta=1.0, **kw: AF.hopfield_retrieve(q, k, beta=beta, **kw).retrieved
    yield "hopfield_energy", lambda q, k, beta=1.0, **kw: AF.hopfield_energy(q, k, beta, **kw)


ENTRY = dict(_entry_points())
QNAME = {"retrieve": "query", "attention_weights": "query", "modern_energy": "state", "hopfield_retrieve": "state",
         "hopfield_energy": "state"}
KNAME = {"retrieve": "keys", "attention_weights": "keys", "modern_energy": "keys", "hopfield_retrieve": "stored",
         "hopfield_energy": "stored"}


@pytest.mark.parametrize("name", sorted(ENTRY))
@pytest.mark.parametrize("shape", SHAPES)
def test_malformed_tensors_are_named(name, shape):
    fn, qn, kn = ENTRY[name], QNAME[name], KNAME[name]
    B, K, N = shape
    q, k = _data(B, K, N)
    with pytest.raises(ValueError, match=rf"({qn}|{kn}): got .*shape.*expected .*last dimension"):
        fn(q[:, :-1], k)  # wrong N
    with pytest.raises(ValueError, match=rf"({qn}|{kn}): got shape .*expected patterns of size"):
        fn(q[:, :0], k[:, :0])  # N = 0
    with pytest.raises(TypeError, match=rf"{kn}: got dtype float64 with {qn} of dtype float32; expected the same dtype"):
        fn(q, k.double())
    with pytest.raises(TypeError, match=rf"{kn}: got dtype float32 with {qn} of dtype float64"):
        fn(q.double(), k)
    with pytest.raises(TypeError, match=rf"{qn}: got list"):
        fn(q.tolist(), k)
    with pytest.raises(TypeError, match=rf"{qn}: got NoneType None"):
        fn(None, k)
    with pytest.raises(TypeError, match=rf"{kn}: got NoneType None"):
        fn(q, None)
    with pytest.raises(TypeError, match=rf"{qn}: got .*int64; expected a floating-point"):
        fn(q.long(), k.long())
    with pytest.raises(ValueError, match=rf"{kn}: on device meta with {qn} on cpu; expected the same device"):
        fn(q, k.to("meta"))


@pytest.mark.parametrize("name", sorted(ENTRY))
@pytest.mark.parametrize("shape", SHAPES)
def test_bad_beta_is_named(name, shape):
    """beta='1' reached the compiled kernel as a ctypes argument (ctypes.ArgumentError) or numpy's
    ufunc (UFuncTypeError); NaN, inf, negative and unrepresentable betas are refused too."""
    fn = ENTRY[name]
    q, k = _data(*shape)
    for beta in ("1", None, [1.0], 1 + 2j, True):
        with pytest.raises(TypeError, match="beta: got"):
            fn(q, k, beta)
    for beta in (float("nan"), float("inf"), -1.0, 1e300):
        with pytest.raises(ValueError, match="beta: got"):
            fn(q, k, beta)
    with pytest.raises(ValueError, match="beta: got a tensor of shape"):
        fn(q, k, torch.ones(shape[2]))  # one beta per feature: not a per-row inverse temperature


def test_zero_memories_and_values_mismatch():
    q, k = _data()
    with pytest.raises(ValueError, match=r"keys: got shape \(0, 8\); expected at least one stored pattern"):
        AF.retrieve(q, k[:0])
    with pytest.raises(ValueError, match=r"keys: got shape \(0, 8\); expected at least one stored pattern"):
        AF.modern_energy(q, k[:0], 1.0)
    with pytest.raises(ValueError, match="values: got shape .*expected one value per stored pattern"):
        AF.retrieve(q, k, torch.randn(k.shape[0] + 1, 3))
    with pytest.raises(TypeError, match="values: got dtype float64 with query of dtype float32"):
        AF.retrieve(q, k, torch.randn(k.shape[0], 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"mask: got .*expected a bool tensor .* scores of shape \(3, 40\)"):
        AF.retrieve(q, k, mask=torch.zeros(3, 41, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask: got"):
        AF.retrieve(q, k, mask=torch.zeros(3, 40))  # a float mask is the hopfield_* convention, not retrieve's
    with pytest.raises(ValueError, match="leading .* dimensions that broadcast"):
        AF.retrieve(torch.randn(2, 3, 8), torch.randn(4, 40, 8))
    with pytest.raises(TypeError, match="h: got list"):
        AF.lse_energy([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="h: got .*K >= 1"):
        AF.lse_energy(torch.zeros(3, 0), 1.0)
    with pytest.raises(ValueError, match="beta: got 0"):
        AF.lse_energy(torch.zeros(3, 2), 0)


def test_valid_calls_keep_their_results():
    q, k = _data(dtype=torch.float64)
    ref = torch.softmax(0.7 * q @ k.T, -1) @ k
    torch.testing.assert_close(AF.retrieve(q, k, beta=0.7), ref)
    torch.testing.assert_close(AF.retrieve(q[0], k, beta=0.7), ref[0])  # one state (N,)
    torch.testing.assert_close(AF.retrieve(q, k, beta=0), k.mean(0).expand_as(q))  # beta = 0: the mean
    torch.testing.assert_close(AF.retrieve(q, k, beta=torch.tensor(0.7, dtype=torch.float64)), ref)
    torch.testing.assert_close(AF.retrieve(q, k, beta=torch.full((3, 1), 0.7, dtype=torch.float64)), ref)
    e = 0.5 * (q * q).sum(-1) - torch.logsumexp(0.7 * q @ k.T, -1) / 0.7
    torch.testing.assert_close(AF.modern_energy(q, k, 0.7), e)
    torch.testing.assert_close(AF.modern_energy(q, k, 2), 0.5 * (q * q).sum(-1) - torch.logsumexp(2 * q @ k.T, -1) / 2)
    # a float16 bank under a float32 query (computed in float32), as the banks on disk hold them
    q32, k16 = q.float(), k.half()
    torch.testing.assert_close(AF.retrieve(q32, k16, beta=0.7), torch.softmax(0.7 * q32 @ k16.float().T, -1) @ k16.float())
    torch.testing.assert_close(AF.modern_energy(q32, k16, 0.7), AF.modern_energy(q32, k16.float(), 0.7))
    # batched keys with a mask (the capacity lab's many-trials recall)
    kb = torch.randn(2, 5, 8, dtype=torch.float64)
    qb = torch.randn(2, 3, 8, dtype=torch.float64)
    mask = torch.zeros(2, 1, 5, dtype=torch.bool)
    mask[0, 0, 3:] = True
    out = AF.retrieve(qb, kb, beta=0.5, mask=mask)
    torch.testing.assert_close(out[0], torch.softmax(0.5 * qb[0] @ kb[0, :3].T, -1) @ kb[0, :3])


def test_numpy_scalar_beta_accepted():
    import numpy as np

    q, k = _data()
    torch.testing.assert_close(AF.retrieve(q, k, beta=np.float64(0.5)), AF.retrieve(q, k, beta=0.5))
    torch.testing.assert_close(AF.modern_energy(q, k, np.float32(0.5)), AF.modern_energy(q, k, 0.5))


@pytest.mark.parametrize("need", [False, True])
def test_iterating_an_empty_batch_to_convergence(need):
    """update_steps=None on an empty batch took amax() of nothing (RuntimeError; found by the slow
    fuzz test of the Hopfield layer)."""
    for state, stored in ((torch.zeros(0, 3, 4), torch.zeros(0, 5, 4)), (torch.zeros(2, 0, 4), torch.randn(2, 5, 4))):
        r = AF.hopfield_retrieve(state, stored, update_steps=None, need_weights=need, need_energy=need)
        assert r.retrieved.shape == state.shape and r.steps == 1
        if need:
            assert r.weights.shape == state.shape[:-1] + (5,) and r.energy.shape == state.shape[:-1]
