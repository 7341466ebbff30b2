"""Fuzzing every public entry point with hypothesis: random shapes (0 and 1 included), dtypes, NaN/inf,
huge and tiny values, wrong types. The only allowed outcomes are a correct result (checked against a
property or a reference) or the documented error: ValueError/TypeError from input validation
(CorruptBankError is a ValueError), DivergenceError when finite inputs overflow, and for the CLI
exit code 0, or 2 with a one-line message and no partial output.

Each fuzz target runs ``FAST`` examples by default and ``SLOW`` examples in its ``slow`` twin
(``pytest -m slow tests/test_fuzz.py --hypothesis-show-statistics``); docs/reliability.md has counts.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import assocmem
from assocmem import (
    ClassicalHopfield,
    CorruptBankError,
    DenseAssociativeMemory,
    DivergenceError,
    MemoryBank,
    ModernHopfield,
    SphericalMemory,
    TwoLayerNetwork,
)
from assocmem import functional as AF
from assocmem import lagrangians as L

FAST = 25
SLOW = 600


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.one_thread)


# ---------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.bool]
KINDS = ["pm1", "normal", "special", "huge", "tiny", "zeros", "binary01"]
NUMBERS = [0.0, -1.0, 1e-30, 1e300, float("nan"), float("inf"), -float("inf"), True, None, "1", torch.ones(2), 1 + 2j]
WRONG = st.sampled_from([None, "abc", 3.5, [[1.0, 2.0], [3.0]], {"a": 1}, torch.ones(2, 2, dtype=torch.complex64),
                         np.array([object(), object()], dtype=object), b"bytes"])


def _values(kind: str, shape, g: torch.Generator) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    if kind == "pm1":
        x = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    elif kind == "binary01":
        x = torch.randint(0, 2, (n,), generator=g).double()
    elif kind == "normal":
        x = torch.randn(n, generator=g, dtype=torch.float64)
    elif kind == "special":
        x = torch.randn(n, generator=g, dtype=torch.float64)
        if n:
            specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0], dtype=torch.float64)
            idx = torch.randint(0, n, (max(1, n // 3),), generator=g)
            x[idx] = specials[torch.randint(0, 5, idx.shape, generator=g)]
    elif kind == "huge":
        x = torch.randn(n, generator=g, dtype=torch.float64) * 1e30
    elif kind == "tiny":
        x = torch.randn(n, generator=g, dtype=torch.float64) * 1e-40
    else:
        x = torch.zeros(n, dtype=torch.float64)
    return x.reshape(shape)


@st.composite
def tensors(draw, shape=None, ndim=None, kinds=KINDS, dtypes=DTYPES):
    if shape is None:
        nd = draw(st.integers(0, 3)) if ndim is None else ndim
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=nd, max_size=nd)))
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from(dtypes))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = _values(kind, shape, g)
    if dtype == torch.bool:
        return x > 0
    if not dtype.is_floating_point:
        return torch.nan_to_num(x, nan=0.0, posinf=7.0, neginf=-7.0).clamp(-1e6, 1e6).to(dtype)
    return x.to(dtype)


class Mostly:
    """A parameter: one of ``valid``, or (when the example's mode says so) one of ``weird``."""

    def __init__(self, valid, weird):
        self.valid, self.weird = list(valid), list(weird)


class Fuzzed:
    """A tensor argument of ``shape``: well-formed (``valid_kinds``, float32/64), or anything."""

    def __init__(self, shape, valid_kinds=("pm1", "normal"), kinds=KINDS):
        self.shape, self.valid_kinds, self.kinds = shape, valid_kinds, kinds


mostly, fuzzed = Mostly, Fuzzed


class Fuzz:
    """Wraps hypothesis' ``data``. Each example has a mode: ``clean`` (every argument valid: the
    result is checked), ``one-bad`` (exactly one argument, chosen at random, is malformed: its own
    validation is exercised) or ``chaos`` (any argument may be malformed)."""

    def __init__(self, data):
        self.data = data
        self.mode = data.draw(st.sampled_from(["clean", "one-bad", "chaos"]), "mode")
        self.bad = data.draw(st.integers(0, 10), "bad argument") if self.mode == "one-bad" else -1
        self.count = 0

    def _weird(self, label) -> bool:
        self.count += 1
        if self.mode == "chaos":
            return self.data.draw(st.booleans(), label + " malformed?")
        return self.count - 1 == self.bad

    def draw(self, x, label=None):
        if isinstance(x, Mostly):
            return self.data.draw(st.sampled_from(x.weird if self._weird(label or "") and x.weird else x.valid), label)
        if isinstance(x, Fuzzed):
            if self._weird(label or ""):
                return self.data.draw(st.one_of(inputs(shape=x.shape, kinds=x.kinds), inputs()), label)
            return self.data.draw(tensors(shape=x.shape, kinds=list(x.valid_kinds), dtypes=[torch.float32, torch.float64]), label)
        return self.data.draw(x, label)


def inputs(shape=None, ndim=None, kinds=KINDS):
    """Mostly tensors; sometimes numpy arrays, nested lists, or something of the wrong type."""
    t = tensors(shape=shape, ndim=ndim, kinds=kinds)
    return st.one_of(
        t, t, t, t,
        t.map(lambda x: x.float().numpy() if x.dtype == torch.bfloat16 else x.numpy()),
        t.map(lambda x: x.tolist()),
        WRONG,
    )


# ---------------------------------------------------------------------------------------------------
# allowed outcomes
# ---------------------------------------------------------------------------------------------------
class Rejected(Exception):
    pass


def call(fn, *args, **kwargs):
    """Run ``fn``; a validation error (ValueError/TypeError with a one-line message that is not
    empty) or a DivergenceError becomes ``Rejected``; any other exception is a bug and propagates."""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    try:
        out = fn(*args, **kwargs)
    except (ValueError, TypeError, DivergenceError) as e:
        msg = str(e)
        assert msg.strip(), f"{type(e).__name__} without a message"
        # Python's own signature errors mean the fuzz call itself is wrong, not a validated rejection
        assert not re.search(r"required (positional|keyword-only) argument|unexpected keyword argument|"
                             r"positional arguments? but \d+ (were|was) given", msg), f"bad fuzz call of {name}: {msg}"
        event(f"{name}: {type(e).__name__}")
        raise Rejected(msg) from e
    event(f"{name}: result")
    return out


def outcome(fn, *args, **kwargs):
    try:
        return True, call(fn, *args, **kwargs)
    except Rejected:
        return False, None


def no_nan(*ts):
    for t in ts:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            assert not torch.isnan(t).any(), "silent NaN in a result"


def _twin(body, name, fast=FAST, slow=SLOW):
    """Register ``test_<name>`` (``fast`` examples) and ``test_<name>_slow`` (``slow``, marked slow)."""
    common = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
    globals()[f"test_{name}"] = settings(max_examples=fast, **common)(given(data=st.data())(body))
    globals()[f"test_{name}_slow"] = pytest.mark.slow(settings(max_examples=slow, **common)(given(data=st.data())(body)))


# ---------------------------------------------------------------------------------------------------
# models: constructors, energy, step, recall
# ---------------------------------------------------------------------------------------------------
def _make_model(data, patterns):
    which = data.draw(st.sampled_from(["classical", "dense", "dense_cont", "modern", "spherical"]), "model")
    if which == "classical":
        return which, call(ClassicalHopfield, patterns)
    beta = data.draw(mostly([0.1, 1.0, 5.0, 1e4], NUMBERS), "beta")
    if which == "modern":
        return which, call(ModernHopfield, patterns, beta=beta)
    F = data.draw(mostly(["power", "rectified_power", "exp"], ["bogus", 3, None]), "F")
    n = data.draw(mostly([2, 3, 4, 30], [1, 0, -2, 2.0, 2.5, "3", None]), "n")
    if which == "spherical":
        return which, call(SphericalMemory, patterns, F=F, n=n, alpha=data.draw(mostly([1.0, 0.0, 0.5], NUMBERS), "alpha"), beta=beta)
    lv = data.draw(mostly([L.Tanh(5.0), L.Quadratic(), L.Sigmoid(2.0)], ["tanh", 3]), "lagrangian_v") if which == "dense_cont" else None
    return which, call(DenseAssociativeMemory, patterns, F=F, n=n, beta=beta, lagrangian_v=lv,
                       dt=data.draw(mostly([0.1, 0.5], [0.0, -1.0, float("nan")]), "dt"))


def fuzz_models(data):
    data = Fuzz(data)
    K, N = data.draw(st.integers(1, 6), "K"), data.draw(st.integers(1, 8), "N")
    patterns = data.draw(fuzzed((K, N), valid_kinds=("pm1",)), "patterns")
    try:
        which, m = _make_model(data, patterns)
    except Rejected:
        return
    K, N = m.xi.shape
    assert K >= 1 and N >= 1 and m.xi.is_floating_point() and torch.isfinite(m.xi).all()
    assert m.xi.dtype in (torch.float32, torch.float64)
    cue_shape = data.draw(mostly([(N,), (1, N), (3, N)], [(0, N), (2, N + 1), (N, 1), ()]), "cue shape")
    cue = data.draw(fuzzed(cue_shape, valid_kinds=("pm1",)), "cue")
    mask = None if data.draw(st.booleans(), "no clamp?") else data.draw(tensors(shape=(N,), dtypes=[torch.bool]), "mask")
    clamp = data.draw(mostly([mask], [torch.ones(N + 1, dtype=torch.bool), torch.ones(2, 2, N, dtype=torch.bool), "x", 0.5]), "clamp")
    verb = data.draw(st.sampled_from(["energy", "step", "recall"]), "verb")
    if verb == "energy":
        ok, e = outcome(m.energy, cue)
        if ok:
            no_nan(e)
            assert e.shape == torch.as_tensor(cue).shape[:-1]
        return
    if verb == "step":
        ok, s = outcome(m.step, cue, clamp=clamp, generator=torch.Generator().manual_seed(0))
        if ok:
            assert s.shape == torch.as_tensor(cue).shape and torch.isfinite(s).all()
        return
    max_steps = data.draw(mostly([0, 1, 3], [-1, 2.0, 2.5, "3", None]), "max_steps")
    tol = data.draw(mostly([1e-6, 0.0], [-1.0, float("nan"), "x"]), "tol")
    ok, r = outcome(m.recall, cue, max_steps=max_steps, tol=tol, clamp=clamp, generator=torch.Generator().manual_seed(0))
    if not ok:
        return
    shape = torch.as_tensor(cue).shape
    assert r.state.shape == shape and torch.isfinite(r.state).all()
    # the energy trace is built when first read, and that read may reject a state whose energy
    # overflows (DivergenceError); anything else is a bug
    ok, energy = outcome(lambda: r.energy)
    if ok:
        no_nan(energy)
        assert energy.shape[0] == r.steps + 1
    assert 0 <= r.steps <= int(max_steps)
    if m.binary:
        assert bool(((r.state == 1) | (r.state == -1)).all())
    if clamp is not None and isinstance(clamp, torch.Tensor) and clamp.dtype == torch.bool and which != "spherical":
        c0 = torch.as_tensor(cue).to(r.state.dtype)
        assert torch.equal(r.state[..., clamp], c0[..., clamp])  # clamped neurons keep their cue value


_twin(fuzz_models, "fuzz_models", fast=60, slow=1500)


# ---------------------------------------------------------------------------------------------------
# the two-layer network and its integrators
# ---------------------------------------------------------------------------------------------------
def _lagrangian(data, label):
    name = data.draw(mostly(sorted(L.CATALOG), ["none"]), label)
    if name == "none":
        return data.draw(WRONG, label + " object")
    cls = L.CATALOG[name]
    kw = {}
    for p in ("beta", "n", "gamma", "eps", "theta"):
        import inspect

        if p in inspect.signature(cls).parameters and data.draw(st.booleans(), f"{label}.{p}?"):
            kw[p] = data.draw(mostly([0.5, 1.0, 2, 3], [0.0, -1.0, float("nan"), "x"]), f"{label}.{p}")
    return call(cls, **kw)


def fuzz_network(data):
    data = Fuzz(data)
    xi = data.draw(fuzzed((data.draw(st.integers(1, 6), "K"), data.draw(st.integers(1, 6), "N"))), "xi")
    try:
        lv, lh = _lagrangian(data, "L_v"), _lagrangian(data, "L_h")
        net = call(TwoLayerNetwork, xi, lv, lh, tau_f=data.draw(mostly([1.0, 0.5], [0.0, -1.0, float("inf")]), "tau_f"),
                   tau_h=data.draw(mostly([0.5, 1.0], [0.0, float("nan")]), "tau_h"),
                   alpha=data.draw(mostly([1.0, 0.5, 0.0], [-1.0]), "alpha"))
    except Rejected:
        return
    K, N = net.xi.shape
    v0 = data.draw(fuzzed(data.draw(mostly([(N,), (2, N)], [(0, N), (2, N + 1), (2, 2, N)]))), "v0")
    h0 = None if data.draw(st.booleans(), "h0 default?") else data.draw(fuzzed(data.draw(mostly([(K,), (2, K)], [(3, K + 1)]))), "h0")
    method = data.draw(mostly(["rk4", "euler", "dopri5", "bosh3"], ["midpoint", 4]), "method")
    t_max = data.draw(mostly([0.2, 0.5], [0.0, -1.0, float("nan"), "1"]), "t_max")
    dt = data.draw(mostly([None, 0.05, 0.1], [0.0, -0.1, float("inf")]), "dt")
    mask = None if data.draw(st.booleans(), "no clamp?") else data.draw(tensors(shape=(N,), dtypes=[torch.bool]), "mask")
    clamp = data.draw(mostly([mask], [torch.ones(N + 1, dtype=torch.bool), "x"]), "clamp")
    record_every = data.draw(mostly([1, 2], [0, -1, 1.5]), "record_every")
    if dt is None and isinstance(net.tau_h, float) and isinstance(net.tau_f, float) and min(net.tau_f, net.tau_h) < 0.01:
        return
    ok, tr = outcome(net.simulate, v0, h0, t_max=t_max, method=method, dt=dt, clamp=clamp, record_every=record_every,
                     rtol=1e-4, atol=1e-6)
    if not ok:
        return
    B = 1 if torch.as_tensor(v0).ndim == 1 else torch.as_tensor(v0).shape[0]
    assert tr.v.shape[1:] == (B, N) and tr.h.shape[1:] == (B, K) and tr.energy.shape[1:] == (B,)
    assert torch.isfinite(tr.v).all() and torch.isfinite(tr.h).all()
    no_nan(tr.energy)
    assert tr.t[0] == 0 and bool((tr.t[1:] > tr.t[:-1]).all()) and float(tr.t[-1]) <= float(t_max) + 1e-6


_twin(fuzz_network, "fuzz_network", fast=40, slow=800)


def fuzz_lagrangians(data):
    """Every catalog Lagrangian on finite inputs of moderate size: no NaN, activation = autograd."""
    data = Fuzz(data)
    name = data.draw(st.sampled_from(sorted(L.CATALOG)), "name")
    lag = L.CATALOG[name]()
    x = data.draw(tensors(shape=(data.draw(st.integers(1, 3)), data.draw(st.integers(1, 6))),
                          kinds=["normal", "pm1", "zeros", "tiny"], dtypes=[torch.float64]), "x") * 3
    v, g, e = lag.value(x), lag.activation(x), lag.legendre(x)
    no_nan(v, g, e)
    assert v.shape == x.shape[:-1] and g.shape == x.shape and e.shape == x.shape[:-1]
    if name not in ("Abs", "Heaviside") and not (x == 0).any():  # kinks at 0
        torch.testing.assert_close(g, lag.activation_autograd(x), rtol=1e-6, atol=1e-9)
    spec = lag.spec()
    assert type(L.from_spec(spec)) is type(lag)


_twin(fuzz_lagrangians, "fuzz_lagrangians", fast=30, slow=600)


# ---------------------------------------------------------------------------------------------------
# functional (Model B math shared with the layers) against a float64 reference
# ---------------------------------------------------------------------------------------------------
def fuzz_functional(data):
    data = Fuzz(data)
    B, K, N = (data.draw(st.integers(0 if i else 1, 40), f"dim{i}") for i in range(3))
    K = max(K, 1)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), "dtype")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 999), "seed"))
    q = torch.randn(B, N, generator=g, dtype=dtype)
    keys = torch.randn(K, N, generator=g, dtype=dtype)
    beta = data.draw(st.sampled_from([0.0, 0.1, 1.0, 8.0, 100.0]), "beta")
    if N == 0:  # patterns of size 0 are refused by name (they used to give an empty result)
        for fn, args in ((AF.retrieve, (q, keys, None, beta)), (AF.modern_energy, (q, keys, 1.0))):
            with pytest.raises(ValueError, match=r"keys: got shape .*expected patterns of size N >= 1"):
                fn(*args)
        return
    out = AF.retrieve(q, keys, beta=beta)
    ref = torch.softmax(beta * q.double() @ keys.double().T, -1) @ keys.double()
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * (1 + float(keys.abs().max()) if keys.numel() else 1))
    e = AF.modern_energy(q, keys, beta if beta > 0 else 1.0)
    no_nan(e)


