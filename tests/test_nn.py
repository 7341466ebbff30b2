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


# ====================================================================================================
# native additions: pattern normalisation, per-head beta, updates counted as updates, pooling and
# lookup options
# ====================================================================================================
def layer_norm_by_hand(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    return y if w is None else y * w + b


def perturb_(module, seed=0, scale=0.3):
    """Move every parameter off its initial value (LayerNorm scales off 1, biases off 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def test_normalize_off_by_default_and_layer_norm_on_the_three_inputs():
    d = torch.float64
    x, y, v = rnd(2, 5, 6, seed=1, dtype=d), rnd(2, 7, 6, seed=2, dtype=d), rnd(2, 7, 4, seed=3, dtype=d)
    plain = Hopfield(6, num_heads=2, value_size=4, projections=False, dtype=d)
    assert plain.state_norm is None and plain.stored_norm is None and plain.value_norm is None
    ref = F.scaled_dot_product_attention(split_heads(x, 2), split_heads(y, 2), split_heads(v, 2))
    torch.testing.assert_close(plain(x, y, v), ref.transpose(1, 2).reshape(2, 5, 4), rtol=0, atol=1e-12)
    hop = perturb_(Hopfield(6, num_heads=2, value_size=4, normalize="layer", dtype=d))
    for n in ("state", "stored", "value"):
        assert isinstance(getattr(hop, n + "_norm"), nn.LayerNorm)
    q = hop.state_proj(layer_norm_by_hand(x, hop.state_norm.weight, hop.state_norm.bias))
    k = hop.stored_proj(layer_norm_by_hand(y, hop.stored_norm.weight, hop.stored_norm.bias))
    vv = hop.value_proj(layer_norm_by_hand(v, hop.value_norm.weight, hop.value_norm.bias))
    o = F.scaled_dot_product_attention(split_heads(q, 2), split_heads(k, 2), split_heads(vv, 2), scale=hop.beta)
    torch.testing.assert_close(hop(x, y, v), hop.out_proj(o.transpose(1, 2).reshape(2, 5, 6)), rtol=1e-10, atol=1e-10)
    # self-association: the three norms stay separate (own affine parameters), also without projections
    solo = perturb_(Hopfield(6, num_heads=2, normalize="layer", projections=False, dtype=d))
    qn = layer_norm_by_hand(x, solo.state_norm.weight, solo.state_norm.bias)
    kn = layer_norm_by_hand(x, solo.stored_norm.weight, solo.stored_norm.bias)
    vn = layer_norm_by_hand(x, solo.value_norm.weight, solo.value_norm.bias)
    o = F.scaled_dot_product_attention(split_heads(qn, 2), split_heads(kn, 2), split_heads(vn, 2), scale=solo.beta)
    torch.testing.assert_close(solo(x), o.transpose(1, 2).reshape(2, 5, 6), rtol=1e-10, atol=1e-10)
    # one switch alone
    only = Hopfield(6, normalize_stored=True)
    assert only.stored_norm is not None and only.state_norm is None and only.value_norm is None
    with pytest.raises(ValueError, match="normalize: got 'batch'"):
        Hopfield(6, normalize="batch")


def test_per_head_beta_fixed_and_learned():
    d = torch.float64
    x, y = rnd(3, 4, 8, seed=4, dtype=d), rnd(3, 9, 8, seed=5, dtype=d)
    betas = torch.tensor([0.25, 1.0, 4.0, 9.0], dtype=d)
    hop = Hopfield(8, num_heads=4, beta=betas, projections=False, dtype=d)
    assert torch.equal(hop.beta, betas) and "beta" not in "".join(hop.state_dict())
    out = hop(x, y, return_weights=True, average_weights=False)
    qs, ks = split_heads(x, 4), split_heads(y, 4)
    for h in range(4):  # each head is attention with its own scale
        ref = F.scaled_dot_product_attention(qs[:, h], ks[:, h], ks[:, h], scale=float(betas[h]))
        torch.testing.assert_close(out.retrieved[..., 2 * h:2 * h + 2], ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.weights[:, h], torch.softmax(betas[h] * qs[:, h] @ ks[:, h].transpose(1, 2), -1))
    torch.testing.assert_close(hop(x, y), out.retrieved)  # the fused path agrees with the explicit one
    learned = Hopfield(8, num_heads=4, beta=[0.25, 1.0, 4.0, 9.0], learn_beta=True, projections=False, dtype=d)
    torch.testing.assert_close(learned.beta.detach(), betas)
    learned(x, y).sum().backward()
    assert learned.log_beta.grad is not None and bool((learned.log_beta.grad != 0).all())
    with pytest.raises(ValueError, match=r"beta: got shape \(3,\); expected .* shape \(4,\)"):
        Hopfield(8, num_heads=4, beta=torch.ones(3))
    with pytest.raises(ValueError, match="beta: got .*expected finite numbers > 0"):
        Hopfield(8, num_heads=2, beta=[1.0, -1.0])


def test_updates_count_the_updates_applied_and_update_steps_is_the_older_spelling():
    d = torch.float64
    X = rnd(30, 10, seed=6, dtype=d)
    cue = rnd(4, 10, seed=7, dtype=d)
    m = ModernHopfield(X, beta=0.8)
    for k in (0, 1, 3):
        ref = cue
        for _ in range(k + 1):  # k updates, then the read-out (itself one more application with values = X)
            ref = m.step(ref)
        new = Hopfield(10, beta=0.8, updates=k, projections=False, dtype=d)
        old = Hopfield(10, beta=0.8, update_steps=k + 1, projections=False, dtype=d)
        out = new(cue, X, return_energy=True)
        assert out.steps == k and old(cue, X, return_energy=True).steps == k
        assert new.updates == old.updates == k and new.update_steps == k + 1
        torch.testing.assert_close(out.retrieved, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(old(cue, X), ref, rtol=1e-12, atol=1e-12)
    conv = Hopfield(10, beta=0.8, updates=None, tol=1e-12, projections=False, dtype=d)
    res = conv(cue, X, return_energy=True)
    again = Hopfield(10, beta=0.8, updates=res.steps, projections=False, dtype=d)(cue, X)
    torch.testing.assert_close(again, res.retrieved, rtol=0, atol=1e-12)  # steps is exactly what was applied
    assert Hopfield(10, updates=None, max_updates=2, projections=False)(cue.float(), X.float(), return_weights=True).steps <= 2
    with pytest.raises(ValueError, match="updates: got updates=2 and update_steps=3; expected only one"):
        Hopfield(10, updates=2, update_steps=3)
    with pytest.raises(ValueError, match="updates: got -1; expected an integer >= 0"):
        Hopfield(10, updates=-1)


def test_pooling_output_defaults_to_input_size_and_reads_separate_values():
    pool = HopfieldPooling(12, num_queries=2, hidden_size=8, num_heads=2)
    assert pool.output_size == 12  # it was hidden_size (8), against its own docstring
    assert pool(rnd(3, 5, 12)).shape == (3, 2, 12)
    d = torch.float64
    bags, vals = rnd(3, 5, 12, seed=8, dtype=d), rnd(3, 5, 4, seed=9, dtype=d)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    kv = perturb_(HopfieldPooling(12, num_queries=2, num_heads=2, value_size=4, dtype=d))
    assert kv.value_size == 4 and kv.output_size == 12
    out = kv(bags, pad, values=vals, return_weights=True, average_weights=False)
    h = kv.hopfield
    w = out.weights  # (B, H, Q, S)
    v = split_heads(h.value_proj(vals), 2)
    ref = h.out_proj((w @ v).transpose(1, 2).reshape(3, 2, 12))
    torch.testing.assert_close(out.retrieved, ref, rtol=1e-12, atol=1e-12)
    assert float(w[0, :, :, 3:].detach().abs().max()) == 0.0
    # unbatched set with values
    torch.testing.assert_close(kv(bags[1], values=vals[1]), kv(bags[1:2], values=vals[1:2])[0], rtol=1e-12, atol=1e-12)
    normed = HopfieldPooling(12, normalize="layer")
    assert normed.hopfield.state_norm is None and normed.hopfield.stored_norm is not None and normed.hopfield.value_norm is not None


def test_hopfield_layer_frozen_targets_given_contents_and_state_projection():
    keys = 2 * torch.eye(6) + 0.1 * rnd(6, 6, seed=10)
    targets = torch.eye(6)[:, [2, 0, 1, 5, 3, 4]]  # class targets, one per stored key
    layer = HopfieldLayer(6, 6, beta=4.0, patterns=keys, values=targets, learn_values=False)
    assert layer.separate_values and layer.output_size == 6
    assert torch.equal(layer.patterns.detach(), keys) and layer.patterns.data_ptr() != keys.data_ptr()
    assert not layer.values.requires_grad and layer.patterns.requires_grad
    with torch.no_grad():  # each stored key retrieves its own target
        assert torch.equal(layer(keys).argmax(-1), targets.argmax(-1))
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.5)
    layer(rnd(2, 5, 6, seed=11)).square().sum().backward()
    assert layer.values.grad is None and layer.patterns.grad is not None
    opt.step()
    assert torch.equal(layer.values.detach(), targets) and not torch.equal(layer.patterns.detach(), keys)
    frozen = HopfieldLayer(4, 6, learn_patterns=False)
    assert not frozen.patterns.requires_grad
    # hidden_size != input_size: a state projection is added instead of an error
    proj = HopfieldLayer(10, 6, hidden_size=4)
    assert proj.hopfield.state_proj is not None and proj(rnd(2, 3, 10)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"patterns: got .*expected a floating-point tensor of shape \(6, 4\)"):
        HopfieldLayer(4, 6, patterns=torch.zeros(5, 4))
    with pytest.raises(ValueError, match="values: got starting values with separate_values=False"):
        HopfieldLayer(6, 6, values=targets, separate_values=False)


# ====================================================================================================
# assocmem.nn.compat against hopfield-layers' equations: an independent reference written from them in
# plain torch (loops over batch and heads), and hflayers itself where it is importable
# ====================================================================================================
from assocmem.nn import compat as C  # noqa: E402


def hf_reference(kind, cfg, sd, data, kpm=None, am=None):
    """hopfield-layers' forward, written from its documented equations (Ramsauer et al. 2020 eq. 3 with
    LayerNorm on the three inputs, per-head update loop that stops at update_steps_max updates or when the
    association matrix changes by at most update_steps_eps, Frobenius norm, maximum over the batch)."""
    pre = "" if kind == "Hopfield" else "hopfield."
    H = cfg.get("num_heads", 1)
    E = cfg["input_size"]
    hd = cfg.get("hidden_size") or E // H
    pd = cfg.get("pattern_size") or hd
    beta = cfg.get("scaling") or 1 / math.sqrt(hd)
    limit = cfg.get("update_steps_max", 0)
    eps = cfg.get("update_steps_eps", 1e-4)
    qs = cfg.get("state_pattern_as_static", False)
    ks = cfg.get("stored_pattern_as_static", False)
    bf = cfg.get("batch_first", True)
    if kind == "Hopfield":
        stored, state, proj = data if isinstance(data, tuple) else (data, data, data)
    elif kind == "HopfieldPooling":
        stored = proj = data
        w = sd["pooling_weights"]
        n = data.shape[0 if bf else 1]
        state = w.expand(n, -1, -1) if bf else w.expand(-1, n, -1)
    else:
        state = data
        n = data.shape[0 if bf else 1]
        lw = sd["lookup_weights"]
        stored = lw.expand(n, -1, -1) if bf else lw.expand(-1, n, -1)
        tw = sd.get("target_weights")
        proj = stored if tw is None else (tw.expand(n, -1, -1) if bf else tw.expand(-1, n, -1))
    if not bf:
        stored, state, proj = stored.transpose(0, 1), state.transpose(0, 1), proj.transpose(0, 1)

    def norm(x, name):
        if pre + name + ".weight" in sd:
            return layer_norm_by_hand(x, sd[pre + name + ".weight"], sd[pre + name + ".bias"])
        return x

    stored, state, proj = norm(stored, "norm_stored_pattern"), norm(state, "norm_state_pattern"), norm(proj, "norm_pattern_projection")
    c = pre + "association_core."
    if c + "in_proj_weight" in sd:
        rows = [hd * H] * (not qs) + [hd * H] * (not ks) + [pd * H]
        parts = list(sd[c + "in_proj_weight"].split(rows))
        Wq = None if qs else parts.pop(0)
        Wk = None if ks else parts.pop(0)
        Wv = parts.pop(0)
    else:
        Wq, Wk, Wv = sd.get(c + "q_proj_weight"), sd.get(c + "k_proj_weight"), sd.get(c + "v_proj_weight")
    bias = sd.get(c + "in_proj_bias")
    if bias is not None:
        parts = list(bias.split([hd * H] * (not qs) + [hd * H] * (not ks) + [pd * H]))
        bq = None if qs else parts.pop(0)
        bk = None if ks else parts.pop(0)
        bv = parts.pop(0)
    else:
        bq = bk = bv = 0.0
    q = state if qs else state @ Wq.T + bq
    k = stored if ks else stored @ Wk.T + bk
    v = proj @ Wv.T + bv
    B, L, S = state.shape[0], state.shape[1], stored.shape[1]

    def head(x, h, static, size):
        return x if static else x[..., h * size:(h + 1) * size]

    def assoc(xi, kh, b, h):
        s = beta * xi @ kh.T
        if kpm is not None:
            s = s.masked_fill(kpm[b], float("-inf"))
        if am is not None:
            if am.dtype == torch.bool:
                s = s.masked_fill(am, float("-inf"))
            else:
                s = s + am[b * H + h]
        e = torch.exp(s - s.max(-1, keepdim=True).values)
        return e / e.sum(-1, keepdim=True)

    out = torch.zeros(B, L, H * pd, dtype=q.dtype)
    for h in range(H):
        kh = [head(k[b], h, ks, hd) for b in range(B)]
        A = [assoc(head(q[b], h, qs, hd), kh[b], b, h) for b in range(B)]
        step, active = 0, limit is None or limit > 0
        while active:
            step += 1
            new = [assoc(A[b] @ kh[b], kh[b], b, h) for b in range(B)]
            change = max(float(torch.linalg.norm(new[b] - A[b])) for b in range(B))
            A = new
            active = (limit is None or step < limit) and change > eps
        for b in range(B):
            out[b, :, h * pd:(h + 1) * pd] = A[b] @ v[b, :, h * pd:(h + 1) * pd]
    if c + "out_proj.weight" in sd:
        out = out @ sd[c + "out_proj.weight"].T + sd.get(c + "out_proj.bias", 0.0)
    if not bf:
        out = out.transpose(0, 1)
    return out.flatten(start_dim=1) if kind == "HopfieldPooling" else out


B_, L_, S_, E_ = 3, 4, 6, 8


def _grid():
    for H in (1, 2, 4):
        for steps in (0, 1, 3, None):
            yield "Hopfield", dict(input_size=E_, num_heads=H, update_steps_max=steps, scaling=0.7 if steps else None), "self"
            yield "Hopfield", dict(input_size=E_, num_heads=H, hidden_size=3, pattern_size=5, output_size=7, stored_pattern_size=6,
                                   pattern_projection_size=5, update_steps_max=steps), "three"
            yield "HopfieldPooling", dict(input_size=E_, num_heads=H, quantity=2, update_steps_max=steps), "set"
            yield "HopfieldLayer", dict(input_size=E_, num_heads=H, quantity=5, update_steps_max=steps, lookup_weights_as_separated=True,
                                        lookup_targets_as_trainable=False), "seq"
    yield "Hopfield", dict(input_size=E_, num_heads=2, batch_first=False, update_steps_max=2), "self"
    yield "Hopfield", dict(input_size=E_, num_heads=2, input_bias=False, disable_out_projection=True), "self"
    yield "HopfieldPooling", dict(input_size=E_, num_heads=2, hidden_size=E_, state_pattern_as_static=True, normalize_state_pattern=False,
                                  normalize_state_pattern_affine=False, update_steps_max=2), "set"
    yield "HopfieldLayer", dict(input_size=E_, num_heads=2, hidden_size=E_, quantity=5, stored_pattern_as_static=True,
                                normalize_stored_pattern=False, normalize_stored_pattern_affine=False), "seq"


GRID = list(_grid())


def _build(kind, cfg, seed=0):
    """A compat layer with every parameter moved off its initial value (so LayerNorm scales and biases count)."""
    torch.manual_seed(seed)
    return perturb_(getattr(C, kind)(**cfg).double().eval(), seed=seed)


def _data(kind, how, bf=True, seed=1):
    g = torch.Generator().manual_seed(seed)

    def t(n, size):
        return torch.randn((B_, n, size) if bf else (n, B_, size), generator=g, dtype=torch.float64)

    if how == "three":
        return t(S_, 6), t(L_, E_), t(S_, 5)
    return t(S_ if how == "set" else L_, E_)


@pytest.mark.parametrize("i", range(len(GRID)), ids=[f"{k}-{c.get('num_heads')}h-{c.get('update_steps_max')}-{h}" for k, c, h in GRID])
def test_compat_equals_hopfield_layers_equations(i):
    kind, cfg, how = GRID[i]
    layer = _build(kind, cfg)
    data = _data(kind, how, cfg.get("batch_first", True))
    ref = hf_reference(kind, cfg, layer.state_dict(), data)
    torch.testing.assert_close(layer(data), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("steps", [0, 2])
def test_compat_masks_equal_the_reference(steps):
    cfg = dict(input_size=E_, num_heads=2, update_steps_max=steps)
    layer = _build("Hopfield", cfg)
    data = (rnd(B_, S_, E_, seed=4, dtype=torch.float64), rnd(B_, L_, E_, seed=5, dtype=torch.float64),
            rnd(B_, S_, E_, seed=6, dtype=torch.float64))
    kpm = torch.zeros(B_, S_, dtype=torch.bool)
    kpm[0, 4:] = True
    kpm[2, 1] = True
    am = torch.zeros(L_, S_, dtype=torch.bool)
    am[0, 0] = am[3, 2] = True
    amf = rnd(B_ * 2, L_, S_, seed=7, dtype=torch.float64)
    sd = layer.state_dict()
    for kw in ({"stored_pattern_padding_mask": kpm}, {"association_mask": am}, {"association_mask": amf},
               {"stored_pattern_padding_mask": kpm.to(torch.uint8), "association_mask": amf}):
        ref = hf_reference("Hopfield", cfg, sd, data, kpm=kpm if "stored_pattern_padding_mask" in kw else None, am=kw.get("association_mask"))
        torch.testing.assert_close(layer(data, **kw), ref, rtol=1e-10, atol=1e-10)


def test_compat_per_head_limits_and_early_stop():
    """update_steps_max per head (a tensor) and the eps criterion on the association matrix."""
    cfg = dict(input_size=E_, num_heads=2, scaling=2.0, update_steps_max=torch.tensor([0, 5]), update_steps_eps=1e-3)
    layer = _build("Hopfield", cfg)
    data = _data("Hopfield", "self", seed=8)
    out = layer(data)
    for h, limit in enumerate((0, 5)):
        one = dict(cfg, update_steps_max=limit)
        ref = hf_reference("Hopfield", one, layer.state_dict(), data)
        # head h of the concatenated read-out, before the output projection, is what this head computed
        W = layer.state_dict()["association_core.out_proj.weight"]
        b = layer.state_dict()["association_core.out_proj.bias"]
        pre_out = torch.linalg.lstsq(W, (ref - b).reshape(-1, E_).T).solution.T.reshape(B_, L_, E_)
        got = torch.linalg.lstsq(W, (out - b).reshape(-1, E_).T).solution.T.reshape(B_, L_, E_)
        torch.testing.assert_close(got[..., h * 4:(h + 1) * 4], pre_out[..., h * 4:(h + 1) * 4], rtol=1e-8, atol=1e-8)
    # a loose eps stops head 1 after its first update: equal to update_steps_max=1 there
    loose = _build("Hopfield", dict(cfg, update_steps_max=torch.tensor([5, 5]), update_steps_eps=1e6))
    once = _build("Hopfield", dict(cfg, update_steps_max=1))
    torch.testing.assert_close(loose(data), once(data), rtol=1e-12, atol=1e-12)


# state_dict keys and shapes of hopfield-layers (ml-jku/hopfield-layers, its current source; checked against it)
HF_KEYS = {
    ("Hopfield", (("input_size", 8), ("num_heads", 2))): [
        ("association_core.in_proj_weight", (24, 8)), ("association_core.in_proj_bias", (24,)),
        ("association_core.out_proj.weight", (8, 8)), ("association_core.out_proj.bias", (8,)),
        ("norm_stored_pattern.weight", (8,)), ("norm_stored_pattern.bias", (8,)), ("norm_state_pattern.weight", (8,)),
        ("norm_state_pattern.bias", (8,)), ("norm_pattern_projection.weight", (8,)), ("norm_pattern_projection.bias", (8,))],
    ("Hopfield", (("input_size", 8), ("hidden_size", 3), ("num_heads", 2), ("stored_pattern_size", 5), ("pattern_size", 4))): [
        ("association_core.q_proj_weight", (6, 8)), ("association_core.k_proj_weight", (6, 5)),
        ("association_core.v_proj_weight", (8, 8)), ("association_core.in_proj_bias", (20,)),
        ("association_core.out_proj.weight", (8, 8)), ("association_core.out_proj.bias", (8,)),
        ("norm_stored_pattern.weight", (5,)), ("norm_stored_pattern.bias", (5,)), ("norm_state_pattern.weight", (8,)),
        ("norm_state_pattern.bias", (8,)), ("norm_pattern_projection.weight", (8,)), ("norm_pattern_projection.bias", (8,))],
    ("HopfieldPooling", (("input_size", 8), ("quantity", 3))): [
        ("pooling_weights", (1, 3, 8)), ("hopfield.association_core.in_proj_weight", (24, 8)),
        ("hopfield.association_core.in_proj_bias", (24,)), ("hopfield.association_core.out_proj.weight", (8, 8)),
        ("hopfield.association_core.out_proj.bias", (8,)), ("hopfield.norm_stored_pattern.weight", (8,)),
        ("hopfield.norm_stored_pattern.bias", (8,)), ("hopfield.norm_state_pattern.weight", (8,)),
        ("hopfield.norm_state_pattern.bias", (8,)), ("hopfield.norm_pattern_projection.weight", (8,)),
        ("hopfield.norm_pattern_projection.bias", (8,))],
    ("HopfieldLayer", (("input_size", 8), ("quantity", 5), ("lookup_weights_as_separated", True), ("lookup_targets_as_trainable", False))): [
        ("lookup_weights", (1, 5, 8)), ("target_weights", (1, 5, 8)), ("hopfield.association_core.in_proj_weight", (24, 8)),
        ("hopfield.association_core.in_proj_bias", (24,)), ("hopfield.association_core.out_proj.weight", (8, 8)),
        ("hopfield.association_core.out_proj.bias", (8,)), ("hopfield.norm_stored_pattern.weight", (8,)),
        ("hopfield.norm_stored_pattern.bias", (8,)), ("hopfield.norm_state_pattern.weight", (8,)),
        ("hopfield.norm_state_pattern.bias", (8,)), ("hopfield.norm_pattern_projection.weight", (8,)),
        ("hopfield.norm_pattern_projection.bias", (8,))],
}


@pytest.mark.parametrize("key", list(HF_KEYS), ids=lambda k: k[0] + "-" + "-".join(f"{a}={b}" for a, b in k[1]))
def test_compat_state_dict_keys_and_defaults_are_hopfield_layers(key):
    kind, args = key
    layer = getattr(C, kind)(**dict(args))
    assert [(k, tuple(v.shape)) for k, v in layer.state_dict().items()] == HF_KEYS[key]
    sd = layer.state_dict()
    # hopfield-layers' initialisation: projections N(0, 0.02^2), biases 0, LayerNorms (1, 0)
    for k, v in sd.items():
        if k.endswith("bias"):
            assert bool((v == 0).all()), k
        elif ".norm_" in "." + k:
            assert bool((v == 1).all()), k
        else:
            assert 0.005 < float(v.std()) < 0.04 and abs(float(v.mean())) < 0.02, k
    if kind == "HopfieldLayer":
        assert not layer.target_weights.requires_grad and layer.lookup_weights.requires_grad
    fresh = getattr(C, kind)(**dict(args))
    fresh.load_state_dict(perturb_(layer).state_dict())
    x = rnd(2, 5, 8, seed=3)
    if "stored_pattern_size" in dict(args):
        x = (rnd(2, 5, 5, seed=4), x, x)
    torch.testing.assert_close(fresh(x), layer(x))


def test_compat_defaults_sizes_and_layout():
    hop = C.Hopfield(input_size=12, num_heads=3)
    assert hop.hidden_size == 4 and hop.output_size == 12 and hop.scaling == pytest.approx(0.5) and hop.batch_first
    assert hop.update_steps_max == 0 and hop.update_steps_eps == 1e-4 and hop.normalize_state_pattern_affine
    pool = C.HopfieldPooling(input_size=12, quantity=2)
    assert pool(rnd(4, 7, 12)).shape == (4, 24)  # flattened, as hopfield-layers returns it
    assert pool.get_association_matrix(rnd(4, 7, 12)).shape == (4, 1, 2, 7)
    assert pool.get_projected_pattern_matrix(rnd(4, 7, 12)).shape == (4, 1, 7, 12)
    lay = C.HopfieldLayer(input_size=12, quantity=9, num_heads=3)
    assert lay(rnd(4, 5, 12)).shape == (4, 5, 12) and lay.get_association_matrix(rnd(4, 5, 12)).shape == (4, 3, 5, 9)
    # a fully padded set gives zeros, not NaN (hopfield-layers gives NaN)
    x = rnd(2, 4, 12)
    kpm = torch.zeros(2, 4, dtype=torch.bool)
    kpm[1] = True
    raw = C.Hopfield(input_size=12, disable_out_projection=True)
    out = raw((x, x, x), stored_pattern_padding_mask=kpm)
    assert bool(torch.isfinite(out).all()) and float(out[1].detach().abs().max()) == 0.0


def test_compat_default_equals_native_with_normalisation():
    """compat.Hopfield (hopfield-layers' defaults) = the native Hopfield with normalize='layer' and the
    same weights: update_steps_max = k is updates = k, and hidden_size per head is hidden_size * num_heads."""
    d = torch.float64
    compat = perturb_(C.Hopfield(input_size=8, hidden_size=3, num_heads=2, update_steps_max=2, update_steps_eps=1e-12).double())
    native = Hopfield(8, hidden_size=6, num_heads=2, updates=2, normalize="layer", dtype=d)
    sd = compat.state_dict()
    wq, wk, wv = sd["association_core.in_proj_weight"].split(6)
    bq, bk, bv = sd["association_core.in_proj_bias"].split(6)
    new = {"state_proj.weight": wq, "state_proj.bias": bq, "stored_proj.weight": wk, "stored_proj.bias": bk,
           "value_proj.weight": wv, "value_proj.bias": bv, "out_proj.weight": sd["association_core.out_proj.weight"],
           "out_proj.bias": sd["association_core.out_proj.bias"]}
    for a, b in (("state_norm", "norm_state_pattern"), ("stored_norm", "norm_stored_pattern"), ("value_norm", "norm_pattern_projection")):
        new[a + ".weight"], new[a + ".bias"] = sd[b + ".weight"], sd[b + ".bias"]
    native.load_state_dict(new)
    y, x, v = rnd(3, 6, 8, seed=1, dtype=d), rnd(3, 4, 8, seed=2, dtype=d), rnd(3, 6, 8, seed=3, dtype=d)
    torch.testing.assert_close(native(x, y, v), compat((y, x, v)), rtol=1e-10, atol=1e-10)


def test_compat_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="concat_bias_pattern: got True; not supported"):
        C.Hopfield(input_size=8, concat_bias_pattern=True)
    with pytest.raises(ValueError, match="num_heads: got 3; expected a divisor of input_size = 8"):
        C.Hopfield(input_size=8, num_heads=3)
    with pytest.raises(ValueError, match="input_size: got None"):
        C.Hopfield()
    with pytest.raises(ValueError, match="association_activation: got 'nosuch'"):
        C.Hopfield(input_size=8, association_activation="nosuch")
    hop = C.Hopfield(input_size=8)
    with pytest.raises(ValueError, match=r"state_pattern: got last dimension 5; expected 8 \(input_size\)"):
        hop((rnd(2, 3, 8), rnd(2, 3, 5), rnd(2, 3, 8)))
    with pytest.raises(ValueError, match="stored_pattern: got .*expected a floating-point tensor of shape"):
        hop(rnd(3, 8))
    with pytest.raises(ValueError, match=r"stored_pattern_padding_mask: got .*expected a bool or float tensor of shape \(2, 3\)"):
        hop(rnd(2, 3, 8), stored_pattern_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="input: got .*expected a tensor or a tuple"):
        hop([rnd(2, 3, 8)])
    with pytest.raises(ValueError, match="update_steps_max: got a tensor of shape"):
        C.Hopfield(input_size=8, num_heads=2, update_steps_max=torch.tensor([1, 2, 3]))


HF_GRID = [g for g in GRID if g[0] != "HopfieldLayer" or not g[1].get("stored_pattern_as_static")]


@pytest.mark.parametrize("i", range(len(HF_GRID)))
def test_compat_equals_hflayers_itself(i):
    """Against hopfield-layers itself, where it is importable (it is not on PyPI; its source runs from a checkout)."""
    hf = pytest.importorskip("hflayers")
    kind, cfg, how = HF_GRID[i]
    ours = _build(kind, cfg)
    theirs = getattr(hf, kind)(**cfg).double().eval()
    assert [(k, v.shape) for k, v in theirs.state_dict().items()] == [(k, v.shape) for k, v in ours.state_dict().items()]
    theirs.load_state_dict(ours.state_dict())
    data = _data(kind, how, cfg.get("batch_first", True))
    torch.testing.assert_close(ours(data), theirs(data), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.get_association_matrix(data), theirs.get_association_matrix(data), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind,cfg", [("Hopfield", dict(input_size=8, num_heads=2)),
                                      ("HopfieldPooling", dict(input_size=20, hidden_size=8, num_heads=8, update_steps_max=3)),
                                      ("HopfieldLayer", dict(input_size=8, quantity=5, lookup_weights_as_separated=True))])
def test_compat_draws_hflayers_initial_weights_from_the_same_seed(kind, cfg):
    """The same random draws in the same order: a seeded hflayers model and a seeded compat model start
    from the same weights and leave the generator in the same state (so whole training runs pair up)."""
    hf = pytest.importorskip("hflayers")
    torch.manual_seed(5)
    theirs, after_theirs = getattr(hf, kind)(**cfg), torch.rand(3)
    torch.manual_seed(5)
    ours, after_ours = getattr(C, kind)(**cfg), torch.rand(3)
    for (k, a), b in zip(theirs.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(after_theirs, after_ours)
