"""The chunked online-softmax retrieval kernel (assocmem._kernels): equality with plain torch
softmax(beta q k^T) v for every path, dtype and chunking; the log-sum-exp merge; dispatch rules
(gradients, masks, tiny problems go to torch); the calibration cache on disk."""
import ctypes.util
import hashlib
from concurrent.futures import ThreadPoolExecutor
import json
import math
import os
import platform
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assocmem import _kernels as K
from assocmem import functional as AF


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSOCMEM_CACHE_DIR", str(tmp_path / "cache"))
    K.clear_cache()
    mode = K.get_mode()
    yield
    K.set_mode(mode)
    K.clear_cache()


def ref(q, keys, values, beta):
    values = keys if values is None else values
    return torch.softmax(beta * q.double() @ keys.double().T, -1) @ values.double()


def data(B, N, Kk, M=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, N, generator=g, dtype=torch.float64).to(dtype)
    k = (torch.randn(Kk, N, generator=g, dtype=torch.float64) / math.sqrt(N)).to(dtype)
    v = None if M is None else torch.randn(Kk, M, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


def run_np(q, k, v, beta, chunk, threads, bf16=False):
    qs = np.multiply(q.numpy(), beta, dtype=np.float32 if q.dtype != torch.float64 else np.float64)
    kn, is_bf16 = K._np_view(k)
    vn = None if v is None else K._np_view(v)[0]
    return torch.from_numpy(K.retrieve_numpy(qs, kn, vn, chunk, threads, is_bf16))


@settings(max_examples=20)
@given(B=st.integers(1, 9), N=st.integers(1, 20), Kk=st.integers(1, 300), chunk=st.integers(1, 64),
       threads=st.sampled_from([1, 2, 3]), beta=st.floats(0.01, 30.0), seed=st.integers(0, 99),
       separate_values=st.booleans())
def test_kernel_equals_plain_softmax_float64(B, N, Kk, chunk, threads, beta, seed, separate_values):
    q, k, v = data(B, N, Kk, 5 if separate_values else None, seed, torch.float64)
    out = run_np(q, k, v, beta, chunk, threads)
    torch.testing.assert_close(out, ref(q, k, v, beta), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 13, 256, 1000, 5000])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_float32_relative_error(chunk, threads):
    q, k, _ = data(17, 48, 1000, seed=3)
    out = run_np(q, k, None, 4.0, chunk, threads)
    r = ref(q, k, None, 4.0)
    assert ((out.double() - r).abs().max() / r.abs().max()) < 1e-5