_twin(fuzz_functional, "fuzz_functional", fast=30, slow=600)


def fuzz_functional_arguments(data):
    """retrieve, attention_weights, modern_energy, lse_energy and hopfield_retrieve/_energy with any
    arguments: a result of the right shape (no NaN from finite inputs) or a TypeError/ValueError that
    names the argument; never torch's or ctypes' internal errors (wrong N, mixed dtypes, lists, None,
    beta="1" reached the compiled kernel)."""
    data = Fuzz(data)
    B, K, N = (data.draw(st.integers(0, 4), f"dim{i}") for i in range(3))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), "dtype")
    q = data.draw(fuzzed(data.draw(mostly([(B, N), (N,)], [(B, N + 1), (2, B, N), ()]), "query shape")), "query")
    keys = data.draw(fuzzed(data.draw(mostly([(K, N)], [(K, N + 1), (N,), (2, K, N)]), "keys shape")), "keys")
    if data.draw(st.booleans(), "same dtype?") and isinstance(q, torch.Tensor) and isinstance(keys, torch.Tensor):
        keys = keys.to(q.dtype) if q.is_floating_point() and keys.is_floating_point() else keys
    values = None if data.draw(st.booleans(), "values = keys?") else data.draw(fuzzed((K, 3)), "values")
    beta = data.draw(mostly([0.5, 1.0, 2], NUMBERS), "beta")
    mask = None if data.draw(st.booleans(), "no mask?") else data.draw(
        mostly([torch.zeros(B, K, dtype=torch.bool)], [torch.zeros(B, K + 1, dtype=torch.bool), torch.zeros(B, K), "m"]), "mask")
    fn = data.draw(st.sampled_from(["retrieve", "weights", "energy", "lse", "hopfield", "hopfield_energy"]), "fn")
    if fn == "retrieve":
        ok, out = outcome(AF.retrieve, q, keys, values, beta=beta, mask=mask)
    elif fn == "weights":
        ok, out = outcome(AF.attention_weights, q, keys, beta, mask)
    elif fn == "energy":
        ok, out = outcome(AF.modern_energy, q, keys, beta)
    elif fn == "lse":
        ok, out = outcome(AF.lse_energy, q, beta)
    elif fn == "hopfield":
        ok, out = outcome(lambda *a, **k: AF.hopfield_retrieve(*a, **k).retrieved, q, keys, values, beta=beta, mask=mask)
    else:
        ok, out = outcome(AF.hopfield_energy, q, keys, beta, mask)
    if not ok:
        return
    assert isinstance(out, torch.Tensor) and out.is_floating_point()
    # finite inputs of moderate size: beta q.k cannot overflow (huge entries may, documented)
    finite_in = all(not isinstance(t, torch.Tensor) or t.numel() == 0 or float(t.double().abs().max()) <= 1e6
                    for t in (q, keys, values))
    moderate = not isinstance(beta, (int, float)) or isinstance(beta, bool) or beta <= 100  # beta q.k may overflow
    if finite_in and moderate and fn in ("retrieve", "weights", "hopfield") and mask is None:
        no_nan(out)
    qt = torch.as_tensor(q)
    if fn == "retrieve" and values is None:
        assert out.shape == qt.shape


