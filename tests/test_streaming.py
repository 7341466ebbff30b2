"""Streaming retrieval and memory-mapped banks (assocmem.streaming): equality with the unchunked
update and with ModernHopfield recall, memory bounded by the chunk, verified bank files (truncated,
altered, foreign files rejected before anything is mapped), and bad input."""
import math
import os
import tracemalloc

import numpy as np
import pytest
import torch

from assocmem import CorruptBankError, ModernHopfield
from assocmem import _kernels
from assocmem.streaming import MemmapBank, StreamingMemory, streaming_retrieve, write_bank


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSOCMEM_CACHE_DIR", str(tmp_path / "cache"))
    _kernels.clear_cache()
    yield
    _kernels.clear_cache()


def pm1(K, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (K, N), generator=g) * 2 - 1).float()


def unchunked(q, X, beta):
    s = beta * q.double() @ X.double().T
    return torch.softmax(s, -1) @ X.double(), torch.logsumexp(s, -1)


@pytest.mark.parametrize("chunk", [1, 7, 100, 999, 1000, 5000])
@pytest.mark.parametrize("kind", ["tensor", "array", "memmap"])
def test_streaming_equals_unchunked(chunk, kind, tmp_path):
    X = pm1(1000, 32, 1)
    q = torch.randn(6, 32, generator=torch.Generator().manual_seed(2))
    bank = {"tensor": X, "array": X.numpy(), "memmap": None}[kind]
    if kind == "memmap":
        bank = write_bank(tmp_path / "b.safetensors", X)
    out, lse = streaming_retrieve(q, bank, 0.4, chunk, return_lse=True)
    r, rl = unchunked(q, X, 0.4)
    assert ((out.double() - r).abs().max() / r.abs().max()) < 1e-5
    assert ((lse.double() - rl).abs() / rl.abs()).max() < 1e-5
    lse_only = streaming_retrieve(q, bank, 0.4, chunk, lse_only=True)
    torch.testing.assert_close(lse_only, lse)
    # one vector in, one vector out
    assert streaming_retrieve(q[0], bank, 0.4, chunk).shape == (32,)


def test_torch_path_for_host_array_matches(monkeypatch):
    # the device path (used for CUDA queries) run on CPU tensors through the same entry point
    X = pm1(500, 16, 3)
    q = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    m, l, acc = _kernels.partial_torch(0.5 * q, X, None, 64)
    r, rl = unchunked(q, X, 0.5)
    torch.testing.assert_close((acc / l[:, None]).double(), r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((m + torch.log(l)).double(), rl, rtol=1e-6, atol=1e-6)


def test_float64_bank_stays_float64(tmp_path):
    X = pm1(300, 8, 4).double()
    q = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = write_bank(tmp_path / "d.safetensors", X)
    assert b.dtype == torch.float64
    out = streaming_retrieve(q, b, 1.5, 17)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, unchunked(q, X, 1.5)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_bank_round_trip(dtype, tmp_path):
    X = torch.randn(400, 24, generator=torch.Generator().manual_seed(5))
    b = write_bank(tmp_path / "low.safetensors", X, dtype=dtype)
    assert b.dtype == dtype and b.nbytes == 400 * 24 * 2
    assert torch.equal(b.to_tensor(), X.to(dtype))
    q = torch.randn(5, 24, generator=torch.Generator().manual_seed(6))
    out = streaming_retrieve(q, b, 0.8, 64)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), unchunked(q, X.to(dtype).float(), 0.8)[0], rtol=1e-5, atol=1e-6)


def test_bank_file_is_plain_safetensors(tmp_path):
    from safetensors import safe_open

    X = pm1(100, 12, 7)
    write_bank(tmp_path / "s.safetensors", X)
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("xi"), X)
        assert f.metadata()["format"] == "assocmem-memmap"