def test_large_beta_does_not_overflow():
    q, k, _ = data(4, 32, 500, seed=1)
    out = run_np(q, k, None, 500.0, 64, 2)  # scores ~ 500 * 5: exp would overflow without the max shift
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref(q, k, None, 500.0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_banks_accumulate_in_float32(low):
    q, k, _ = data(6, 40, 700, seed=2)
    kl = k.to(low)
    out = run_np(q, kl, None, 3.0, 128, 2)
    assert out.dtype == torch.float32
    r = ref(q, kl.float(), None, 3.0)  # exact reference on the rounded bank
    assert ((out.double() - r).abs().max() / r.abs().max()) < 1e-5


@pytest.mark.parametrize("mode", ["torch", "numpy", "auto"])
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_bank_works_on_every_path(low, mode):
    """functional.retrieve with a float32 query and a float16/bfloat16 bank gives the float32 result
    of the rounded bank whichever path runs (plain torch must upcast the bank, as the kernel does)."""
    K.set_mode(mode)
    q, k, v = data(64, 64, 2000, M=24, seed=9)
    for vals in (None, v.to(low)):
        out, lse = AF.retrieve(q, k.to(low), vals, beta=2.0, return_lse=True)
        r = ref(q, k.to(low).float(), None if vals is None else vals.float(), 2.0)
        assert out.dtype == torch.float32 and ((out.double() - r).abs().max() / r.abs().max()) < 1e-5
        torch.testing.assert_close(lse, torch.logsumexp(2.0 * q @ k.to(low).float().T, -1), rtol=1e-5, atol=1e-4)


def test_deterministic_across_calls():
    q, k, _ = data(8, 32, 3000, seed=4)
    a = run_np(q, k, None, 2.0, 64, 2)
    b = run_np(q, k, None, 2.0, 64, 2)
    assert torch.equal(a, b)


@settings(max_examples=15)
@given(Kk=st.integers(2, 200), cut=st.integers(1, 199), seed=st.integers(0, 50), beta=st.floats(0.1, 50.0))
def test_lse_merge_of_two_halves_is_the_whole(Kk, cut, seed, beta):
    cut = min(cut, Kk - 1)
    q, k, _ = data(3, 7, Kk, seed=seed, dtype=torch.float64)
    qs = (beta * q).numpy()
    kn = k.numpy()
    a = K.partial_numpy(qs, kn, None, 0, cut, 16)
    b = K.partial_numpy(qs, kn, None, cut, Kk, 16)
    m, l, acc = K.merge_partials([a, b])
    scores = (beta * q) @ k.T
    np.testing.assert_allclose(m + np.log(l), torch.logsumexp(scores, -1).numpy(), rtol=1e-12)
    # the torch version of the same merge agrees (finish normalises numpy arrays in place: last)
    tm, tl, tacc = K.merge_partials([tuple(map(torch.from_numpy, a)), tuple(map(torch.from_numpy, b))])
    out = K.finish(m, l, acc)
    np.testing.assert_allclose(out, ref(q, k, None, beta).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(K.finish(tm, tl, tacc).numpy(), out, rtol=1e-12)


def test_partial_torch_matches_numpy_and_lse_only():
    q, k, v = data(5, 12, 333, M=4, seed=5, dtype=torch.float64)
    pt = K.partial_torch(2.0 * q, k, v, 50)
    pn = K.partial_numpy((2.0 * q).numpy(), k.numpy(), v.numpy(), 0, 333, 50)
    for a, b in zip(pt, pn):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12)
    m, l, acc = K.partial_numpy((2.0 * q).numpy(), k.numpy(), None, 0, 333, 50, lse_only=True)
    assert acc.shape == (5, 0)
    np.testing.assert_allclose(m + np.log(l), torch.logsumexp(2.0 * q @ k.T, -1).numpy(), rtol=1e-12)


# --- dispatch -----------------------------------------------------------------------------------------
def test_dispatch_declines_what_it_does_not_handle():
    K.set_mode("numpy")
    q, k, v = data(64, 64, 2000, seed=6)
    assert K.try_retrieve(q, k, None, 1.0, None) is not None
    assert K.try_retrieve(q, k, None, 1.0, torch.zeros(64, 2000, dtype=torch.bool)) is None  # mask
    assert K.try_retrieve(q.unsqueeze(0), k.unsqueeze(0), None, 1.0, None) is None  # batched keys
    assert K.try_retrieve(q.requires_grad_(), k, None, 1.0, None) is None  # gradients needed
    with torch.no_grad():
        assert K.try_retrieve(q, k, None, 1.0, None) is not None  # ...but not under no_grad
    q = q.detach()
    assert K.try_retrieve(q, torch.nn.Parameter(k), None, 1.0, None) is None
    assert K.try_retrieve(q, k.T.contiguous().T, None, 1.0, None) is None  # non-contiguous bank
    assert K.try_retrieve(q.double(), k, None, 1.0, None) is None  # mixed float64 / float32
    assert K.try_retrieve(q, k, None, torch.tensor(1.0, requires_grad=True), None) is None
    assert K.try_retrieve(q, k, None, torch.nn.Parameter(torch.tensor(1.0)), None) is None  # a learnt beta
    assert K.try_retrieve(q, k, None, torch.tensor(1.0), None) is not None  # a plain tensor beta is fine
    K.set_mode("torch")
    assert K.try_retrieve(q, k, None, 1.0, None) is None
    K.set_mode("auto")
    tiny_q, tiny_k, tiny_v = data(1, 64, 1000, M=3)
    for v in (None, tiny_v):  # tiny: the direct numpy update, same numbers
        out = K.try_retrieve(tiny_q, tiny_k, v, 1.0, None)
        assert ((out.double() - ref(tiny_q, tiny_k, v, 1.0)).abs().max()) < 1e-5
    small_q, small_k, _ = data(8, 64, 2000)
    assert K.try_retrieve(small_q, small_k, None, 1.0, None) is None  # small: plain torch
    with pytest.raises(ValueError, match="mode"):
        K.set_mode("fast")


@pytest.mark.parametrize("mode", ["numpy", "torch"])
def test_functional_retrieve_same_result_either_path(mode):
    K.set_mode(mode)
    q, k, v = data(32, 40, 3000, M=24, seed=7)
    for values in (None, v):
        out = AF.retrieve(q, k, values, beta=0.7)
        r = ref(q, k, values, 0.7)
        assert ((out.double() - r).abs().max() / r.abs().max()) < 1e-5


def test_gradients_still_flow_through_retrieve():
    K.set_mode("numpy")
    q, k, _ = data(16, 32, 3000, seed=8, dtype=torch.float64)
    k.requires_grad_()
    out = AF.retrieve(q, k, beta=1.3)
    out.square().sum().backward()
    k2 = k.detach().clone().requires_grad_()
    (torch.softmax(1.3 * q @ k2.T, -1) @ k2).square().sum().backward()
    torch.testing.assert_close(k.grad, k2.grad)


def test_modern_hopfield_uses_the_kernel_and_agrees():
    from assocmem import ModernHopfield

    q, k, _ = data(40, 64, 4000, seed=9)
    m = ModernHopfield(k, beta=2.0)
    K.set_mode("torch")
    a = m.step(q)
    K.set_mode("numpy")
    b = m.step(q)
    assert ((a - b).abs().max() / a.abs().max()) < 1e-5
    ra = m.recall(q, max_steps=5)
    K.set_mode("torch")
    rb = m.recall(q, max_steps=5)
    assert ra.steps == rb.steps
    torch.testing.assert_close(ra.state, rb.state, rtol=1e-4, atol=1e-5)


# --- calibration cache ----------------------------------------------------------------------------------
def test_calibration_is_cached_on_disk_and_reused(tmp_path, monkeypatch):
    choice = K.calibrate(8, 16, 4096, rounds=1)
    assert choice[0] in ("torch", "numpy")
    path = K.cache_path()
    assert path.startswith(str(tmp_path / "cache"))
    data_ = json.loads(open(path).read())
    (key, entry), = data_["decisions"].items()
    assert [entry["path"], entry["chunk"], entry["variant"]] == list(choice)
    assert entry["available"] == K.available_paths(torch.float32) == json.loads(key)[-1]  # recorded with it
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".")]  # no temporary left
    K.clear_cache()  # forget in memory: the next decision must come from disk, without timing anything
    monkeypatch.setattr(K, "calibrate", lambda *a, **k: pytest.fail("recalibrated despite the cache"))
    assert K.decide(8, 16, 4096, 16, torch.float32, torch.float32) == choice
    # same class (same power-of-two buckets) reuses it too
    assert K.decide(7, 15, 4000, 15, torch.float32, torch.float32) == choice


def test_unreadable_cache_is_ignored_and_rewritten():
    path = K.cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("{not json")
    choice = K.decide(8, 16, 4096, 16, torch.float32, torch.float32)
    assert json.loads(open(path).read())["decisions"]  # replaced by a valid file
    assert choice[0] in ("torch", "numpy")