_twin(fuzz_functional_arguments, "fuzz_functional_arguments", fast=60, slow=1500)


# ---------------------------------------------------------------------------------------------------
# memory banks: round trips, appends, and arbitrary damage
# ---------------------------------------------------------------------------------------------------
def fuzz_bank(data):
    data = Fuzz(data)
    with tempfile.TemporaryDirectory() as d:
        patterns = data.draw(tensors(shape=(data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))),
                                     kinds=["pm1"], dtypes=[torch.float32, torch.float64, torch.float16]), "patterns")
        m = ModernHopfield(patterns, beta=0.5)
        layout = data.draw(st.sampled_from(["file", "dir"]), "layout")
        path = Path(d) / ("b.safetensors" if layout == "file" else "b")
        bank = m.save(path)
        new = data.draw(fuzzed(data.draw(mostly([(2, m.n_features), (m.n_features,)], [(1, m.n_features + 1), (0, m.n_features)]))), "new")
        ok, _ = outcome(bank.append, new)
        loaded = assocmem.load(path)
        if ok:
            nt = torch.as_tensor(new).reshape(-1, m.n_features).to(torch.float64)
            assert torch.equal(loaded.xi, torch.cat([m.xi.to(torch.float64), nt.to(bank.dtype).to(torch.float64)]).to(loaded.xi.dtype))
        else:
            assert torch.equal(loaded.xi, m.xi)  # a rejected append changes nothing
        # damage: truncate, overwrite bytes, or rewrite the header with wrong types and a valid checksum
        target = path if layout == "file" else data.draw(st.sampled_from(sorted(p for p in path.iterdir() if p.name != ".lock")), "file")
        raw = target.read_bytes()
        how = data.draw(st.sampled_from(["truncate", "bytes", "junk", "header"]), "damage")
        if how == "truncate":
            target.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), "cut")])
        elif how == "bytes":
            pos = data.draw(st.integers(0, len(raw) - 1), "pos")
            target.write_bytes(raw[:pos] + bytes([raw[pos] ^ data.draw(st.integers(1, 255), "xor")]) + raw[pos + 1:])
        elif how == "junk":
            target.write_bytes(data.draw(st.binary(max_size=200), "junk"))
        elif target.name == "manifest.json":
            man = json.loads(raw)
            key = data.draw(st.sampled_from(sorted(man)), "key")
            man[key] = data.draw(st.sampled_from([None, 5, "x", [], {}, -1, [{"file": "seg-000000-00000000.safetensors"}]]), "value")
            man["manifest_sha256"] = assocmem.bank._manifest_digest(man)
            target.write_text(json.dumps(man))
        else:
            return
        # the checksums catch every change to tensors and to what rebuilds the model; a change that
        # loads must be harmless: informational header fields (versions, timestamps, module) or
        # JSON whitespace (the manifest's final newline)
        try:
            again = MemoryBank(path).load()
        except CorruptBankError as e:
            assert str(path) in str(e) or path.name in str(e)
        else:
            event(f"harmless {how} of {'manifest' if target.name == 'manifest.json' else 'tensor file'}")
            assert torch.equal(again.xi, loaded.xi) and again.beta == loaded.beta