def test_write_from_blocks_streams_and_checks_count(tmp_path):
    X = pm1(1000, 10, 8)
    blocks = (X[i:i + 128] for i in range(0, 1000, 128))
    b = write_bank(tmp_path / "blk.safetensors", blocks, n_memories=1000, n_features=10)
    assert torch.equal(b.to_tensor(), X)
    MemmapBank(tmp_path / "blk.safetensors", verify=True)
    with pytest.raises(ValueError, match="n_memories"):
        write_bank(tmp_path / "short.safetensors", (X[i:i + 100] for i in range(0, 500, 100)), n_memories=1000, n_features=10)
    with pytest.raises(ValueError, match=r"expected shape \(k, 10\)"):
        write_bank(tmp_path / "wide.safetensors", [X[:10], pm1(5, 11)], n_memories=15, n_features=10)
    with pytest.raises(ValueError, match="n_memories, n_features"):
        write_bank(tmp_path / "x.safetensors", iter([X]))
    # failed writes leave nothing behind: no bank, no temp file
    assert sorted(os.listdir(tmp_path)) == ["blk.safetensors"]


def test_checksums_catch_altered_data(tmp_path):
    X = pm1(2000, 16, 9)
    p = tmp_path / "c.safetensors"
    write_bank(p, X)
    raw = bytearray(p.read_bytes())
    raw[-100] ^= 0x40  # flip one bit near the end of the data
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptBankError, match="checksum mismatch in block 0"):
        MemmapBank(p)  # small bank: verified on open
    b = MemmapBank(p, verify=False)  # opening unverified is allowed; verify() still catches it
    with pytest.raises(CorruptBankError, match="altered"):
        b.verify()


def test_bank_without_checksums_cannot_be_verified(tmp_path):
    b = write_bank(tmp_path / "n.safetensors", pm1(10, 4), checksum=False)
    assert not b.has_checksums
    with pytest.raises(ValueError, match="without checksums"):
        b.verify()


@pytest.mark.parametrize("cut", [3, 20, -1, -400])
def test_truncated_bank_rejected(cut, tmp_path):
    p = tmp_path / "t.safetensors"
    write_bank(p, pm1(100, 8))
    raw = p.read_bytes()
    p.write_bytes(raw[:cut])
    with pytest.raises(CorruptBankError):
        MemmapBank(p, verify=False)


def test_padded_or_foreign_files_rejected(tmp_path):
    p = tmp_path / "pad.safetensors"
    write_bank(p, pm1(50, 8))
    p.write_bytes(p.read_bytes() + b"\0" * 16)
    with pytest.raises(CorruptBankError, match="bytes"):
        MemmapBank(p)
    from safetensors.torch import save_file

    q = tmp_path / "foreign.safetensors"
    save_file({"xi": torch.zeros(3, 4)}, str(q))
    with pytest.raises(CorruptBankError, match="format"):
        MemmapBank(q)
    g = tmp_path / "garbage.safetensors"
    g.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CorruptBankError, match="unreadable"):
        MemmapBank(g)
    with pytest.raises(FileNotFoundError):
        MemmapBank(tmp_path / "missing.safetensors")