def test_cache_of_another_format_is_ignored(monkeypatch):
    """Decisions taken by another kernel or calibration procedure are not reused: calibrate again."""
    path = K.cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    key = json.dumps(list(K._class_key(8, 16, 16, 4096, torch.float32, torch.float32, K.kernel_threads())))
    entry = {"path": "numpy", "chunk": 123, "variant": "", "available": K.available_paths(torch.float32)}
    with open(path, "w") as fh:
        json.dump({"format": K.CACHE_FORMAT - 1, "decisions": {key: entry}}, fh)
    monkeypatch.setattr(K, "calibrate", lambda *a, **k: ("torch", 0, ""))
    assert K.decide(8, 16, 4096, 16, torch.float32, torch.float32) == ("torch", 0, "")
    K.clear_cache()
    with open(path, "w") as fh:
        json.dump({"format": K.CACHE_FORMAT, "decisions": {key: entry}}, fh)
    assert K.decide(8, 16, 4096, 16, torch.float32, torch.float32) == ("numpy", 123, "")


def test_blas_threads_restored_after_kernel():
    ctl = K._blas_controllers()
    before = [c.num_threads for c in ctl]
    q, k, _ = data(8, 16, 2000)
    run_np(q, k, None, 1.0, 64, 2)
    assert [c.num_threads for c in ctl] == before