_twin(fuzz_bank, "fuzz_bank", fast=40, slow=1000)


# ---------------------------------------------------------------------------------------------------
# the modules other helpers added: layers, bio models, capacity/theory, streaming
# ---------------------------------------------------------------------------------------------------
def fuzz_nn(data):
    data = Fuzz(data)
    from assocmem.nn import Hopfield, HopfieldLayer, HopfieldPooling

    size = data.draw(mostly([4, 8, 1], [0, -2, 3.5, None]), "input_size")
    heads = data.draw(mostly([1, 2], [3, 0]), "num_heads")
    kind = data.draw(st.sampled_from(["hopfield", "pooling", "layer"]), "layer")
    try:
        if kind == "hopfield":
            layer = call(Hopfield, size, num_heads=heads, beta=data.draw(mostly([None, 0.5], [0.0, -1.0, float("nan")]), "beta"),
                         update_steps=data.draw(mostly([1, 2, None], [0]), "update_steps"))
        elif kind == "pooling":
            layer = call(HopfieldPooling, size, num_heads=heads)
        else:
            layer = call(HopfieldLayer, size, data.draw(mostly([5, 1], [0, -1, 2.5]), "num_patterns"), num_heads=heads)
    except Rejected:
        return
    n = size
    x = data.draw(fuzzed(data.draw(mostly([(2, 3, n), (3, n)], [(2, 3, n + 1), (0, 3, n), (2, 0, n), (n,)])), valid_kinds=("normal",)), "x")
    # documented torch conventions of the layers: an input whose dtype differs from the parameters'
    # raises torch's RuntimeError (use torch.autocast or convert the layer); NaN in gives NaN out
    # (no per-call finiteness check, which would cost a device synchronisation)
    pdtype = next(layer.parameters()).dtype if any(True for _ in layer.parameters()) else torch.float32
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != pdtype:
        try:
            layer(x)
        except RuntimeError as e:
            assert "dtype" in str(e) or "Half" in str(e) or "BFloat16" in str(e) or "Double" in str(e), e
        except (ValueError, TypeError):
            pass
        return
    ok, out = outcome(layer, x)
    if ok:
        out = out[0] if isinstance(out, tuple) else out
        if torch.isfinite(torch.as_tensor(x, dtype=torch.float64)).all():
            no_nan(out)