def test_bad_input_is_rejected_clearly(tmp_path):
    X = pm1(100, 16)
    b = write_bank(tmp_path / "b.safetensors", X)
    for bank in (X, b):
        with pytest.raises(ValueError, match="last dimension 16"):
            streaming_retrieve(torch.zeros(2, 15), bank, 1.0)
        for bad in (0, -3):
            with pytest.raises(ValueError, match="chunk_size"):
                streaming_retrieve(torch.zeros(2, 16), bank, 1.0, chunk_size=bad)
        with pytest.raises(TypeError, match="chunk_size"):
            streaming_retrieve(torch.zeros(2, 16), bank, 1.0, chunk_size=2.5)
        with pytest.raises(ValueError, match="beta"):
            streaming_retrieve(torch.zeros(2, 16), bank, -1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        StreamingMemory(X, chunk_size=0)
    with pytest.raises(TypeError, match="bank"):
        streaming_retrieve(torch.zeros(2, 16), [[1.0, 2.0]], 1.0)
    with pytest.raises(ValueError, match="not finite|non-finite"):
        streaming_retrieve(torch.full((2, 16), math.nan), X, 1.0)


def test_peak_memory_bounded_by_chunk(tmp_path):
    # a 12.8 MB memmapped bank, chunks of 256 rows: the Python-heap peak stays far below the bank
    K, N, B = 100_000, 32, 8
    blocks = (pm1(10_000, N, seed=i) for i in range(10))
    b = write_bank(tmp_path / "big.safetensors", blocks, n_memories=K, n_features=N, checksum=False)
    q = pm1(B, N, seed=99)
    streaming_retrieve(q, b, 0.5, 256)  # warm the per-thread buffers
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = streaming_retrieve(q, b, 0.5, 256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000 < b.nbytes / 10, peak
    # and the answer is right
    r, _ = unchunked(q, b.to_tensor(), 0.5)
    assert ((out.double() - r).abs().max() / r.abs().max()) < 1e-5


def test_streaming_memory_recall_matches_modern_hopfield(tmp_path):
    X = pm1(3000, 48, 10)
    g = torch.Generator().manual_seed(11)
    cue = torch.where(torch.rand(20, 48, generator=g) < 0.1, -X[:20], X[:20])
    ref = ModernHopfield(X, beta=1.0).recall(cue, max_steps=30, tol=1e-6)
    b = write_bank(tmp_path / "r.safetensors", X)
    for batch in (None, 7):
        sm = StreamingMemory(b, beta=1.0, chunk_size=500, batch_size=batch)
        r = sm.recall(cue, max_steps=30, tol=1e-6)
        assert r.steps == ref.steps
        assert torch.equal(r.converged, ref.converged)
        torch.testing.assert_close(r.state, ref.state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r.energy.double(), ref.energy.double(), rtol=1e-5, atol=1e-4)
    assert torch.equal(torch.sign(r.state), X[:20])
    # energies never increase (CCCP, KH eq. 16)
    assert (r.energy[1:] - r.energy[:-1]).max() <= 1e-4
    one = StreamingMemory(b, beta=1.0).recall(cue[0], max_steps=30)
    torch.testing.assert_close(one.state, ref.state[0], rtol=1e-5, atol=1e-5)
    assert one.energy.shape == (one.steps + 1,)
    torch.testing.assert_close(sm.energy(cue).double(), ref.energy[0].double(), rtol=1e-5, atol=1e-4)
    none = StreamingMemory(b, beta=1.0).recall(cue, max_steps=0)
    assert none.steps == 0 and torch.equal(none.state, cue)
    none.state.add_(1.0)  # a new tensor, not the caller's cue
    assert not torch.equal(none.state, cue)


# ---- non-finite and empty banks -------------------------------------------------------------------
def _poke(path, bank, row, col, raw_value: bytes):
    """Overwrite one value of a bank file in place (as a foreign writer or a damaged disk would)."""
    item = len(raw_value)
    off = bank._offset + (row * bank.n_features + col) * item
    data = bytearray(open(path, "rb").read())
    data[off:off + item] = raw_value
    open(path, "wb").write(bytes(data))


def test_write_bank_refuses_values_the_stored_dtype_cannot_hold(tmp_path):
    """1e5 is finite in float32 but inf in float16: the bank was written with inf and every
    retrieval from it gave NaN."""
    X = pm1(20, 8)
    X[7, 3] = 1e5
    with pytest.raises(ValueError, match=r"row 7 becomes inf when stored as float16 \(largest 65504\)"):
        write_bank(tmp_path / "h.bank", X, dtype=torch.float16)
    blocks = [X[:5], X[5:]]
    with pytest.raises(ValueError, match=r"patterns block 1: row 7 becomes inf"):
        write_bank(tmp_path / "h.bank", iter(blocks), n_memories=20, n_features=8, dtype=torch.float16)
    for bad in (math.nan, math.inf):
        Y = pm1(20, 8)
        Y[2, 2] = bad
        with pytest.raises(ValueError, match="non-finite"):
            write_bank(tmp_path / "n.bank", Y)
        with pytest.raises(ValueError, match="non-finite"):
            write_bank(tmp_path / "n.bank", Y.numpy())
    assert os.listdir(tmp_path) == []  # nothing written, no temporary left
    b = write_bank(tmp_path / "ok.bank", X, dtype=torch.float32)  # a wide enough dtype is fine
    assert float(b.to_tensor()[7, 3]) == 1e5


def test_empty_banks_refused_by_name(tmp_path):
    """An empty bank gave 'max_workers must be greater than 0' from the thread pool."""
    q = torch.randn(2, 4)
    for bank in (torch.zeros(0, 4), np.zeros((0, 4), np.float32), torch.zeros(3, 0)):
        with pytest.raises(ValueError, match="bank: got .*an empty bank; expected at least one stored pattern"):
            streaming_retrieve(q, bank)
        with pytest.raises(ValueError, match="an empty bank"):
            StreamingMemory(bank)
    with pytest.raises(ValueError, match="expected at least one element"):
        write_bank(tmp_path / "e.bank", torch.zeros(0, 4))
    with pytest.raises(ValueError, match="n_memories: got 0"):
        write_bank(tmp_path / "e.bank", [], n_memories=0, n_features=4)


@pytest.mark.parametrize("kind", ["tensor", "array", "bfloat16", "float16"])
def test_non_finite_bank_in_memory_is_named_not_returned(kind):
    X = pm1(300, 8)
    X[123, 5] = math.nan
    bank = {"tensor": X, "array": X.numpy(), "bfloat16": X.bfloat16(), "float16": X.half()}[kind]
    with pytest.raises(ValueError, match=r"bank: row 123 holds NaN or inf"):
        streaming_retrieve(torch.randn(3, 8), bank)
    with pytest.raises(ValueError, match=r"bank: row 123 holds NaN or inf"):
        StreamingMemory(bank).recall(torch.randn(8))
    with pytest.raises(ValueError, match=r"bank: row 123"):
        StreamingMemory(bank).energy(torch.randn(8))
    X[123, 5] = math.inf  # an inf pattern: its score is +-inf, and the weighted sum 0 * inf is NaN
    with pytest.raises(ValueError, match=r"bank: row 123 holds NaN or inf"):
        streaming_retrieve(torch.randn(3, 8), X.to(bank.dtype) if isinstance(bank, torch.Tensor) else X.numpy())


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_bank_file_is_a_corrupt_bank(tmp_path, checksum, dtype):
    p = tmp_path / "x.bank"
    b = write_bank(p, pm1(50, 6), dtype=dtype, checksum=checksum)
    raw = np.float32(np.nan).tobytes() if dtype == torch.float32 else b"\x80\x7f"  # NaN / bfloat16 +inf
    _poke(p, b, 31, 4, raw)
    with pytest.raises(CorruptBankError, match=r"row 31|checksum mismatch"):
        MemmapBank(p)  # small bank: checked on open (by its checksums, or for NaN and inf without them)
    mb = MemmapBank(p, verify=False)  # a huge bank is opened unread: the retrieval names the damage
    with pytest.raises(CorruptBankError, match=r"row 31 holds NaN or inf"):
        streaming_retrieve(torch.randn(2, 6), mb)
    with pytest.raises(CorruptBankError, match=r"row 31 holds NaN or inf"):
        StreamingMemory(mb).recall(torch.randn(2, 6))
    with pytest.raises(CorruptBankError, match=r"row 31"):
        mb.check_finite()


def test_bank_without_checksums_opens_and_is_read_for_nan(tmp_path):
    """Opening a small bank written with checksum=False ran verify(), which refuses such banks."""
    p = tmp_path / "n.bank"
    write_bank(p, pm1(10, 4), checksum=False)
    b = MemmapBank(p)
    assert b.shape == (10, 4) and not b.has_checksums
    b.check_finite()
    with pytest.raises(ValueError, match="without checksums"):
        MemmapBank(p, verify=True)


def test_overflowing_scores_are_a_divergence_not_nan():
    from assocmem import DivergenceError

    X = torch.full((4, 3), 1e30)
    with pytest.raises(DivergenceError, match=r"query row\(s\) \[0, 1\].*overflow"):
        streaming_retrieve(torch.full((2, 3), 1e30), X)
