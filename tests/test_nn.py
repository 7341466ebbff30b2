"""assocmem.nn layers and the multi-head functional retrieval: parity with scaled_dot_product_attention
and nn.MultiheadAttention (weights copied across), gradcheck in float64, energy facts (KH eq. 13 and
its CCCP descent), masks, iterated updates, low precision, torch.compile, the energy layer against
TwoLayerNetwork.simulate, and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from assocmem import ModernHopfield, TwoLayerNetwork
from assocmem import functional as AF
from assocmem.lagrangians import LogSumExp, Quadratic, Tanh
from assocmem.nn import (
    AssociativeMemoryLayer,
    EnergyLayer,
    Hopfield,
    HopfieldLayer,
    HopfieldOutput,
    HopfieldPooling,
)
from assocmem import DivergenceError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one intra-op thread is fastest, and avoids OpenMP spin-waiting when the
    machine is busy (2 threads were 90x slower on a loaded 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rnd(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def split_heads(x, H):  # (B, L, E) -> (B, H, L, E/H)
    B, L, E = x.shape
    return x.view(B, L, H, E // H).transpose(1, 2)


def merge_heads(x):  # (B, H, L, d) -> (B, L, H*d)
    B, H, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, H * d)


# 1. parity without projections: Hopfield == F.scaled_dot_product_attention ---------------------------------
@pytest.mark.parametrize("H", [1, 2, 4])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need", [False, True])  # the fused path and the explicit path (weights/energy)
def test_no_projection_equals_sdpa(H, batch_first, need):
    B, L, S, E, Ev = 3, 5, 7, 8, 12
    q, k, v = rnd(B, L, E, seed=1), rnd(B, S, E, seed=2), rnd(B, S, Ev, seed=3)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[0, 4:] = True
    kpm[2, 0] = True
    beta = 0.37
    hop = Hopfield(E, num_heads=H, beta=beta, projections=False, value_size=Ev, batch_first=batch_first)
    args = (q, k, v) if batch_first else tuple(x.transpose(0, 1) for x in (q, k, v))
    out = hop(*args, key_padding_mask=kpm, return_weights=need, return_energy=need)
    if need:
        out = out.retrieved
    if not batch_first:
        out = out.transpose(0, 1)
    keep = ~kpm[:, None, None, :]
    ref = F.scaled_dot_product_attention(split_heads(q, H), split_heads(k, H), split_heads(v, H), attn_mask=keep, scale=beta)
    torch.testing.assert_close(out, merge_heads(ref), rtol=1e-5, atol=1e-6)


def test_no_projection_default_beta_is_inverse_sqrt_head_dim():
    q, k = rnd(2, 3, 16, seed=4), rnd(2, 9, 16, seed=5)
    hop = Hopfield(16, num_heads=4, projections=False)
    assert hop.beta == pytest.approx(1 / math.sqrt(4))
    ref = F.scaled_dot_product_attention(split_heads(q, 4), split_heads(k, 4), split_heads(k, 4))  # default scale 1/sqrt(d)
    torch.testing.assert_close(hop(q, k), merge_heads(ref), rtol=1e-5, atol=1e-6)


def test_one_head_no_projection_equals_model_b_update_iterated():
    """update_steps = n is n applications of KH eq. 16 (ModernHopfield.step), an independent implementation."""
    X = rnd(40, 10, seed=6, dtype=torch.float64)
    cue = rnd(5, 10, seed=7, dtype=torch.float64)
    m = ModernHopfield(X, beta=0.8)
    for n in (1, 2, 3, 5):
        ref = cue
        for _ in range(n):
            ref = m.step(ref)
        hop = Hopfield(10, beta=0.8, update_steps=n, projections=False, dtype=torch.float64)
        torch.testing.assert_close(hop(cue, X), ref, rtol=1e-12, atol=1e-12)


# 2. parity with projections: Hopfield == nn.MultiheadAttention given the same weights ---------------------
def copy_by_hand(mha: nn.MultiheadAttention) -> Hopfield:
    """Copy weights without from_multihead_attention, to check the classmethod independently."""
    E = mha.embed_dim
    hop = Hopfield(E, E, mha.num_heads, stored_size=mha.kdim, value_size=mha.vdim, batch_first=mha.batch_first,
                   bias=mha.in_proj_bias is not None)
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            hop.state_proj.weight.copy_(mha.in_proj_weight[:E])
            hop.stored_proj.weight.copy_(mha.in_proj_weight[E:2 * E])
            hop.value_proj.weight.copy_(mha.in_proj_weight[2 * E:])
        else:
            hop.state_proj.weight.copy_(mha.q_proj_weight)
            hop.stored_proj.weight.copy_(mha.k_proj_weight)
            hop.value_proj.weight.copy_(mha.v_proj_weight)
        hop.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.in_proj_bias is not None:
            hop.state_proj.bias.copy_(mha.in_proj_bias[:E])
            hop.stored_proj.bias.copy_(mha.in_proj_bias[E:2 * E])
            hop.value_proj.bias.copy_(mha.in_proj_bias[2 * E:])
            hop.out_proj.bias.copy_(mha.out_proj.bias)
    return hop


MASKS = ["none", "kpm_bool", "attn_bool", "attn_float3d", "both_bool", "kpm_float_attn_float"]


def make_masks(kind, B, H, L, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[0, S // 2:] = True
    kpm[-1, S - 1] = True
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)  # query i sees stored 0..i
    if kind == "none":
        return None, None
    if kind == "kpm_bool":
        return kpm, None
    if kind == "attn_bool":
        return None, causal
    if kind == "attn_float3d":
        return None, torch.randn(B * H, L, S, generator=g)
    if kind == "both_bool":
        return kpm, causal
    return torch.zeros(B, S).masked_fill(kpm, float("-inf")), torch.randn(L, S, generator=g)


@pytest.mark.parametrize("H", [1, 2, 4])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", MASKS)
def test_projections_equal_multihead_attention(H, batch_first, mask):
    torch.manual_seed(H)
    E, B, L, S = 8, 3, 4, 6
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first)
    hop = Hopfield.from_multihead_attention(mha)
    q, k, v = rnd(B, L, E, seed=10), rnd(B, S, E, seed=11), rnd(B, S, E, seed=12)
    if not batch_first:
        q, k, v = (x.transpose(0, 1) for x in (q, k, v))
    kpm, am = make_masks(mask, B, H, L, S)
    for avg in (True, False):
        ref, ref_w = mha(q, k, v, key_padding_mask=kpm, attn_mask=am, average_attn_weights=avg)
        out = hop(q, k, v, key_padding_mask=kpm, attn_mask=am, return_weights=True, average_weights=avg)
        torch.testing.assert_close(out.retrieved, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.weights, ref_w, rtol=1e-5, atol=1e-6)
    # the fused path (no weights requested) too, and the gradients of every copied parameter
    ref = mha(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0]
    out = hop(q, k, v, key_padding_mask=kpm, attn_mask=am)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    ref.square().sum().backward()
    out.square().sum().backward()
    Eh = E
    torch.testing.assert_close(hop.state_proj.weight.grad, mha.in_proj_weight.grad[:Eh], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hop.stored_proj.weight.grad, mha.in_proj_weight.grad[Eh:2 * Eh], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hop.value_proj.weight.grad, mha.in_proj_weight.grad[2 * Eh:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hop.out_proj.weight.grad, mha.out_proj.weight.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_hand_copied_weights_kdim_vdim_self_attention_and_unbatched(batch_first, bias):
    torch.manual_seed(3)
    E, H, kd, vd, B, L, S = 12, 3, 5, 7, 2, 4, 6
    mha = nn.MultiheadAttention(E, H, kdim=kd, vdim=vd, bias=bias, batch_first=batch_first)
    hop = copy_by_hand(mha)
    q, k, v = rnd(B, L, E, seed=1), rnd(B, S, kd, seed=2), rnd(B, S, vd, seed=3)
    if not batch_first:
        q, k, v = (x.transpose(0, 1) for x in (q, k, v))
    torch.testing.assert_close(hop(q, k, v), mha(q, k, v)[0], rtol=1e-5, atol=1e-6)
    # unbatched inputs (L, E)
    qu, ku, vu = rnd(L, E, seed=4), rnd(S, kd, seed=5), rnd(S, vd, seed=6)
    kpm = torch.tensor([False, True, False, False, True, False])
    ref, ref_w = mha(qu, ku, vu, key_padding_mask=kpm)
    out = hop(qu, ku, vu, key_padding_mask=kpm, return_weights=True)
    torch.testing.assert_close(out.retrieved, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.weights, ref_w, rtol=1e-5, atol=1e-6)
    # self-attention: stored and values default to the state
    mha2 = nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first)
    hop2 = Hopfield.from_multihead_attention(mha2)
    x = rnd(B, L, E, seed=7) if batch_first else rnd(L, B, E, seed=7)
    torch.testing.assert_close(hop2(x), mha2(x, x, x)[0], rtol=1e-5, atol=1e-6)


def test_dropout_train_and_eval():
    torch.manual_seed(0)
    hop = Hopfield(8, num_heads=2, dropout=0.5)
    x = rnd(2, 5, 8)
    hop.eval()
    a, b = hop(x), hop(x)
    torch.testing.assert_close(a, b)
    hop.train()
    assert not torch.allclose(hop(x), a)  # dropout acts while training


# 3. gradcheck in float64 ----------------------------------------------------------------------------------
def test_gradcheck_functional_retrieve_and_energy():
    d = torch.float64
    q = rnd(2, 2, 3, 4, seed=1, dtype=d).requires_grad_()
    k = rnd(2, 2, 5, 4, seed=2, dtype=d).requires_grad_()
    v = rnd(2, 2, 5, 3, seed=3, dtype=d).requires_grad_()
    beta = torch.tensor([[[0.7]], [[1.3]]], dtype=d, requires_grad=True)  # one beta per head
    mask = torch.zeros(2, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., 3:] = True
    fmask = rnd(3, 5, seed=4, dtype=d)

    for steps, need in ((1, False), (3, True)):  # the fused path, and iterations + explicit read-out
        def f(q, k, v, beta):
            r = AF.hopfield_retrieve(q, k, v, beta, mask, update_steps=steps, need_weights=need, need_energy=need)
            return (r.retrieved, r.energy) if need else r.retrieved

        assert torch.autograd.gradcheck(f, (q, k, v, beta))
    assert torch.autograd.gradcheck(lambda q, k, beta: AF.hopfield_energy(q, k, beta, mask), (q, k, beta))
    assert torch.autograd.gradcheck(lambda q, k: AF.hopfield_energy(q, k, 0.9, fmask), (q, k))
    assert torch.autograd.gradcheck(lambda q, k, v: AF.hopfield_retrieve(q, k, v, 0.9, fmask).retrieved, (q, k, v))
    # the original single-head functions
    x, K = rnd(3, 4, seed=5, dtype=d).requires_grad_(), rnd(6, 4, seed=6, dtype=d).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, K: AF.retrieve(x, K, beta=0.8), (x, K))
    assert torch.autograd.gradcheck(lambda x, K: AF.modern_energy(x, K, 0.8), (x, K))


def test_gradcheck_layer_with_learned_beta_and_iterations():
    torch.manual_seed(0)
    hop = Hopfield(4, num_heads=2, update_steps=2, learn_beta=True, dtype=torch.float64)
    x = rnd(2, 3, 4, seed=1, dtype=torch.float64).requires_grad_()
    params = [p for p in hop.parameters()]
    assert hop.log_beta in params
    assert torch.autograd.gradcheck(lambda x, lb: torch.func.functional_call(hop, {"log_beta": lb}, (x,)), (x, hop.log_beta.detach().clone().requires_grad_()))


# 4. the energy (KH eq. 13) ---------------------------------------------------------------------------------
def test_energy_matches_modern_energy_per_head_and_on_unmasked_subset():
    d = torch.float64
    xi, Y = rnd(5, 6, seed=1, dtype=d), rnd(9, 6, seed=2, dtype=d)
    torch.testing.assert_close(AF.hopfield_energy(xi, Y, 0.6), AF.modern_energy(xi, Y, 0.6))
    mask = torch.zeros(9, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    torch.testing.assert_close(AF.hopfield_energy(xi, Y, 0.6, mask), AF.modern_energy(xi, Y[~mask], 0.6))
    # a layer's energy, head by head, equals the single-head energy of that head's slice at the query
    hop = Hopfield(6, num_heads=3, beta=0.6, projections=False, dtype=d)
    out = hop(xi.unsqueeze(0), Y.unsqueeze(0), key_padding_mask=mask.unsqueeze(0), return_energy=True)
    for h in range(3):
        sl = slice(2 * h, 2 * h + 2)
        torch.testing.assert_close(out.energy[0, h], AF.modern_energy(xi[:, sl], Y[~mask][:, sl], 0.6))


def test_energy_gradient_is_state_minus_update():
    """dE/dxi = xi - Y^T softmax(beta Y xi + m): the update is a fixed point exactly where the gradient vanishes."""
    d = torch.float64
    xi = rnd(2, 3, 4, 5, seed=1, dtype=d).requires_grad_()
    Y = rnd(2, 3, 7, 5, seed=2, dtype=d)
    m = rnd(4, 7, seed=3, dtype=d)
    (g,) = torch.autograd.grad(AF.hopfield_energy(xi, Y, 0.9, m).sum(), xi)
    upd = AF.hopfield_retrieve(xi.detach(), Y, beta=0.9, mask=m).retrieved
    torch.testing.assert_close(g, xi.detach() - upd)


def test_energy_never_increases_with_update_steps_and_converges():
    """CCCP (Ramsauer et al. Thm 1): E(xi_{t+1}) <= E(xi_t), also with masks and several heads."""
    torch.manual_seed(1)
    hop_args = dict(num_heads=2, beta=2.0, projections=False, dtype=torch.float64)
    x, Y = rnd(3, 4, 8, seed=2, dtype=torch.float64), rnd(3, 10, 8, seed=3, dtype=torch.float64)
    kpm = torch.zeros(3, 10, dtype=torch.bool)
    kpm[1, :4] = True
    energies = []
    for n in range(1, 8):
        hop = Hopfield(8, update_steps=n, **hop_args)
        energies.append(hop(x, Y, key_padding_mask=kpm, return_energy=True).energy)
    E = torch.stack(energies)
    assert bool((E[1:] <= E[:-1] + 1e-12).all())
    assert bool((E[-1] < E[0] - 1e-6).any())
    # iterate to convergence: the result is a fixed point of the update
    hop = Hopfield(8, update_steps=None, tol=1e-12, **hop_args)
    out = hop(x, Y, key_padding_mask=kpm, return_energy=True)
    assert 1 < out.steps < 100
    again = Hopfield(8, update_steps=1, **hop_args)(out.retrieved, Y, key_padding_mask=kpm)
    torch.testing.assert_close(again, out.retrieved, rtol=0, atol=1e-10)
    assert bool((out.energy <= E[-1] + 1e-12).all())


def test_retrieval_of_stored_pattern_from_partial_cue():
    X = torch.sign(rnd(200, 64, seed=4))
    cue = X[:10].clone()
    cue[:, 32:] = 0
    layer = HopfieldLayer(64, num_patterns=200, beta=0.5, update_steps=None)
    with torch.no_grad():
        layer.patterns.copy_(X)
        out = layer(cue, return_weights=True)
    assert torch.equal(torch.sign(out.retrieved), X[:10])
    assert torch.equal(out.weights.argmax(-1), torch.arange(10))


# 5. masks ------------------------------------------------------------------------------------------------
def test_pooling_padding_and_permutation_invariance():
    torch.manual_seed(0)
    pool = HopfieldPooling(6, num_queries=3, num_heads=2)
    bag = rnd(5, 6, seed=1)
    alone = pool(bag)  # unbatched (S, size)
    assert alone.shape == (3, 6)
    padded = torch.cat([bag, rnd(4, 6, seed=2) * 100]).unsqueeze(0)  # garbage in the padding
    kpm = torch.zeros(1, 9, dtype=torch.bool)
    kpm[0, 5:] = True
    torch.testing.assert_close(pool(padded, key_padding_mask=kpm)[0], alone, rtol=1e-5, atol=1e-6)
    perm = torch.randperm(5)
    torch.testing.assert_close(pool(bag[perm]), alone, rtol=1e-5, atol=1e-6)
    # batch_first=False layout
    pool.hopfield.batch_first = False
    torch.testing.assert_close(pool(padded.transpose(0, 1), key_padding_mask=kpm)[:, 0], alone, rtol=1e-5, atol=1e-6)


def test_fully_masked_query_retrieves_zeros_not_nan():
    """A query with nothing to attend to (e.g. a padded query under a causal mask) gets zero weights and a
    zero retrieved pattern as in F.scaled_dot_product_attention, energy +inf, and finite gradients; the other
    queries are unaffected. nn.MultiheadAttention returns NaN there."""
    d = torch.float64
    hop = Hopfield(4, num_heads=2, projections=False, dtype=d)
    x = rnd(2, 3, 4, seed=1, dtype=d)
    kpm = torch.zeros(2, 3, dtype=torch.bool)
    kpm[1] = True  # batch element 1: everything is padding
    am = torch.zeros(3, 3, dtype=d)
    am[2] = float("-inf")  # query 2 may see nothing
    for kw in ({"key_padding_mask": kpm}, {"attn_mask": am}, {"key_padding_mask": kpm, "attn_mask": am}):
        xg = x.clone().requires_grad_()
        fast = hop(xg, **kw)
        out = hop(xg, **kw, return_weights=True, return_energy=True)
        dead = torch.zeros(2, 3, dtype=torch.bool)
        if "key_padding_mask" in kw:
            dead[1] = True
        if "attn_mask" in kw:
            dead[:, 2] = True
        for o in (fast, out.retrieved):
            assert not o.isnan().any()
            assert bool((o[dead] == 0).all())
        torch.testing.assert_close(fast, out.retrieved)
        assert bool((out.weights[dead] == 0).all())
        assert bool(torch.isposinf(out.energy.transpose(1, 2)[dead]).all())
        assert bool(torch.isfinite(out.energy.transpose(1, 2)[~dead]).all())
        (fast.sum() + out.retrieved.sum() + out.energy[torch.isfinite(out.energy)].sum()).backward()
        assert bool(torch.isfinite(xg.grad).all())
    # the live queries equal a retrieval without the dead batch element
    torch.testing.assert_close(hop(x, key_padding_mask=kpm)[0], hop(x[:1])[0])


# 6. the two learned-pattern layers ------------------------------------------------------------------------
def test_hopfield_layer_is_a_lookup_in_its_patterns():
    torch.manual_seed(0)
    layer = HopfieldLayer(5, num_patterns=7, beta=1.5)
    x = rnd(2, 3, 5, seed=1)
    P = layer.patterns.detach()
    ref = torch.softmax(1.5 * x @ P.T, -1) @ P
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x[1]), ref[1], rtol=1e-5, atol=1e-6)  # unbatched (L, size)
    kv = HopfieldLayer(5, num_patterns=7, beta=1.5, separate_values=True, output_size=3)
    ref = torch.softmax(1.5 * x @ kv.patterns.detach().T, -1) @ kv.values.detach()
    torch.testing.assert_close(kv(x), ref, rtol=1e-5, atol=1e-6)
    kv(x).sum().backward()
    assert kv.patterns.grad is not None and kv.values.grad is not None and kv.patterns.grad.abs().sum() > 0
    proj = HopfieldLayer(5, num_patterns=7, hidden_size=4, num_heads=2, project_state=True, project_output=True)
    assert proj(x).shape == (2, 3, 5)


def test_learned_beta_starts_at_the_fixed_value_and_is_trained():
    torch.manual_seed(0)
    fixed = Hopfield(8, num_heads=2, beta=0.3)
    learned = Hopfield(8, num_heads=2, beta=0.3, learn_beta=True)
    learned.load_state_dict(fixed.state_dict(), strict=False)
    x = rnd(2, 4, 8)
    torch.testing.assert_close(learned(x), fixed(x))
    learned(x).square().sum().backward()
    assert learned.log_beta.grad.shape == (2,) and bool((learned.log_beta.grad != 0).all())


# 7. low precision ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    torch.manual_seed(0)
    ref = Hopfield(16, num_heads=2)
    low = Hopfield(16, num_heads=2, dtype=dtype)
    low.load_state_dict(ref.state_dict())
    x = rnd(3, 6, 16)
    kpm = torch.zeros(3, 6, dtype=torch.bool)
    kpm[0, 3:] = True
    try:
        out = low(x.to(dtype), key_padding_mask=kpm, return_weights=True, return_energy=True)
        fast = low(x.to(dtype), key_padding_mask=kpm)
    except RuntimeError as e:  # pragma: no cover - a device without these kernels
        pytest.skip(f"{dtype} not supported here: {e}")
    r = ref(x, key_padding_mask=kpm, return_weights=True, return_energy=True)
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert out.retrieved.dtype == dtype and fast.dtype == dtype
    assert out.energy.dtype == torch.float32  # the energy is accumulated in float32
    torch.testing.assert_close(out.retrieved.float(), r.retrieved, rtol=tol, atol=tol)
    torch.testing.assert_close(fast.float(), r.retrieved, rtol=tol, atol=tol)
    torch.testing.assert_close(out.energy, r.energy, rtol=tol, atol=tol)
    torch.testing.assert_close(out.weights.float().sum(-1), torch.ones(3, 6), rtol=0, atol=tol)
    out.retrieved.float().sum().backward()
    assert low.state_proj.weight.grad.dtype == dtype and torch.isfinite(low.state_proj.weight.grad).all()


# 8. torch.compile ---------------------------------------------------------------------------------------
def test_torch_compile_full_graph_matches_eager():
    """Dynamo traces the whole forward and backward without a graph break (aot_eager backend: no C compiler needed)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    hop = Hopfield(8, num_heads=2, update_steps=2, learn_beta=True)
    x = rnd(2, 5, 8)
    compiled = torch.compile(hop, backend="aot_eager", fullgraph=True)
    out = compiled(x, return_energy=True)
    ref = hop(x, return_energy=True)
    torch.testing.assert_close(out.retrieved, ref.retrieved)
    torch.testing.assert_close(out.energy, ref.energy)
    out.retrieved.sum().backward()
    g = hop.log_beta.grad.clone()
    hop.zero_grad()
    ref.retrieved.sum().backward()
    torch.testing.assert_close(g, hop.log_beta.grad)
    # masks need no host synchronisation, so pooling a padded batch also traces as one graph
    pool = HopfieldPooling(8, num_heads=2)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[0, 3:] = True
    cp = torch.compile(pool, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(cp(x, key_padding_mask=kpm), pool(x, key_padding_mask=kpm))
    layer = EnergyLayer(8, 6, steps=2, dt=0.1)
    torch.testing.assert_close(torch.compile(layer, backend="aot_eager", fullgraph=True)(x[0]), layer(x[0]))


@pytest.mark.slow
def test_torch_compile_inductor():
    """The default backend (inductor, generates and compiles C++): about a minute on a cold cache."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    hop = Hopfield(8, num_heads=2)
    pool = HopfieldPooling(8, num_heads=2)
    x = rnd(2, 5, 8)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[0, 3:] = True
    torch.testing.assert_close(torch.compile(hop)(x), hop(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.compile(pool)(x, key_padding_mask=kpm), pool(x, key_padding_mask=kpm), rtol=1e-5, atol=1e-6)


# 9. the energy layer: TwoLayerNetwork with learned xi ----------------------------------------------------
@pytest.mark.parametrize("method", ["rk4", "euler"])
def test_energy_layer_equals_simulate(method):
    d = torch.float64
    xi = rnd(12, 6, seed=1, dtype=d)
    layer = EnergyLayer(6, 12, Quadratic(), LogSumExp(beta=2.0), steps=7, dt=0.05, method=method, tau_h=0.2, xi=xi, dtype=d)
    v0 = rnd(4, 6, seed=2, dtype=d)
    out = layer(v0, return_energy=True)
    net = TwoLayerNetwork(xi, Quadratic(), LogSumExp(beta=2.0), tau_f=1.0, tau_h=0.2)
    traj = net.simulate(v0, t_max=7 * 0.05, dt=0.05, method=method, tol=1e-300)
    assert traj.steps == 7
    torch.testing.assert_close(out.v, traj.final_v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.h, traj.final_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.energy, traj.energy, rtol=1e-12, atol=1e-12)
    assert bool((out.energy[1:] <= out.energy[:-1] + 1e-12).all())  # KH eq. 4, small steps


def test_energy_layer_gradcheck_and_learned_lagrangian():
    d = torch.float64
    torch.manual_seed(0)
    layer = AssociativeMemoryLayer(4, 5, Tanh(beta=1.5), LogSumExp(beta=1.2), steps=3, dt=0.1, learn_lagrangians=True, dtype=d)
    assert AssociativeMemoryLayer is EnergyLayer
    names = {n for n, _ in layer.named_parameters()}
    assert "network.xi" in names and any("lagrangian_h" in n for n in names) and any("lagrangian_v" in n for n in names)
    assert float(layer.network.lagrangian_h.beta.detach()) == pytest.approx(1.2)
    v0 = rnd(2, 4, seed=1, dtype=d)
    xi0 = layer.xi.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda xi: torch.func.functional_call(layer, {"network.xi": xi}, (v0,)), (xi0,))
    # a few steps of training change beta and keep it positive
    opt = torch.optim.SGD(layer.parameters(), lr=5.0)
    for _ in range(5):
        opt.zero_grad()
        layer(v0).sub(1.0).square().sum().backward()
        opt.step()
    beta = float(layer.network.lagrangian_h.beta.detach())
    assert beta > 0 and beta != pytest.approx(1.2)


def test_energy_layer_input_current_clamp_and_training():
    torch.manual_seed(0)
    layer = EnergyLayer(6, 8, steps=4, dt=0.25)
    v0 = rnd(3, 6, seed=1)
    clamp = torch.zeros(6, dtype=torch.bool)
    clamp[:2] = True
    out = layer(v0, input_current=rnd(6, seed=2), clamp=clamp)
    torch.testing.assert_close(out[:, :2], v0[:, :2])
    # learn xi so that the layer completes noisy versions of 4 targets
    targets = torch.sign(rnd(4, 6, seed=3))
    noisy = targets.repeat(8, 1) + 0.3 * rnd(32, 6, seed=4)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (layer(noisy) - targets.repeat(8, 1)).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_energy_layer_divergence_is_reported():
    layer = EnergyLayer(3, 4, lagrangian_h=__import__("assocmem").lagrangians.Exp(beta=1.0), steps=50, dt=0.5, method="euler",
                        xi=torch.full((4, 3), 5.0))
    with pytest.raises(DivergenceError, match="diverged"):
        layer(torch.full((2, 3), 5.0))


# 10. bad input ------------------------------------------------------------------------------------------
def test_bad_construction():
    with pytest.raises(ValueError, match=r"num_heads: got 3; expected a divisor of hidden_size = 8"):
        Hopfield(8, num_heads=3)
    with pytest.raises(ValueError, match="num_heads: got 4; expected a divisor of the value size 10"):
        Hopfield(8, num_heads=4, project_values=False, value_size=10)
    with pytest.raises(ValueError, match="hidden_size: got 6 with input_size 8 and project_state=False"):
        Hopfield(8, 6, project_state=False)
    with pytest.raises(ValueError, match="stored_size: got 5 with hidden_size 8"):
        Hopfield(8, stored_size=5, project_stored=False)
    with pytest.raises(ValueError, match="output_size: got 3 with project_output=False"):
        Hopfield(8, output_size=3, project_output=False)
    with pytest.raises(ValueError, match="beta"):
        Hopfield(8, beta=-1.0)
    with pytest.raises(ValueError, match="update_steps"):
        Hopfield(8, update_steps=0)
    with pytest.raises(TypeError, match="mha"):
        Hopfield.from_multihead_attention(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="xi: got"):
        EnergyLayer(3, 4, xi=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="method"):
        EnergyLayer(3, 4, method="dopri5")


def test_bad_forward_inputs_name_argument_and_shapes():
    hop = Hopfield(8, num_heads=2, stored_size=6)
    x, y = rnd(2, 4, 8), rnd(2, 5, 6)
    with pytest.raises(ValueError, match=r"state: got a tensor of shape \(2, 4, 7\); expected last dimension input_size = 8"):
        hop(rnd(2, 4, 7), y)
    with pytest.raises(ValueError, match=r"stored: got a tensor of shape \(2, 5, 8\) with state of shape \(2, 4, 8\).*stored_size = 6"):
        hop(x, rnd(2, 5, 8))
    with pytest.raises(ValueError, match=r"values: got a tensor of shape \(2, 4, 6\) with stored of shape \(2, 5, 6\)"):
        hop(x, y, rnd(2, 4, 6))
    with pytest.raises(ValueError, match=r"stored: got batch size 3"):
        hop(x, rnd(3, 5, 6))
    with pytest.raises(ValueError, match=r"key_padding_mask: got tensor of shape \(2, 4\).*expected a bool or float tensor of shape \(2, 5\)"):
        hop(x, y, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_padding_mask: got tensor of shape \(2, 5\) and dtype int64"):
        hop(x, y, key_padding_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attn_mask: got tensor of shape \(5, 4\).*\(4, 5\), \(4, 4, 5\) or \(2, 2, 4, 5\)"):
        hop(x, y, attn_mask=torch.zeros(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"state: got a tensor of shape \(8,\)"):
        hop(rnd(8), y)
    with pytest.raises(TypeError, match="state"):
        hop([[1.0] * 8])
    with pytest.raises(TypeError, match=r"state: got tensor of shape \(2, 4, 8\) and dtype int64; expected a floating-point"):
        hop(x.long(), y)  # found by the fuzz test: integer input reached SDPA's dtype error
    with pytest.raises(TypeError, match=r"state: .*int64.*floating-point"):
        HopfieldLayer(8, 5)(x.long())
    with pytest.raises(ValueError, match=r"stored: got"):
        AF.hopfield_retrieve(rnd(2, 3, 4), rnd(2, 5, 3))
    with pytest.raises(ValueError, match=r"mask: got tensor of shape \(3, 4\).*scores of shape \(2, 3, 5\)"):
        AF.hopfield_retrieve(rnd(2, 3, 4), rnd(2, 5, 4), mask=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"values: got shape \(2, 4, 4\)"):
        AF.hopfield_retrieve(rnd(2, 3, 4), rnd(2, 5, 4), rnd(2, 4, 4))
    pool = HopfieldPooling(6)
    with pytest.raises(ValueError, match=r"stored: got a tensor of shape \(2, 5, 7\)"):
        pool(rnd(2, 5, 7))
    layer = EnergyLayer(6, 4)
    with pytest.raises(ValueError, match=r"v0: got tensor of shape \(2, 5\).*N_f = 6"):
        layer(rnd(2, 5))
    with pytest.raises(ValueError, match=r"clamp: got"):
        layer(rnd(2, 6), clamp=torch.zeros(6))


def test_output_type():
    hop = Hopfield(4)
    x = rnd(1, 2, 4)
    assert isinstance(hop(x), torch.Tensor)
    out = hop(x, return_weights=True)
    # steps counts the updates applied before the read-out: none for plain attention (it reported 1)
    assert isinstance(out, HopfieldOutput) and out.energy is None and out.steps == 0