_twin(fuzz_nn, "fuzz_nn", fast=30, slow=600)


def fuzz_bio(data):
    data = Fuzz(data)
    from assocmem.bio import DendriticEIMemory, ThresholdMemory

    if data.draw(st.booleans(), "threshold?"):
        xi = data.draw(fuzzed((data.draw(st.integers(1, 5), "N_h"), data.draw(st.integers(1, 12), "N_v")), valid_kinds=("normal",)), "xi")
        try:
            tm = call(ThresholdMemory, xi, theta=data.draw(mostly([0.5, 0.2], [0.0, 1.0, -1.0, float("nan")]), "theta"))
        except Rejected:
            return
        Nh, Nv = tm.xi.shape
        s = data.draw(fuzzed(data.draw(mostly([(Nh,), (2, Nh)], [(2, Nh + 1)])), valid_kinds=("binary01",)), "s")
        ok, v = outcome(tm.memory, s)
        if ok:
            assert v.shape[-1] == Nv and torch.isfinite(v).all()
        v0 = data.draw(fuzzed(data.draw(mostly([(Nv,), (2, Nv)], [(2, Nv + 1)])), valid_kinds=("normal",)), "v0")
        ok, r = outcome(tm.recall, v0, t_max=data.draw(mostly([2.0], [0.0, -1.0, float("nan")]), "t_max"))
        if ok:
            assert bool(((r.hidden == 0) | (r.hidden == 1)).all()) and torch.isfinite(r.state).all()
        return
    p = data.draw(fuzzed((data.draw(st.integers(1, 8), "K"), data.draw(st.integers(1, 10), "N_f")), valid_kinds=("binary01",)), "patterns")
    try:
        dm = call(DendriticEIMemory, p, n=data.draw(mostly([2, 4], [0, -1, 2.5]), "n"),
                  dendrites=data.draw(mostly(["nonlinear", "linear"], ["x"]), "dendrites"))
    except Rejected:
        return
    cue = data.draw(fuzzed(data.draw(mostly([(dm.n_features,), (2, dm.n_features)], [(2, dm.n_features + 1)])),
                           valid_kinds=("binary01",)), "cue")
    ok, r = outcome(dm.recall, cue, t_max=data.draw(mostly([20.0], [0.0, -5.0]), "t_max"))
    if ok:
        assert bool(((r.state == 0) | (r.state == 1)).all())
        no_nan(*r.rates.values())