def test_bench_command_rejects_bad_cases_with_exit_2(tmp_path, capsys):
    from assocmem.cli import main

    assert main(["bench", "--cases", "retrieval,nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cases" in err
    assert main(["bench", "--rounds", "0"]) == 2
    assert main(["bench", "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert not (tmp_path / "missing").exists()


def test_bench_refuses_an_unwritable_json_path_before_measuring(tmp_path, capsys, monkeypatch):
    """``--json <directory>`` (and any other path the results cannot be written to) is refused up
    front with one line and exit 2; nothing is measured first (it used to run the whole benchmark,
    then fail on the write)."""
    from assocmem.cli import main
    from assocmem.commands import bench

    def measured(*a, **k):
        raise AssertionError("the benchmark ran before the arguments were checked")

    for name in ("case_retrieval", "case_lowp", "case_recall", "case_binary", "case_rk4", "case_streaming", "peak_gflops"):
        monkeypatch.setattr(bench, name, measured)
    (tmp_path / "a_file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    for path, what in ((str(tmp_path), "directory"), (str(tmp_path / "a_file" / "x.json"), "not a directory"),
                       (str(tmp_path / "fifo"), "not a regular file"), ("", "empty")):
        capsys.readouterr()
        assert main(["bench", "--quick", "--cases", "retrieval", "--json", path]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--json" in err and what in err, err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["bench", "--quick", "--json", str(ro / "x.json")]) == 2


@pytest.mark.parametrize("mode", ["numpy", "torch", "auto"])
@pytest.mark.parametrize("shape", [(1, 64, 1000), (24, 40, 3000)])  # the tiny path and the chunked one
def test_retrieve_returns_the_log_sum_exp_of_its_softmax(mode, shape):
    K.set_mode(mode)
    B, N, Kk = shape
    q, k, v = data(B, N, Kk, M=24, seed=11, dtype=torch.float64)
    for values in (None, v):
        out, lse = AF.retrieve(q, k, values, beta=0.9, return_lse=True)
        assert lse.shape == (B,)
        torch.testing.assert_close(lse, torch.logsumexp(0.9 * q @ k.T, -1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out, AF.retrieve(q, k, values, beta=0.9), rtol=1e-12, atol=1e-12)
    mask = torch.zeros(B, Kk, dtype=torch.bool)
    mask[:, ::2] = True
    _, lse = AF.retrieve(q, k, beta=0.9, mask=mask, return_lse=True)
    torch.testing.assert_close(lse, torch.logsumexp(0.9 * q @ k[1::2].T, -1))


@pytest.mark.parametrize("mode", ["numpy", "torch"])
def test_modern_recall_reuses_the_steps_log_sum_exp_exactly(mode):
    """Model B's recall takes the energy trace from the steps' softmax (no extra product per step);
    it equals the generic loop that evaluates ``energy`` after every step, and the states are equal."""
    from assocmem import ModernHopfield

    K.set_mode(mode)
    q, k, _ = data(12, 48, 3000, seed=12, dtype=torch.float64)
    m = ModernHopfield(k, beta=0.4)
    clamp = torch.zeros(48, dtype=torch.bool)
    clamp[:5] = True
    for c in (None, clamp):
        fused = m.recall(q, max_steps=40, tol=1e-9, clamp=c)
        m._fused_energy = False  # the generic path, on this instance only
        plain = m.recall(q, max_steps=40, tol=1e-9, clamp=c)
        del m._fused_energy
        assert fused.steps == plain.steps and torch.equal(fused.converged, plain.converged)
        assert 0 < int(fused.converged.sum()) and fused.steps > 1  # rows finish at different steps
        torch.testing.assert_close(fused.state, plain.state, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(fused.energy, plain.energy, rtol=1e-12, atol=1e-12)
        assert ((fused.energy[1:] - fused.energy[:-1]) <= 1e-12).all()
    one = m.recall(q[3], max_steps=40, tol=1e-9)
    torch.testing.assert_close(one.energy, m.recall(q[3:4], max_steps=40, tol=1e-9).energy[:, 0])
    assert m.recall(q, max_steps=0).energy.shape == (1, 12)


@pytest.mark.parametrize("drift", [1.0, 1.08, 0.93])
@pytest.mark.parametrize("kernel_time, expected", [(0.97, "torch"), (0.90, "numpy")])
def test_calibration_needs_a_clear_win_to_leave_plain_torch(monkeypatch, kernel_time, expected, drift):
    """Equal speeds keep plain torch: the best of several kernel chunk sizes is biased low against a
    single torch candidate, so the kernel must be KERNEL_MARGIN faster. Each kernel call is paired
    with the torch calls around it, so a machine that slows down (or speeds up) by 8 % per call
    during calibration does not change the decision (fastest-round timing would pick whatever ran
    first, or last)."""
    calls = {"torch": 0, "numpy": 0}

    def fake_time(fn, n):
        fn_is_torch = getattr(fn, "__name__", "") == "torch_path"
        calls["torch" if fn_is_torch else "numpy"] += 1
        scale = drift ** (calls["torch"] + calls["numpy"])
        return scale * (1.0 if fn_is_torch else kernel_time)

    monkeypatch.setattr(K, "_time_min", fake_time)
    path, chunk, variant = K.calibrate(8, 16, 4096, rounds=3, save=False)
    assert path == expected and (chunk > 0) == (expected == "numpy")
    assert (variant in K._variants(torch.float32, torch.float32, 8)) == (expected == "numpy")
    # one torch call before and after every kernel call, in each of the (one or two) stages
    stages = 1 + (len(K._chunk_candidates(8, 16, 16, 4096)) > 1)
    assert calls["torch"] == calls["numpy"] + stages


@settings(max_examples=200, deadline=None)
@given(Kk=st.integers(1, 20_000), chunk=st.integers(1, 5000), threads=st.integers(1, 8))
def test_groups_tile_the_bank_evenly(Kk, chunk, threads):
    """The thread groups cover 0:K in order without gaps, at most one per thread, of equal size up
    to one row (so no thread waits on an unequal last group), each cut in equal chunks <= chunk."""
    groups = K._groups(Kk, chunk, threads)
    assert groups[0][0] == 0 and groups[-1][1] == Kk
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert len(groups) <= threads
    sizes = [hi - lo for lo, hi, _ in groups]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    for lo, hi, c in groups:
        pieces = -(-(hi - lo) // c)
        assert 1 <= c <= chunk and pieces * c - (hi - lo) < pieces  # the last piece is short by < 1 row per piece


def test_retrieve_with_lse_keeps_gradients():
    """With a graph to keep, return_lse runs out of place and differentiates like the reference."""
    q, k, v = data(5, 12, 40, M=6, seed=12, dtype=torch.float64)
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    for need in ("q", "beta"):
        qq = q.clone().requires_grad_(need == "q")
        out, lse = AF.retrieve(qq, k, v, beta=beta if need == "beta" else 0.7, return_lse=True)
        (out.square().sum() + lse.sum()).backward()
        q2 = q.clone().requires_grad_(need == "q")
        b2 = beta.detach().clone().requires_grad_(need == "beta")
        s = (b2 if need == "beta" else 0.7) * q2 @ k.T
        (((torch.softmax(s, -1) @ v).square().sum()) + torch.logsumexp(s, -1).sum()).backward()
        got, want = (qq.grad, q2.grad) if need == "q" else (beta.grad, b2.grad)
        torch.testing.assert_close(got, want)
        beta.grad = None


# --- the compiled max / exp / sum step (assocmem._native) --------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, N, Kk, chunk", [(1, 8, 50, 7), (37, 64, 3000, 256), (256, 32, 5000, 1000)])
def test_native_step_gives_the_numpy_kernels_result(dtype, B, N, Kk, chunk):
    """The chunked kernel with the compiled step equals the kernel with numpy's step (and the float64
    reference) to float rounding, for several chunkings and both dtypes."""
    q, k, v = data(B, N, Kk, M=5, seed=21, dtype=dtype)
    qs = (q * 3.0).numpy()
    for vals in (None, v):
        vn = None if vals is None else vals.numpy()
        a = K.retrieve_numpy(qs, k.numpy(), vn, chunk, 2, native=True)
        b = K.retrieve_numpy(qs, k.numpy(), vn, chunk, 2, native=False)
        r = ref(q, k, vals, 3.0).numpy()
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert np.abs(a - b).max() <= tol * np.abs(r).max() and np.abs(a - r).max() <= tol * np.abs(r).max()


def check_step_row_by_row(f, dtype):
    rng = np.random.default_rng(5)
    lo = -120.0 if dtype == np.float32 else -800.0
    tiny = 1.5 * np.finfo(dtype).tiny
    for c in range(1, 41):
        s = rng.uniform(lo, 10.0, size=(4, c)).astype(dtype)
        if c > 1:  # a row of only -inf scores has no maximum to subtract (NaN, see the next test)
            s[3, rng.integers(c)] = -np.inf
        m = np.array([-np.inf, 0.0, 50.0, -np.inf], dtype=dtype)
        with np.errstate(all="ignore"):
            mn = np.maximum(m, s.max(axis=1))
            want, want_alpha = np.exp(s - mn[:, None]), np.exp(m - mn)
        alpha, rowsum = np.empty(4, dtype), np.empty(4, dtype)
        f(s, m, alpha, rowsum)
        rtol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_array_equal(m, mn)
        np.testing.assert_allclose(alpha, want_alpha, rtol=rtol, atol=0)
        np.testing.assert_allclose(s, want, rtol=rtol, atol=tiny)
        np.testing.assert_allclose(rowsum, want.sum(axis=1), rtol=rtol * c, atol=c * tiny)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_step_matches_numpy_row_by_row(dtype):
    """The compiled step against numpy's exp on rows of every length 1-40 (the vector body and the
    tail), scores spread over the underflow range and -inf scores; previous maxima -inf, below and
    above the chunk's. Results below e^-87 (float32; e^-708 float64), under 1.5x the smallest normal
    number, may come back as 0; nothing else may differ beyond rounding."""
    f = K._native_exp(dtype)
    if f is None:
        pytest.skip("no compiled step on this machine")
    check_step_row_by_row(f, dtype)


@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
def test_every_instruction_set_variant_matches_numpy(tmp_path, variant):
    """Each variant this CPU can run (the portable one: libm's vectorised exp with the same flush
    below e^-87; AVX2 + FMA; AVX-512) is built, verified and self-tested, passes the row-by-row
    comparison, and its chunk loop passes the self-test of both score layouts."""
    from assocmem import _native

    need = _native.VARIANTS[variant][0]
    if variant != "generic" and not set(need) <= _native.cpu_flags():
        pytest.skip(f"this CPU lacks {need}")
    if not _has_compiler():
        pytest.skip("no C compiler here")
    lib = _native.load(str(tmp_path), variant)
    assert lib is not None and lib.variant == variant
    for dtype in (np.float32, np.float64):
        check_step_row_by_row(lib.online_exp(dtype), dtype)
        blas = K._numpy_blas_path()
        if blas is not None:
            assert lib.chunk_loop(dtype, blas) is not None


def _has_compiler() -> bool:
    import sysconfig

    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(cc.split()[0]) is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_step_gives_nan_rows_for_nan_or_overflowed_scores(dtype):
    """A NaN score, an overflowed +inf score or a NaN running maximum makes that row NaN (numpy's step
    gives NaN there too); the other rows are untouched by it."""
    f = K._native_exp(dtype)
    if f is None:
        pytest.skip("no compiled step on this machine")
    s = np.zeros((4, 37), dtype)
    s[0, 30] = np.nan
    s[1, 5] = np.inf
    m = np.array([0.0, 0.0, np.nan, 0.0], dtype=dtype)
    alpha, rowsum = np.empty(4, dtype), np.empty(4, dtype)
    f(s, m, alpha, rowsum)
    assert np.isnan(s[:3]).all() and np.isnan(rowsum[:3]).all() and np.isnan(alpha[:3]).all()
    assert (s[3] == 1).all() and rowsum[3] == 37 and alpha[3] == 1 and m[3] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_step_with_a_sharp_softmax(dtype):
    """A large beta: nearly every exponential of every chunk underflows (the slow path of libm's exp,
    flushed to 0 here). The kernel with the compiled step still equals numpy's step and the float64
    reference, log-sum-exp included."""
    q, k, _ = data(16, 32, 3000, seed=24, dtype=dtype)
    beta = 40.0 if dtype == torch.float32 else 400.0
    qs = (q * beta).numpy()
    with np.errstate(all="ignore"):
        a = K.retrieve_numpy(qs, k.numpy(), None, 256, 2, native=True, normalise=False)
        b = K.retrieve_numpy(qs, k.numpy(), None, 256, 2, native=False, normalise=False)
    r = ref(q.double(), k.double(), None, beta).numpy()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(K.finish(*a), r, rtol=0, atol=tol * np.abs(r).max())
    np.testing.assert_allclose(K.finish(*b), r, rtol=0, atol=tol * np.abs(r).max())
    lse = torch.logsumexp(beta * q.double() @ k.double().T, -1).numpy()
    np.testing.assert_allclose(a[0] + np.log(a[1]), lse, rtol=tol, atol=0)


def test_native_step_propagates_nan_like_numpy():
    q, k, _ = data(4, 16, 900, seed=22)
    q[2, 3] = float("nan")
    with np.errstate(all="ignore"):
        a = K.retrieve_numpy(q.numpy(), k.numpy(), None, 128, 2, native=True)
    assert np.isnan(a[2]).all() and np.isfinite(a[[0, 1, 3]]).all()


def test_native_step_is_built_where_a_compiler_is():
    from assocmem import _native

    if not _has_compiler():
        pytest.skip("no C compiler on this machine: the kernel uses numpy's exp")
    assert K._native_exp(np.float32) is not None and K._native_exp(np.float64) is not None
    assert K._native_get("variant", torch.float32) == _native.select_variant()
    lib = K._native_get("lib", torch.float32)  # built once per process, in the first test's cache directory
    meta = json.loads(open(lib.path[:-3] + ".json").read())  # with its sidecar
    assert meta["size"] == os.path.getsize(lib.path) and meta["variant"] == lib.variant == _native.select_variant()
    assert meta["sha256"] == hashlib.sha256(open(lib.path, "rb").read()).hexdigest()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_chunk_loop_equals_the_python_loop(dtype, monkeypatch):
    """The whole chunk loop in one compiled call (products through torch's MKL or numpy's OpenBLAS,
    scores in either layout) gives the Python loop's result with the same compiled step: separate
    values of another width, values = keys, the log-sum-exp only, a sub-range lo:hi with a short
    last chunk; 19 queries (two vectors of eight and a tail in the transposed layout)."""
    dtype_np = np.float32 if dtype == torch.float32 else np.float64
    loops = {"numpy's BLAS": K._native_loop(dtype_np)}
    if loops["numpy's BLAS"] is None:
        pytest.skip("no compiled chunk loop here (no compiler or no gemm symbol in numpy's BLAS)")
    q, k, v = data(19, 24, 2100, M=7, seed=25, dtype=dtype)
    qs, kn, vn = (q * 2.0).numpy(), k.numpy(), v.numpy()
    qsT = np.ascontiguousarray(qs.T)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for (blas, loop), t in [(bl, t) for bl in loops.items() for t in (None, qsT)]:
        for vals, lse_only in ((vn, False), (None, False), (None, True), (vn, True)):
            a = K.partial_numpy(qs, kn, vals, 130, 2011, 300, lse_only=lse_only, native=K._native_exp(dtype_np),
                                loop=loop, qsT=t)
            b = K.partial_numpy(qs, kn, vals, 130, 2011, 300, lse_only=lse_only, native=K._native_exp(dtype_np))
            assert a[2].shape == b[2].shape == (19, 0 if lse_only else (7 if vals is not None else 24))
            np.testing.assert_allclose(a[0] + np.log(a[1]), b[0] + np.log(b[1]), rtol=tol, atol=0)
            if not lse_only:
                got, want = K.finish(*a), K.finish(*b)  # (in place)
                np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
    monkeypatch.setattr(K, "_native_loop", lambda dt: None)  # the whole kernel, both ways
    want = K.retrieve_numpy(qs, kn, vn, 256, 2)
    monkeypatch.undo()
    for variant in K._variants(dtype, dtype, 19):
        got = K.retrieve_numpy(qs, kn, vn, 256, 2, variant=variant)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def test_transposed_scores_keep_nan_rows_and_underflow():
    """The transposed-layout step gives what the row layout gives where it matters for safety: a
    query whose scores hold a NaN comes back NaN (only that query), and a sharp softmax whose
    exponentials underflow stays finite and exact."""
    loop = K._native_loop(np.float32)
    if loop is None:
        pytest.skip("no compiled chunk loop here")
    q, k, _ = data(13, 16, 700, seed=3)
    qs, kn = (q * 60.0).numpy(), k.numpy()  # beta = 60: most exponentials below e^-87
    qs[4, 2] = np.nan
    for t in (None, np.ascontiguousarray(qs.T)):
        m, l, acc = K.partial_numpy(qs, kn, None, 0, 700, 128, native=K._native_exp(np.float32), loop=loop, qsT=t)
        out = K.finish(m, l, acc)
        assert np.isnan(out[4]).all() and np.isfinite(np.delete(out, 4, axis=0)).all()
        want = ref(q, k, None, 60.0).numpy()
        np.testing.assert_allclose(np.delete(out, 4, axis=0), np.delete(want, 4, axis=0), rtol=0, atol=2e-5)


def test_compiled_chunk_loop_uses_numpys_blas_when_scipys_is_loaded_too(monkeypatch):
    """scipy ships its own OpenBLAS (32-bit integers, other symbol names); with both loaded, in
    either order, the chunk loop still finds numpy's (it was once switched off for the whole test
    session when scipy's came first)."""
    pytest.importorskip("scipy.linalg")
    if K._native_exp(np.float32) is None:
        pytest.skip("no compiled step on this machine")
    here = os.path.dirname(os.path.abspath(np.__file__))
    monkeypatch.setattr(K, "_blas", None)  # looked up again, with scipy's library loaded
    blas = K._blas_controllers()
    if not any(str(c.filepath).startswith(here) for c in blas):
        pytest.skip("numpy's BLAS is not inside the numpy installation here")
    monkeypatch.setattr(K, "_blas", list(reversed(blas)))
    monkeypatch.setattr(K, "_native_fns", {})
    assert K._numpy_blas_path().startswith(here)
    assert K._native_loop(np.float32) is not None


def test_compiled_chunk_loop_refuses_a_library_without_gemm(tmp_path):
    """No cblas gemm at the given path (a missing file, a library that is not a BLAS): no compiled
    loop, the Python loop stays."""
    from assocmem import _native

    if K._native_exp(np.float32) is None:
        pytest.skip("no compiled step on this machine")
    lib = K._native_get("lib", torch.float32)
    assert lib.chunk_loop(np.float32, str(tmp_path / "missing.so")) is None
    libm = ctypes.util.find_library("m")
    if libm:
        assert lib.chunk_loop(np.float32, libm) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, N, Kk, M", [(1, 64, 1000, None), (3, 13, 37, 7), (2, 8, 9, 100), (1, 5, 3, 1),
                                          (4, 70, 501, 64), (1, 1, 1, None)])
def test_small_path_equals_numpy_and_the_reference(dtype, B, N, Kk, M, monkeypatch):
    """Tiny problems run as one compiled call (no BLAS): equal to the numpy form of the same update
    and to the float64 reference, log-sum-exp included, for key/value widths that exercise the
    8-key and 64/8-column blocks and their tails, a sharp softmax and a non-contiguous query."""
    if K._native_get("small", dtype) is None:
        pytest.skip("no compiled helper on this machine")
    q, k, v = data(B, N, Kk, M=M, seed=26, dtype=dtype)
    eps = torch.finfo(dtype).eps
    for beta in (0.7, 300.0):
        # rounding of a score is ~eps * beta * sum_j |q_j k_j|, and moves its weight by that much
        cond = beta * float((q.abs().double() @ k.abs().double().T).max())
        tol = max(1e-5 if dtype == torch.float32 else 1e-12, 8 * eps * cond)
        for qq in (q, q.T.contiguous().T):
            out, lse = K._tiny(qq, k, v, beta, return_lse=True)
            assert out.dtype == lse.dtype == dtype and out.shape == (B, N if M is None else M) and lse.shape == (B,)
            r = ref(q, k, v, beta)
            want_lse = torch.logsumexp(beta * q.double() @ k.double().T, -1)
            torch.testing.assert_close(out.double(), r, rtol=0, atol=tol * float(r.abs().max()))
            torch.testing.assert_close(lse.double(), want_lse, rtol=tol, atol=tol)
            with monkeypatch.context() as mp:
                mp.setenv("ASSOCMEM_NATIVE", "0")  # the numpy form
                assert K._native_get("small", dtype) is None
                out2 = K._tiny(qq, k, v, beta)
            torch.testing.assert_close(out, out2, rtol=0, atol=tol * float(r.abs().max()))
    q[0, 0] = float("nan")
    out = K._tiny(q, k, v, 1.0)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1:]).all()


def test_native_step_falls_back_without_compiler_or_when_switched_off(tmp_path, monkeypatch, recwarn):
    """No compiler: one NativeBuildWarning (per process and cache directory) that carries the failed
    command, then None; the kernel still answers through numpy. ASSOCMEM_NATIVE=0: None, no build,
    no warning."""
    from assocmem import _native

    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setattr(_native, "_warned", set())
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(_native.NativeBuildWarning, match="(?s)could not be built.*/nonexistent/cc.*ASSOCMEM_NATIVE=0"):
        assert _native.load(str(tmp_path / "a")) is None
    monkeypatch.setattr(_native, "_libs", {})
    recwarn.clear()
    assert _native.load(str(tmp_path / "a")) is None  # tried again, reported once
    assert not [w for w in recwarn if issubclass(w.category, _native.NativeBuildWarning)]
    monkeypatch.delenv("CC")
    monkeypatch.setenv("ASSOCMEM_NATIVE", "0")
    assert _native.load(str(tmp_path / "b")) is None
    assert not (tmp_path / "b").exists() and not recwarn.list
    q, k, _ = data(8, 16, 2000, seed=23)  # the kernel still answers, through numpy
    out = K.retrieve_numpy(q.numpy(), k.numpy(), None, 256, 2)
    assert np.abs(out - ref(q, k, None, 1.0).numpy()).max() < 1e-5


def test_a_failed_compile_is_reported_with_the_compilers_output(tmp_path, monkeypatch):
    """A source the compiler rejects: the warning carries the compiler's own error message (its
    stderr is captured, never swallowed), nothing is left in the cache directory but the lock."""
    from assocmem import _native

    if not _has_compiler():
        pytest.skip("no C compiler here")
    bad = tmp_path / "retrieval.c"
    bad.write_text(open(_native.SOURCE_PATH).read() + "\nthis is not C;\n")
    monkeypatch.setattr(_native, "SOURCE_PATH", str(bad))
    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setattr(_native, "_warned", set())
    with pytest.warns(_native.NativeBuildWarning, match="(?s)exited with status.*this is not C"):
        assert _native.load(str(tmp_path / "cache"), "generic") is None
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_a_variant_that_cannot_be_built_falls_back_to_a_narrower_one(tmp_path, monkeypatch):
    """The widest variant the CPU runs fails to build (say, a compiler without AVX-512): reported
    once, with the compiler's message, and the next narrower variant is used."""
    from assocmem import _native

    if not _has_compiler():
        pytest.skip("no C compiler here")
    monkeypatch.setitem(_native.VARIANTS, "avx2", ((), ("-mno-such-instruction-set",)))
    monkeypatch.setattr(_native, "select_variant", lambda flags=None: "avx2")
    monkeypatch.setattr(_native, "_libs", {})
    monkeypatch.setattr(_native, "_warned", set())
    with pytest.warns(_native.NativeBuildWarning, match="(?s)[(]avx2[)] could not be built.*mno-such-instruction-set"):
        lib = _native.load(str(tmp_path))
    assert lib is not None and lib.variant == "generic"
    check_step_row_by_row(lib.online_exp(np.float32), np.float32)


def test_variant_and_cache_keys_follow_the_instruction_set_flags():
    """The variant comes from the CPU's instruction-set flags (not its name), and each variant has
    its own build tag; the ISA signature that keys the calibration cache ignores other flags."""
    from assocmem import _native

    if _native._X86:
        assert _native.select_variant({"avx2", "fma", "sse2"}) == "avx2"
        assert _native.select_variant({"avx512f", "avx2", "fma"}) == "avx512"
        assert _native.select_variant({"avx2"}) == "generic"  # no FMA: the AVX2 code needs both
    assert _native.select_variant(set()) == "generic"
    assert len({_native.build_tag(v) for v in _native.VARIANTS}) == len(_native.VARIANTS)
    assert _native.isa_signature({"avx2", "fma", "hypervisor", "constant_tsc"}) == "avx2,fma"


def test_native_refuses_a_foreign_library_file(tmp_path, monkeypatch):
    """A file at the library's cache path that its sidecar does not describe (garbage) is rebuilt,
    not loaded; a library that computes something else fails its self-test and is refused."""
    from assocmem import _native

    if not _has_compiler():
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(_native, "_libs", {})
    so, sidecar, _ = _native.cached_paths(str(tmp_path), "generic")
    (tmp_path / os.path.basename(so)).write_bytes(b"not a shared library")
    stale = tmp_path / ".build-native.999999999.abc" / "tmp"  # a killed builder's directory (no such pid)
    stale.mkdir(parents=True)
    (stale / "retrieval.o").write_bytes(b"x")
    lib = _native.load(str(tmp_path), "generic")
    assert lib is not None and os.path.getsize(so) > 1000  # rebuilt over the garbage
    assert not stale.parent.exists()  # and the killed builder's leftovers removed
    wrong = tmp_path / "wrong.c"  # a library that sums wrongly
    wrong.write_text(open(_native.SOURCE_PATH).read().replace("rowsum[b] = acc;", "rowsum[b] = 2 * acc;"))
    assert wrong.read_text() != open(_native.SOURCE_PATH).read()
    monkeypatch.setattr(_native, "SOURCE_PATH", str(wrong))
    monkeypatch.setattr(_native, "_warned", set())
    with pytest.warns(_native.NativeBuildWarning, match="disagrees with numpy"):
        assert _native.load(str(tmp_path / "w"), "generic") is None


# --- the compiled kernel's cache on disk (fresh processes) -----------------------------------------------
_CHILD = r"""
import glob, os, sys, warnings
warnings.simplefilter("error")  # any warning (a refused or failed build) fails the child
import torch
from assocmem import _kernels as K, functional as AF
g = torch.Generator().manual_seed(0)
q, k = torch.randn(3, 64, generator=g), torch.randn(1000, 64, generator=g) / 8
out = AF.retrieve(q, k, beta=1.5)  # a tiny problem: one call of the compiled library
want = torch.softmax(1.5 * q.double() @ k.double().T, -1) @ k.double()
assert K._native_get("small", torch.float32) is not None, "no compiled kernel"
assert float((out.double() - want).abs().max()) < 1e-5
print("\n".join(sorted(glob.glob(os.path.join(os.environ["ASSOCMEM_CACHE_DIR"], "native-*.so")))))
"""


def _child(cache, extra_env=None):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ASSOCMEM_NATIVE"}
    env.update(ASSOCMEM_CACHE_DIR=str(cache), **(extra_env or {}))
    return subprocess.Popen([sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(p):
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, f"exit status {p.returncode} (-7: SIGBUS)\n{err[-3000:]}"
    return out.split()


def test_a_cached_library_cut_short_or_altered_is_rebuilt_not_loaded(tmp_path):
    """A crash while the library was written (no fsync before the rename) could leave it cut short;
    loading that killed every later process with SIGBUS. Now a fresh process checks the file against
    the size and SHA-256 its sidecar recorded, rebuilds it and retrieves correctly."""
    if not _has_compiler():
        pytest.skip("no C compiler here")
    so, = _finish(_child(tmp_path))
    size = os.path.getsize(so)
    assert size > 20_000
    for cut in (3_000, "flip"):
        if cut == "flip":  # same size, one byte changed in the middle of the code
            with open(so, "r+b") as fh:
                fh.seek(size // 2)
                b = fh.read(1)
                fh.seek(size // 2)
                fh.write(bytes([b[0] ^ 0xFF]))
        else:
            with open(so, "r+b") as fh:
                fh.truncate(cut)
        assert _finish(_child(tmp_path)) == [so]
        meta = json.loads(open(so[:-3] + ".json").read())
        assert os.path.getsize(so) == meta["size"] == size
        assert hashlib.sha256(open(so, "rb").read()).hexdigest() == meta["sha256"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # no temporaries or build directories left behind


def test_processes_starting_together_build_once(tmp_path):
    """Two processes that need the kernel at the same moment: one builds under the file lock, the
    other waits and loads the same verified file; both retrieve correctly."""
    if not _has_compiler():
        pytest.skip("no C compiler here")
    a, b = _child(tmp_path), _child(tmp_path)
    assert _finish(a) == _finish(b)
    assert len(list(tmp_path.glob("native-*.so"))) == len(list(tmp_path.glob("native-*.json"))) == 1


# --- calibration decisions: keyed by the paths available, validated on read ------------------------------
def _counting_calibrate(monkeypatch):
    real, calls = K.calibrate, []

    def calibrate(*a, **kw):
        calls.append(a)
        kw.setdefault("rounds", 1)
        return real(*a, **kw)

    monkeypatch.setattr(K, "calibrate", calibrate)
    return calls


def test_decisions_made_without_the_compiled_kernel_are_not_reused_by_a_process_with_it(monkeypatch):
    """A calibration made with ASSOCMEM_NATIVE=0 (or without a compiler) timed the numpy-only kernel;
    a later process that has the compiled one used to reuse it (1.5-1.7x slower until the cache was
    deleted). Decisions are keyed by the paths available when made, and both kinds are kept."""
    if K._native_exp(np.float32) is None:
        pytest.skip("no compiled kernel here")
    calls = _counting_calibrate(monkeypatch)
    shape = (64, 64, 4096, 64, torch.float32, torch.float32)
    monkeypatch.setenv("ASSOCMEM_NATIVE", "0")
    without = K.decide(*shape)
    assert len(calls) == 1 and K.available_paths(torch.float32) == "numpy"
    assert without[0] == "torch" or without[2] == ""  # only the Python loop exists without the compiled kernel
    monkeypatch.delenv("ASSOCMEM_NATIVE")
    K.clear_cache()  # a new process: decisions come from the file
    with_native = K.decide(*shape)
    assert len(calls) == 2  # not taken from the numpy-only decision
    assert K.available_paths(torch.float32).startswith("compiled-")
    recorded = {e["available"] for e in json.loads(open(K.cache_path()).read())["decisions"].values()}
    assert recorded == {"numpy", K.available_paths(torch.float32)}
    K.clear_cache()
    assert K.decide(*shape) == with_native
    monkeypatch.setenv("ASSOCMEM_NATIVE", "0")
    assert K.decide(*shape) == without and len(calls) == 2  # each reused where it applies


@pytest.mark.parametrize("entry", [
    {"path": "numpy", "chunk": 0, "variant": ""},  # ZeroDivisionError in every retrieval of the class
    {"path": "numpy", "chunk": -3, "variant": ""},  # "negative dimensions are not allowed"
    {"path": "numpy", "chunk": True, "variant": ""},
    {"path": "numpy", "chunk": "256", "variant": ""},
    {"path": "numpy", "chunk": 256.0, "variant": ""},
    {"path": "numpy", "chunk": 2 ** 40, "variant": ""},
    {"path": "numpy", "chunk": 256, "variant": "loop-x"},
    {"path": "numpy", "chunk": 256, "variant": None},
    {"path": "torch", "chunk": 5, "variant": ""},
    {"path": "gpu", "chunk": 256, "variant": ""},
    {"path": "numpy", "chunk": 256},
    {"path": "numpy", "chunk": 256, "variant": "", "available": "compiled-avx9+loop"},
    ["numpy", 256, ""],
    "numpy",
])
def test_an_invalid_cache_entry_is_recalibrated(monkeypatch, entry):
    """Every entry is checked when read; anything a calibration would not write is recalibrated and
    replaced, and the retrieval of that class works (a chunk of 0 or below made every retrieval of
    the class fail)."""
    calls = _counting_calibrate(monkeypatch)
    B, N, Kk = 64, 64, 2000
    key = K._class_key(B, N, N, Kk, torch.float32, torch.float32, K.kernel_threads())
    if isinstance(entry, dict):
        entry = {"available": key[-1], **entry}
    path = K.cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"format": K.CACHE_FORMAT, "decisions": {json.dumps(list(key)): entry}}, fh)
    q, k, _ = data(B, N, Kk, seed=31)
    out = AF.retrieve(q, k, beta=1.2)
    assert ((out.double() - ref(q, k, None, 1.2)).abs().max()) < 1e-5
    assert len(calls) == 1
    stored = json.loads(open(path).read())["decisions"][json.dumps(list(key))]
    assert K._parse_decision(json.dumps(list(key)), stored) is not None  # replaced by a valid one


def test_a_valid_cache_entry_is_used_as_written(monkeypatch):
    calls = _counting_calibrate(monkeypatch)
    key = K._class_key(64, 64, 64, 2000, torch.float32, torch.float32, K.kernel_threads())
    variant = "loop-t" if key[-1].endswith("+loop") else ""
    entry = {"path": "numpy", "chunk": 96, "variant": variant, "available": key[-1]}
    os.makedirs(os.path.dirname(K.cache_path()), exist_ok=True)
    with open(K.cache_path(), "w") as fh:
        json.dump({"format": K.CACHE_FORMAT, "decisions": {json.dumps(list(key)): entry}}, fh)
    assert K.decide(64, 64, 2000, 64, torch.float32, torch.float32) == ("numpy", 96, variant) and not calls


def test_bench_calibrate_is_explicit_and_recorded(capsys):
    """``assocmem bench --calibrate`` calibrates the benchmark's shapes now, prints each decision and
    the paths available, and stores them in the cache (with those paths)."""
    from assocmem.cli import main

    assert main(["bench", "--calibrate", "--quick", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "N=128 K=5k B=64: " in out and K.available_paths(torch.float32) in out and K.cache_path() in out
    (entry,) = json.loads(open(K.cache_path()).read())["decisions"].values()
    assert entry["available"] == K.available_paths(torch.float32)
    assert entry["path"] in ("torch", "numpy")
