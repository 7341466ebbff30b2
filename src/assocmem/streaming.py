"""Streaming Model B retrieval over banks larger than memory (Krotov & Hopfield 2021, eq. 13 and 16).

``streaming_retrieve`` runs ``v <- xi^T softmax(beta xi v)`` chunk by chunk over the memory axis
with an online log-sum-exp, so the memory it needs beyond the bank is bounded by the chunk size;
``MemmapBank`` is a memory-mapped, verified bank file (safetensors layout) so K can exceed RAM
(``write_bank`` refuses empty banks and NaN/inf patterns);
``StreamingMemory`` recalls from such a bank and gets its energies from the same pass.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile

import numpy as np
import torch

from . import _kernels
from ._validation import (CorruptBankError, DivergenceError, all_finite, as_batch, check_int, check_positive, check_tensor,
                          describe)
from ._io import fsync_dir as _fsync_dir
from ._kernels import half_sq_norm
from .recall import RecallResult, recall_loop

__all__ = ["MemmapBank", "write_bank", "streaming_retrieve", "StreamingMemory"]

_FORMAT = "assocmem-memmap"
_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16"}
_FROM_ST = {v: k for k, v in _ST_DTYPES.items()}
_NP_STORAGE = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "BF16": np.uint16}
_BLOCK_BYTES = 64 << 20  # one checksum per 64 MiB of pattern data
_VERIFY_AUTO_BYTES = 256 << 20  # MemmapBank(verify=None) checks every block of banks up to this size
_MAX_HEADER = 100 << 20


def _header(K: int, N: int, st_dtype: str, itemsize: int, block_rows: int, checksums: list[str] | None) -> bytes:
    meta = {"format": _FORMAT, "version": "1", "n_memories": str(K), "n_features": str(N),
            "block_rows": str(block_rows),
            "checksum": "blake2b-128" if checksums is not None else "none",
            "checksums": ",".join(checksums) if checksums is not None else ""}
    head = {"__metadata__": meta, "xi": {"dtype": st_dtype, "shape": [K, N], "data_offsets": [0, K * N * itemsize]}}
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad with spaces to 8-byte alignment, as safetensors does
    return raw


def _as_blocks(patterns, N: int | None):
    """(N, iterator of 2-D row blocks as torch tensors) from a tensor, an array or an iterable of blocks."""
    if isinstance(patterns, (torch.Tensor, np.ndarray)):
        t = check_tensor("patterns", patterns, ndim=2, expected="shape (K, N): one stored pattern per row")
        step = max(1, (16 << 20) // max(1, t.shape[1] * t.element_size()))
        return t.shape[1], t.shape[0], (t[i:i + step] for i in range(0, t.shape[0], step))
    return N, None, iter(patterns)


def write_bank(path, patterns, *, dtype: torch.dtype | None = None, n_memories: int | None = None,
               n_features: int | None = None, checksum: bool = True) -> "MemmapBank":
    """Write a bank file atomically (temp file, fsync, ``os.replace``) and return it opened.

    ``patterns``: a (K, N) tensor or array, or an iterable of (k_i, N) row blocks (then give
    ``n_memories`` and ``n_features``; blocks are streamed, so the bank never has to fit in memory).
    ``dtype``: stored dtype (float32, float64, float16 or bfloat16; default that of the patterns, or
    float32). ``checksum``: store a BLAKE2b-128 digest of every 64 MiB block, checked by
    :meth:`MemmapBank.verify`. The file is a valid safetensors file with one tensor ``xi``.

    Refuses (``ValueError``, nothing written) an empty bank and non-finite patterns, including finite
    values that overflow the stored dtype (float16 holds at most 65504): a NaN or inf pattern would
    make every retrieval from the bank NaN.
    """
    path = os.fspath(path)
    N0, K0, blocks = _as_blocks(patterns, n_features)
    if K0 is None:
        if n_memories is None or n_features is None:
            raise ValueError("n_memories, n_features: required when patterns is an iterable of blocks; "
                             "expected the total row count K and the pattern size N")
        K = check_int("n_memories", n_memories, minimum=1)
        N = check_int("n_features", n_features, minimum=1)
    else:
        K, N = K0, N0
        if n_memories is not None and int(n_memories) != K:
            raise ValueError(f"n_memories: got {n_memories}; expected {K}, the number of rows of patterns")
        if n_features is not None and int(n_features) != N:
            raise ValueError(f"n_features: got {n_features}; expected {N}, the pattern size of patterns")
    if dtype is None:
        dtype = patterns.dtype if isinstance(patterns, torch.Tensor) and patterns.dtype in _ST_DTYPES else torch.float32
    if dtype not in _ST_DTYPES:
        raise TypeError(f"dtype: got {dtype}; expected one of float32, float64, float16, bfloat16")
    st = _ST_DTYPES[dtype]
    itemsize = torch.empty((), dtype=dtype).element_size()
    block_rows = max(1, _BLOCK_BYTES // (N * itemsize))
    n_blocks = -(-K // block_rows)
    zeros = ["0" * 32] * n_blocks if checksum else None  # digests written over these once computed
    head = _header(K, N, st, itemsize, block_rows, zeros)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-memmap-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(struct.pack("<Q", len(head)))
            fh.write(head)
            digests: list[str] = []
            h = hashlib.blake2b(digest_size=16)
            in_block = 0
            block_bytes = block_rows * N * itemsize
            rows = 0
            for i, blk in enumerate(blocks):
                b = check_tensor(f"patterns block {i}", blk, ndim=2, expected=f"shape (k, {N})")
                if b.shape[1] != N:
                    raise ValueError(f"patterns block {i}: got {describe(b)}; expected shape (k, {N})")
                if rows + b.shape[0] > K:
                    raise ValueError(f"patterns: the blocks hold more than n_memories = {K} rows")
                b = b.detach().to(device="cpu", dtype=dtype).contiguous()
                if not all_finite(b):  # finite input that the stored dtype cannot hold (float16 max 65504)
                    bad = (~torch.isfinite(b)).any(-1).nonzero().flatten()
                    raise ValueError(f"patterns block {i}: row {rows + int(bad[0])} becomes inf when stored as "
                                     f"{str(dtype).replace('torch.', '')} (largest {torch.finfo(dtype).max:.6g}); "
                                     "expected values within the stored dtype's range (or a wider dtype=)")
                raw = (b.view(torch.int16) if dtype == torch.bfloat16 else b).numpy().tobytes()
                fh.write(raw)
                rows += b.shape[0]
                if checksum:
                    mv = memoryview(raw)
                    while len(mv):
                        take = min(len(mv), block_bytes - in_block)
                        h.update(mv[:take])
                        in_block += take
                        mv = mv[take:]
                        if in_block == block_bytes:
                            digests.append(h.hexdigest())
                            h = hashlib.blake2b(digest_size=16)
                            in_block = 0
            if rows != K:
                raise ValueError(f"patterns: the blocks hold {rows} rows; expected n_memories = {K}")
            if checksum:
                if in_block:
                    digests.append(h.hexdigest())
                final = _header(K, N, st, itemsize, block_rows, digests)
                assert len(final) == len(head)
                fh.seek(8)
                fh.write(final)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return MemmapBank(path, verify=False)


class MemmapBank:
    """A (K, N) pattern bank in a file, memory-mapped read-only: rows are read from disk as they are
    used, so K may exceed RAM. Opening checks the header, dtype, shape and that the file size is
    exactly what they imply (a truncated or padded file raises :class:`~assocmem.CorruptBankError`
    and nothing is mapped). ``verify`` re-hashes the data against the stored BLAKE2b digests and
    checks that every value is finite: ``True`` always, ``False`` never, ``None`` (default) for
    banks up to 256 MiB (a bank without checksums is then read for NaN and inf only); for huge banks
    call :meth:`verify` when the read is worth it (it reads the whole file). A retrieval that comes
    out non-finite reads the bank for NaN and inf before it reports an overflow, so a damaged huge
    bank is named too.
    """

    def __init__(self, path, verify: bool | None = None):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as fh:
                lead = fh.read(8)
                if len(lead) < 8:
                    raise CorruptBankError(f"{self.path}: file is {size} bytes; expected at least an 8-byte header length (truncated?)")
                (n,) = struct.unpack("<Q", lead)
                if n == 0 or n > _MAX_HEADER or 8 + n > size:
                    raise CorruptBankError(f"{self.path}: header length {n} does not fit a file of {size} bytes (truncated or not a bank)")
                raw = fh.read(n)
        except FileNotFoundError:
            raise FileNotFoundError(f"bank file {self.path!r} does not exist") from None
        try:
            head = json.loads(raw.decode("utf-8"))
            meta = head.get("__metadata__") or {}
            info = head["xi"]
            st = info["dtype"]
            K, N = (int(x) for x in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CorruptBankError(f"{self.path}: unreadable bank header ({type(e).__name__}: {e}); expected a safetensors file with one tensor 'xi'") from None
        if meta.get("format") != _FORMAT:
            raise CorruptBankError(f"{self.path}: metadata format {meta.get('format')!r}; expected {_FORMAT!r} (written by assocmem.streaming.write_bank)")
        if st not in _NP_STORAGE or len(head) != 2 or K < 1 or N < 1:
            raise CorruptBankError(f"{self.path}: tensor 'xi' has dtype {st!r} and shape {info.get('shape')}; expected a 2-D F32/F64/F16/BF16 tensor")
        itemsize = np.dtype(_NP_STORAGE[st]).itemsize
        nbytes = K * N * itemsize
        if start != 0 or end != nbytes:
            raise CorruptBankError(f"{self.path}: data offsets [{start}, {end}] do not match shape ({K}, {N}) of {st}; expected [0, {nbytes}]")
        if size != 8 + n + nbytes:
            raise CorruptBankError(f"{self.path}: file is {size} bytes; header promises {8 + n + nbytes} ({K} x {N} {st}) - truncated or altered")
        self.n_memories, self.n_features = K, N
        self.dtype = _FROM_ST[st]
        self.nbytes = nbytes
        self._offset = 8 + n
        self._block_rows = int(meta.get("block_rows", "0") or 0)
        self._checksums = [c for c in meta.get("checksums", "").split(",") if c] if meta.get("checksum") == "blake2b-128" else None
        if self._checksums is not None and (self._block_rows < 1 or len(self._checksums) != -(-K // self._block_rows)):
            raise CorruptBankError(f"{self.path}: {len(self._checksums)} checksums for {K} rows in blocks of {self._block_rows}; header is inconsistent")
        if verify or (verify is None and nbytes <= _VERIFY_AUTO_BYTES):
            if self._checksums is not None or verify:
                self.verify()
            else:
                self.check_finite()
        self.array = np.memmap(self.path, dtype=_NP_STORAGE[st], mode="r", offset=self._offset, shape=(K, N))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_memories, self.n_features)

    @property
    def has_checksums(self) -> bool:
        return self._checksums is not None

    def __len__(self) -> int:
        return self.n_memories

    def __repr__(self) -> str:
        return f"MemmapBank({self.path!r}, shape={self.shape}, dtype={str(self.dtype).replace('torch.', '')})"

    def verify(self) -> None:
        """Re-hash every block and compare with the stored digests, and check that every value is
        finite (the same read); raise CorruptBankError naming the first bad block or row. A bank
        written with ``checksum=False`` has nothing to compare: ValueError (:meth:`check_finite`
        still reads it for NaN and inf)."""
        if self._checksums is None:
            raise ValueError(f"{self.path}: written without checksums; nothing to verify against (its size and header "
                             "were checked; check_finite() reads it for NaN and inf)")
        self._scan(self._checksums)

    def check_finite(self) -> None:
        """Read the whole bank and raise CorruptBankError naming the first row that holds NaN or inf
        (:func:`write_bank` refuses them, so such a file was written by something else)."""
        self._scan(None)

    def _scan(self, checksums: list[str] | None) -> None:
        st = _ST_DTYPES[self.dtype]
        np_dt = np.dtype(_NP_STORAGE[st])
        row_bytes = self.n_features * np_dt.itemsize
        block_rows = self._block_rows if checksums is not None else max(1, (8 << 20) // row_bytes)
        block_bytes = block_rows * row_bytes
        n_blocks = -(-self.n_memories // block_rows)
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            for i in range(n_blocks):
                h = hashlib.blake2b(digest_size=16)
                left = min(block_bytes, self.nbytes - i * block_bytes)
                row0 = i * block_rows
                tail = b""
                while left:
                    buf = fh.read(min(left, 8 << 20))
                    if not buf:
                        raise CorruptBankError(f"{self.path}: ends inside block {i}; truncated")
                    h.update(buf)
                    left -= len(buf)
                    data = tail + buf
                    whole = len(data) - len(data) % row_bytes
                    self._check_rows(data[:whole], np_dt, row0)
                    row0 += whole // row_bytes
                    tail = data[whole:]
                if checksums is not None and h.hexdigest() != checksums[i]:
                    lo = i * block_rows
                    raise CorruptBankError(f"{self.path}: checksum mismatch in block {i} (rows {lo}..{min(self.n_memories, lo + block_rows) - 1}); the data was altered")

    def _check_rows(self, raw: bytes, np_dt: np.dtype, row0: int) -> None:
        if not raw:
            return
        a = np.frombuffer(raw, dtype=np_dt)
        if self.dtype == torch.bfloat16:  # bfloat16 stored as uint16: exponent bits all ones = inf/NaN
            bad = (a & 0x7F80) == 0x7F80
        else:
            with np.errstate(invalid="ignore"):
                if np.isfinite(np.max(np.abs(a))):  # one reduction when all is well
                    return
            bad = ~np.isfinite(a)
        if bad.any():
            row = row0 + int(np.flatnonzero(bad)[0]) // self.n_features
            raise CorruptBankError(f"{self.path}: row {row} holds NaN or inf; expected finite patterns "
                                   "(write_bank refuses them; this file was written or altered by something else)")

    def rows(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """A copy of rows start:stop as a torch tensor of the stored dtype."""
        a = np.array(self.array[start:stop])
        t = torch.from_numpy(a)
        return t.view(torch.bfloat16) if self.dtype == torch.bfloat16 else t

    def to_tensor(self) -> torch.Tensor:
        """The whole bank in memory (only for banks that fit)."""
        return self.rows()


def _bank_source(bank):
    """(numpy array or torch tensor, is_bf16, torch dtype, (K, N)) for any supported bank type;
    an empty bank (K = 0 or N = 0) raises ValueError."""
    src = _bank_source_any(bank)
    K, N = src[3]
    if K == 0 or N == 0:
        raise ValueError(f"bank: got {describe(bank)}, an empty bank; expected at least one stored pattern "
                         "of size N >= 1")
    return src


def _bank_source_any(bank):
    if isinstance(bank, MemmapBank):
        return bank.array, bank.dtype == torch.bfloat16, bank.dtype, bank.shape
    if isinstance(bank, np.ndarray):
        if bank.ndim != 2 or bank.dtype not in (np.float32, np.float64, np.float16):
            raise ValueError(f"bank: got {describe(bank)}; expected a 2-D float16/32/64 array of shape (K, N)")
        return bank, False, torch.from_numpy(bank[:0]).dtype, bank.shape
    if isinstance(bank, torch.Tensor):
        if bank.ndim != 2 or bank.dtype not in _ST_DTYPES:
            raise ValueError(f"bank: got {describe(bank)}; expected a 2-D floating tensor of shape (K, N)")
        return bank, bank.dtype == torch.bfloat16, bank.dtype, tuple(bank.shape)
    raise TypeError(f"bank: got {describe(bank)}; expected a torch.Tensor, numpy array or MemmapBank")


def _check_chunk(chunk_size) -> int | None:
    if chunk_size is None:
        return None
    return check_int("chunk_size", chunk_size, minimum=1)


def streaming_retrieve(query, bank, beta=1.0, chunk_size: int | None = None, *, return_lse: bool = False,
                       threads: int | None = None, lse_only: bool = False):
    """One Model B update ``softmax(beta q xi^T) xi`` over ``bank`` (K, N), chunk by chunk.

    ``bank``: a tensor (any device), a numpy array or memmap, or a :class:`MemmapBank`; float16 and
    bfloat16 banks are converted chunk by chunk and accumulated in float32. ``query`` (B, N) or (N,).
    Peak memory beyond the bank is O(B * chunk_size + chunk_size * N) per thread. With
    ``return_lse`` also returns ``logsumexp(beta xi q)`` per query (the energy of KH eq. 13 is
    ``1/2 q.q - lse / beta``). ``lse_only`` computes only the log-sum-exp (one product, half the
    work) and returns it alone.

    Queries must be finite and the bank non-empty (``ValueError``). The bank's values are not read
    ahead, but the result is checked (B x N values): a NaN or inf result is explained by reading the
    bank, as ``ValueError`` naming the first non-finite row of a bank in memory,
    ``CorruptBankError`` for a :class:`MemmapBank`, or ``DivergenceError`` when ``beta q.xi``
    overflows.
    """
    src, bf16, kdt, (K, N) = _bank_source(bank)
    q = check_tensor("query", query, ndim=(1, 2), expected=f"shape ({N},) or (B, {N})")
    q, single = as_batch("query", q, N)
    beta = float(check_positive("beta", beta))
    chunk = _check_chunk(chunk_size)
    cdt = torch.float64 if (q.dtype == torch.float64 and kdt == torch.float64) else torch.float32
    B = q.shape[0]
    variant = None  # the kernel's default for a chunk size the caller chose
    if chunk is None:
        chunk, variant = _kernels.best_plan(B, N, N, K, cdt, kdt)
    if q.device.type == "cpu" and not (isinstance(src, torch.Tensor) and src.device.type != "cpu"):
        arr = src
        if isinstance(src, torch.Tensor):
            arr = _kernels._np_view(src.detach().contiguous())[0]
        qs = np.multiply(q.detach().to(cdt).numpy(), beta, dtype=np.float64 if cdt == torch.float64 else np.float32)
        nthreads = _kernels.kernel_threads() if threads is None else check_int("threads", threads, minimum=1)
        m, l, acc = _kernels.retrieve_numpy(qs, arr, None, chunk, nthreads, bf16, normalise=False, lse_only=lse_only,
                                            variant=variant)
        lse = torch.from_numpy(m + np.log(l))
        out = None if lse_only else torch.from_numpy(acc / l[:, None])
    else:
        dev = q.device if isinstance(src, np.ndarray) else src.device
        keys = src if isinstance(src, torch.Tensor) else _NumpyRows(src, bf16)
        m, l, acc = _kernels.partial_torch((q.to(dev, cdt) * beta), keys, None, chunk, cdt, lse_only)
        lse = m + torch.log(l)
        out = None if lse_only else acc / l.unsqueeze(-1)
    if not all_finite(lse) or (out is not None and not all_finite(out)):
        _diagnose(bank, src, out, lse, beta)
    lse = lse.to(q.device)
    if lse_only:
        return lse[0] if single else lse
    out = out.to(q.device)
    if single:
        out, lse = out[0], lse[0]
    return (out, lse) if return_lse else out


def _first_bad_row(src) -> int | None:
    """The first row of an in-memory bank that holds NaN or inf, read in 16 MiB slices; None if none."""
    K, N = src.shape
    step = max(1, (16 << 20) // max(1, N * 4))
    for lo in range(0, K, step):
        part = src[lo:lo + step]
        t = torch.from_numpy(np.ascontiguousarray(part)) if isinstance(part, np.ndarray) else part
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            return lo + int(bad.any(-1).nonzero()[0])
    return None


def _diagnose(bank, src, out, lse, beta) -> None:
    """Raise the error that explains a non-finite retrieval from finite queries: the bank holds NaN
    or inf (CorruptBankError for a bank file, ValueError for one in memory), or the scores
    ``beta q.xi`` overflow (DivergenceError)."""
    bad_t = ~torch.isfinite(lse) if out is None else (~torch.isfinite(out)).any(-1) | ~torch.isfinite(lse)
    rows = bad_t.nonzero().flatten()[:10].tolist()
    if isinstance(bank, MemmapBank):
        bank.check_finite()  # raises CorruptBankError naming the row
    else:
        r = _first_bad_row(src)
        if r is not None:
            raise ValueError(f"bank: row {r} holds NaN or inf (the retrieval gave NaN for query row(s) {rows}); "
                             "expected finite patterns")
    raise DivergenceError(f"streaming retrieval produced NaN or inf for query row(s) {rows}: the scores beta * q.xi "
                          f"(beta = {beta:g}) overflow; rescale the queries or the bank")


class _NumpyRows:
    """Slices of a numpy bank as torch tensors (for the torch path with a host-side bank)."""

    def __init__(self, arr, bf16):
        self.arr, self.bf16 = arr, bf16
        self.shape = arr.shape

    def __getitem__(self, sl):
        t = torch.from_numpy(np.ascontiguousarray(self.arr[sl]))
        return t.view(torch.bfloat16) if self.bf16 else t


class StreamingMemory:
    """Model B (KH eq. 13-16) over a bank that need not fit in memory.

    ``step`` is one update ``v <- xi^T softmax(beta xi v)``; ``recall`` iterates it, in batches of
    ``batch_size`` cues, and reads each state's energy ``1/2 v.v - lse(beta xi v) / beta`` off the
    log-sum-exp of the pass that updates it, so recording energies costs one extra half-pass at the
    end rather than one per step (``energy=False`` skips it: then ``steps`` passes exactly).
    """

    def __init__(self, bank, beta: float = 1.0, chunk_size: int | None = None, batch_size: int | None = None):
        self.bank = bank
        _, _, self.bank_dtype, (self.n_memories, self.n_features) = _bank_source(bank)
        self.beta = float(check_positive("beta", beta))
        self.chunk_size = _check_chunk(chunk_size)
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, minimum=1)

    def _q(self, name, x):
        t = check_tensor(name, x, ndim=(1, 2), expected=f"shape ({self.n_features},) or (B, {self.n_features})")
        return as_batch(name, t, self.n_features)

    def step(self, x) -> torch.Tensor:
        return streaming_retrieve(x, self.bank, self.beta, self.chunk_size)

    def energy(self, x) -> torch.Tensor:
        t, single = self._q("x", x)
        lse = streaming_retrieve(t, self.bank, self.beta, self.chunk_size, lse_only=True)
        e = 0.5 * (t.to(lse.dtype) ** 2).sum(-1) - lse / self.beta
        return e[0] if single else e

    def recall(self, cue, max_steps: int = 100, tol: float = 1e-6, energy: bool = True) -> RecallResult:
        """Iterate ``step`` from ``cue`` (in batches of ``batch_size`` cues) until no state moves by
        more than ``tol`` (max |dx|) or ``max_steps``, with the recall loop every Model B source
        shares (:func:`assocmem.recall.recall_loop`). The energy trace is read off each pass's
        log-sum-exp; the final states' energies cost one more half pass, when the trace is first
        read (``energy=False``: no trace, ``steps`` passes exactly)."""
        x, single = self._q("cue", cue)
        max_steps = check_int("max_steps", max_steps, minimum=0)
        tol = float(check_positive("tol", tol, allow_zero=True))
        cdt = torch.float64 if (x.dtype == torch.float64 and self.bank_dtype == torch.float64) else torch.float32
        x = x.to(cdt)
        bs = self.batch_size or x.shape[0]
        parts = [recall_loop(self._step_with_energy, self._energy_cdt, x[i:i + bs], max_steps, tol)
                 for i in range(0, x.shape[0], bs)]
        steps = max(p.steps for p in parts)
        state = torch.cat([p.state for p in parts]) if len(parts) > 1 else parts[0].state
        conv = torch.cat([p.converged for p in parts]) if len(parts) > 1 else parts[0].converged
        if not energy:
            en = torch.empty(0, state.shape[0], dtype=cdt)
            return RecallResult(state[0], steps, conv[0], en[:, 0]) if single else RecallResult(state, steps, conv, en)

        def trace() -> torch.Tensor:
            # each batch's trace is padded with its final energies to stack to (steps + 1, B)
            es = [torch.cat([p.energy, p.energy[-1:].expand(steps - p.steps, -1)]) for p in parts]
            en = torch.cat(es, dim=1)
            return en[:, 0] if single else en

        return RecallResult(state[0] if single else state, steps, conv[0] if single else conv, trace)

    def _step_with_energy(self, x, clamp, cue):
        new, lse = streaming_retrieve(x, self.bank, self.beta, self.chunk_size, return_lse=True)
        return new, half_sq_norm(x).to(lse.dtype) - lse / self.beta

    def _energy_cdt(self, x):
        lse = streaming_retrieve(x, self.bank, self.beta, self.chunk_size, lse_only=True)
        return (half_sq_norm(x).to(lse.dtype) - lse / self.beta).to(x.dtype)