_twin(fuzz_bio, "fuzz_bio", fast=25, slow=500)


def fuzz_capacity_theory(data):
    data = Fuzz(data)
    from assocmem import capacity, theory

    fn = data.draw(st.sampled_from(["ags", "mce", "most", "kh", "dem", "hid", "thr", "bits", "patterns", "corrupt", "settings"]), "fn")
    arg = data.draw(mostly([100, 1, 1000, [10, 100], np.array([10.0, 1e6])], [0, -5, 2.5, float("nan"), float("inf"), "100", None, True]), "N")
    if fn == "ags":
        ok, r = outcome(theory.amit_gutfreund_sompolinsky, arg)
    elif fn == "mce":
        ok, r = outcome(theory.mceliece, arg)
    elif fn == "most":
        ok, r = outcome(theory.most_fixed_points, arg)
    elif fn == "kh":
        ok, r = outcome(theory.krotov_hopfield_2016, arg, data.draw(st.sampled_from([2, 3, 30, 1, 0, 2.5]), "n"))
    elif fn == "dem":
        ok, r = outcome(theory.demircigil, arg, data.draw(st.sampled_from([0.0, 0.2, 0.5, -0.1, 1.0, float("nan")]), "rho"))
    elif fn == "hid":
        ok, r = outcome(theory.hidden_neuron_bound, arg)
    elif fn == "thr":
        ok, r = outcome(theory.threshold_no_flip_bound, arg, data.draw(st.sampled_from([4, 1, 0, -1, 2.5]), "N_h"))
    elif fn == "bits":
        ok, r = outcome(theory.threshold_capacity_bits, arg, data.draw(st.sampled_from([0.99, 0.5, 0.0, 1.0, 2.0]), "p"))
    elif fn == "patterns":
        ok, r = outcome(capacity.random_patterns, data.draw(mostly([3, 1], [0, -1, 2.5, "3"]), "K"), data.draw(mostly([5, 1], [0, -1, 2.5, "5"]), "N"),
                        kind=data.draw(st.sampled_from(["pm1", "binary", "gaussian", "x"]), "kind"),
                        coding_level=data.draw(st.sampled_from([0.5, 0.1, 0.0, 1.0, float("nan")]), "a"))
        if ok:
            assert r.ndim == 2 and torch.isfinite(r).all()
        return
    elif fn == "corrupt":
        p = data.draw(fuzzed((data.draw(st.integers(1, 5)), data.draw(st.integers(1, 9)))), "patterns")
        ok, r = outcome(capacity.corrupt, p, flip=data.draw(st.sampled_from([0.0, 0.1, 1.0, -0.1, 1.5, float("nan")]), "flip"),
                        occlude=data.draw(st.sampled_from([0.0, 0.3, 1.0, 2.0]), "occlude"),
                        noise=data.draw(st.sampled_from([0.0, 0.5, -1.0]), "noise"))
        if ok:
            assert r.shape == torch.as_tensor(p).shape and torch.isfinite(r).all()
        return
    else:
        ok, r = outcome(capacity.capacity_settings, data.draw(st.sampled_from(list(capacity.MODELS) + ["x", 3]), "model")
                        if hasattr(capacity, "MODELS") else "classical",
                        data.draw(st.sampled_from(["stability", "overlap", "recall", "x"]), "criterion"),
                        threshold=data.draw(st.sampled_from([None, 0.9, 0.0, 1.5, float("nan")]), "threshold"),
                        flip=data.draw(st.sampled_from([0.0, 0.1, -1.0, 2.0]), "flip"))
        return
    if ok:
        a = np.asarray(r, dtype=float)
        assert np.all(np.isfinite(a) | (a == np.inf)) and np.all(a >= 0), r


_twin(fuzz_capacity_theory, "fuzz_capacity_theory", fast=40, slow=1000)


def fuzz_streaming(data):
    data = Fuzz(data)
    from assocmem import streaming

    K, N = data.draw(st.integers(1, 30), "K"), data.draw(st.integers(1, 8), "N")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]), "dtype")
    bank = torch.randn(K, N, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99), "seed"))).to(dtype)
    q = data.draw(fuzzed(data.draw(mostly([(N,), (3, N)], [(3, N + 1), (0, N)])), valid_kinds=("normal",)), "query")
    chunk = data.draw(mostly([None, 1, 7, 1000], [0, -1, 2.5]), "chunk")
    beta = data.draw(mostly([1.0, 0.1, 10.0], [0.0, -1.0, float("nan")]), "beta")
    damage = data.draw(mostly(["none"], ["nan", "inf", "empty rows", "empty columns"]), "bank damage")
    if damage in ("nan", "inf"):  # a bank in memory with one non-finite value: named, never NaN out
        bad = bank.clone()
        bad[data.draw(st.integers(0, K - 1), "bad row"), data.draw(st.integers(0, N - 1), "bad col")] = float(damage)
        ok, out = outcome(streaming.streaming_retrieve, q, bad, beta=beta, chunk_size=chunk)
        if ok:
            no_nan(out)
        return
    if damage.startswith("empty"):
        empty = bank[:0] if damage == "empty rows" else bank[:, :0]
        ok, _ = outcome(streaming.streaming_retrieve, q, empty, beta=beta, chunk_size=chunk)
        assert not ok
        with pytest.raises(ValueError, match="empty bank"):
            streaming.streaming_retrieve(torch.zeros(bank.shape[1]), empty)
        return
    ok, out = outcome(streaming.streaming_retrieve, q, bank, beta=beta, chunk_size=chunk)
    if ok:
        qq = torch.as_tensor(q).double()
        ref = torch.softmax(beta * qq @ bank.double().T, -1) @ bank.double()
        torch.testing.assert_close(out.double().reshape(ref.shape), ref, rtol=2e-3, atol=2e-3)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.bank")
        if dtype == torch.bfloat16 and data.draw(st.booleans()):
            return
        mb = streaming.write_bank(path, bank)
        raw = Path(path).read_bytes()
        cut = data.draw(st.integers(0, len(raw)), "cut")
        Path(path).write_bytes(raw[:cut] + data.draw(st.binary(max_size=8), "tail"))
        try:
            mb2 = streaming.MemmapBank(path, verify=True)
            got = mb2.to_tensor()
            assert torch.equal(got, bank) or got.shape == bank.shape
        except (CorruptBankError, ValueError) as e:
            assert str(e)
        del mb


_twin(fuzz_streaming, "fuzz_streaming", fast=25, slow=500)


# ---------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------
def run_cli(argv):
    from assocmem.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: usage + one error line, exit code 2
            rc = e.code
    text = err.getvalue()
    event(f"assocmem {argv[0]}: exit {rc or 0}")
    assert "Traceback" not in text and "Traceback" not in out.getvalue()
    if rc not in (0, None):
        assert rc == 2, (rc, text)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert lines and "error" in lines[-1], text
        if not lines[0].startswith("usage:"):
            assert len(lines) == 1, text  # our own errors: one line
    return rc or 0, text


GOOD_OR_BAD = ["0", "-1", "1", "2", "nan", "inf", "-inf", "1e309", "abc", "", "0.5", "3"]


def _images(d: Path, n=3, size=(6, 5)):
    from assocmem.data import write_png

    g = np.random.default_rng(0)
    d.mkdir()
    for i in range(n):
        write_png(d / f"im{i}.png", (g.random(size) * 255).astype(np.uint8))


def fuzz_cli_store_recall(data):
    data = Fuzz(data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _images(tmp / "imgs")
        bank = tmp / "bank.safetensors"
        args = ["store", str(tmp / "imgs"), "--out", str(bank)]
        valid = {"--size": ["5x6", "4x4"], "--threshold": ["0.5", "0.2"], "--beta": ["0.8", "2"]}
        for flag in ("--size", "--threshold", "--beta"):
            if data.draw(st.booleans(), flag + "?"):
                args += [flag, data.draw(mostly(valid[flag], GOOD_OR_BAD + ["0x3", "3x", "4x4x4", "100000x100000"]), flag)]
        if data.draw(st.booleans(), "--gray?"):
            args.append("--gray")
        rc, _ = run_cli(args)
        assert (rc == 0) == bank.exists()
        assert not [p for p in tmp.iterdir() if p.name.startswith(".tmp")]
        if rc:
            return
        from assocmem.data import write_png

        m = assocmem.load(bank)
        h, w = data.draw(mostly([(m.height, m.width)] if hasattr(m, "height") else [(6, 5)], [(5, 6), (1, 1)]), "cue size")
        write_png(tmp / "cue.png", (np.random.default_rng(1).random((h, w)) * 255).astype(np.uint8))
        out = tmp / "out.png"
        args = ["recall", "--memory", str(data.draw(mostly([bank], [tmp / "imgs", tmp / "nope"]), "memory")),
                "--cue", str(data.draw(mostly([tmp / "cue.png"], [bank, tmp / "nope.png"]), "cue")), "--out", str(out)]
        valid = {"--model": ["modern", "dense-exp", "dense-power", "classical", "spherical"], "--beta": ["0.5", "4"],
                 "--n": ["3", "30"], "--max-steps": ["1", "5"], "--seed": ["0", "3"]}
        for flag in ("--model", "--beta", "--n", "--max-steps", "--seed"):
            if data.draw(st.booleans(), flag + "?"):
                args += [flag, data.draw(mostly(valid[flag], GOOD_OR_BAD + ["x"]), flag)]
        if data.draw(st.booleans(), "--clamp?"):
            args.append("--clamp")
        rc, _ = run_cli(args)
        assert (rc == 0) == out.exists(), (args, rc)
        del m


_twin(fuzz_cli_store_recall, "fuzz_cli_store_recall", fast=25, slow=400)


def fuzz_cli_validation(data):
    """capacity, demo and bench with at least one invalid value: rejected before any work starts."""
    data = Fuzz(data)
    cmd = data.draw(st.sampled_from(["capacity", "demo", "bench"]), "command")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        if cmd == "capacity":
            flags = {"--model": ["x", ""], "--N": ["0", "-4", "abc", "8,x", "1e3", "8,-8", ""],
                     "--criterion": ["x", ""], "--flip": ["-0.1", "1.5", "nan"], "--trials": ["0", "-1", "x"],
                     "--threshold": ["nan", "2", "-1"], "--n": ["0", "-3", "x"], "--beta": ["0", "-1", "nan", "inf"],
                     # the machine's limits: cores, memory, torch's seed range, devices torch reports
                     "--threads": ["0", "100000", "x"], "--seed": ["-1", "99999999999999999999999", "x"],
                     "--device": ["meta", "cuda:99", "gpu", ""], "--k-max": ["0", "x"]}
            flags["--N"] = flags["--N"] + ["99999999999", "8,99999999999"]
            base = ["capacity", "--model", "classical", "--N", "8", "--trials", "1", "--out", str(out)]
        elif cmd == "demo":
            flags = {"--example": ["x", ""], "--cues": ["0", "-1", "x"],
                     "--beta": ["0", "-1", "nan", "inf", "x"], "--seed": ["x", "1.5", "-1", "99999999999999999999999"],
                     "--memories": ["0", "-5", "x", "99999999999999"]}
            base = ["demo", "--quick", "--no-progress", "--out", str(out)]
        else:
            flags = {"--cases": ["x", "retrieval,x", ""], "--rounds": ["0", "-1", "x", "nan"]}
            base = ["bench", "--quick", "--json", str(out)]
        bad = data.draw(st.sampled_from(sorted(flags)), "bad flag")
        argv = base + [bad, data.draw(st.sampled_from(flags[bad]), "bad value")]
        rc, text = run_cli(argv)
        assert rc == 2, (argv, text)
        assert not out.exists()


_twin(fuzz_cli_validation, "fuzz_cli_validation", fast=40, slow=600)
