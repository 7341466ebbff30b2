"""Fast CPU retrieval for Model B, ``softmax(beta q xi^T) V`` (KH 2021 eq. 16): a chunked online
log-sum-exp over the bank in worker threads (compiled parts in :mod:`assocmem._native`), the exact
merge of partial results, the calibration that picks this kernel or plain torch per shape class.

Each worker runs its chunks with a single-threaded BLAS (numpy's): one product, the exponentials in
place on data still in cache, the second product; partial results ``(m, l, acc)`` merge exactly as
the ranks of :mod:`assocmem.distributed` do. Which path (this kernel or plain torch), which variant
(score layout) and which chunk size runs is decided per shape class by a one-time calibration,
cached on disk with the paths that were available when it was made (see :func:`calibrate`,
:func:`cache_path`). Also the numpy helpers of the recall loops (:func:`max_abs_change`,
:func:`half_sq_norm`), which keep torch's OpenMP workers asleep between kernel calls.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from numbers import Real

import numpy as np
import torch

from ._native import COMPILER_ENV, isa_signature
from ._native import load as _load_native
from ._io import atomic_write_bytes, file_lock
from ._validation import check_choice, describe

__all__ = [
    "try_retrieve",
    "retrieve_numpy",
    "partial_numpy",
    "partial_torch",
    "merge_partials",
    "finish",
    "decide",
    "best_plan",
    "calibrate",
    "cache_path",
    "clear_cache",
    "kernel_threads",
    "set_mode",
    "get_mode",
    "check_beta",
    "available_paths",
    "numpy_view",
    "max_abs_change",
    "half_sq_norm",
]

# Problems smaller than this many multiply-adds (B * K * (N + M) / 2) go straight to torch: the
# cost is then per-call overhead, and plain torch is the reference the issue measures against.
SMALL_WORK = 1 << 21
# ...except the tiniest (B * K * (N + M) below this), which run as five numpy calls in this thread:
# torch spends more on per-op dispatch there than numpy spends on the whole update.
TINY_WORK = 1 << 18
# calibration picks the kernel only when it is at least 5 % faster than plain torch
KERNEL_MARGIN = 0.95
# version of the calibration procedure and kernel: cache files written by another version are ignored
CACHE_FORMAT = 5
_MODES = ("auto", "torch", "numpy")
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}
_LOW = (torch.float16, torch.bfloat16)
_F32, _F64, _Tensor = torch.float32, torch.float64, torch.Tensor

_mode = os.environ.get("ASSOCMEM_KERNEL", "auto").strip().lower() or "auto"
if _mode not in _MODES:
    _mode = "auto"
_decisions: dict[tuple, tuple] = {}  # in-memory view of the calibration cache
_disk_loaded = False
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_blas = None  # threadpoolctl controllers of the BLAS libraries numpy uses (None: not looked up yet)
_local = threading.local()


# ---------------------------------------------------------------------------------------------------
# policy
# ---------------------------------------------------------------------------------------------------
def set_mode(mode: str) -> None:
    """``"auto"`` (calibrated choice, the default), ``"torch"`` (never use the kernel) or ``"numpy"``
    (always use it where it applies). The environment variable ``ASSOCMEM_KERNEL`` sets the start value."""
    global _mode
    _mode = check_choice("mode", mode, _MODES)


def get_mode() -> str:
    return _mode


def kernel_threads() -> int:
    """Worker threads the kernel uses: the cores this process may run on, capped by
    ``torch.get_num_threads()`` so that ``torch.set_num_threads(1)`` also limits us."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, torch.get_num_threads()))


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < n:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="assocmem-kernel")
            _pool_size = n
        return _pool


def _blas_controllers():
    """The BLAS libraries loaded by numpy, as threadpoolctl controllers (empty if unavailable)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"
                     and "torch" not in str(c.filepath)]
        except Exception:  # threadpoolctl missing or a library it cannot drive
            _blas = []
    return _blas


def _numpy_blas_path() -> str | None:
    """The file of the BLAS numpy's matmul calls (the compiled chunk loop must call the same one):
    among the loaded BLAS libraries, the one inside numpy's installation (wheels ship it in
    ``numpy.libs``); else the first that is not scipy's or torch's own copy."""
    blas = _blas_controllers()
    here = os.path.dirname(os.path.abspath(np.__file__))
    for c in blas:
        if str(c.filepath).startswith(here):
            return str(c.filepath)
    rest = [c for c in blas if "scipy" not in os.path.dirname(str(c.filepath))]
    return str(rest[0].filepath) if rest else None


class _SingleThreadedBlas:
    """Within the block, numpy's BLAS runs one thread per caller: our worker threads are the
    parallelism, and BLAS threads would only compete with them for the same cores."""

    __slots__ = ("saved",)

    def __enter__(self):
        self.saved = []
        for c in _blas_controllers():
            n = c.num_threads
            if n != 1:
                c.set_num_threads(1)
                self.saved.append((c, n))
        return self

    def __exit__(self, *exc):
        for c, n in self.saved:
            c.set_num_threads(n)
        return False


# ---------------------------------------------------------------------------------------------------
# the numpy kernel: one group of chunks -> partial (m, l, acc)
# ---------------------------------------------------------------------------------------------------
def _workspace(shape, dtype, slot: str) -> np.ndarray:
    """Per-thread scratch buffers reused across calls (no page faults on every call)."""
    ws = getattr(_local, "ws", None)
    if ws is None:
        ws = _local.ws = {}
    key = (slot, shape, dtype)
    buf = ws.get(key)
    if buf is None:
        if len(ws) > 16:
            ws.clear()
        buf = ws[key] = np.empty(shape, dtype)
    return buf


def _chunk_as(src: np.ndarray, c0: int, c1: int, dtype, bf16: bool, slot: str) -> np.ndarray:
    """Rows c0:c1 of a bank as ``dtype``: a view when no conversion is needed, else converted into a
    per-thread buffer (float16 by numpy's cast, bfloat16 stored as uint16 by a 16-bit shift)."""
    block = src[c0:c1]
    if not bf16 and block.dtype == dtype:
        return block
    out = _workspace(block.shape, dtype, slot)
    if bf16:
        wide = out.view(np.uint32)
        np.copyto(wide, block, casting="unsafe")
        np.left_shift(wide, 16, out=wide)
    else:
        np.copyto(out, block, casting="unsafe")
    return out


def partial_numpy(qs: np.ndarray, keys: np.ndarray, values: np.ndarray | None, lo: int, hi: int, chunk: int,
                  bf16: bool = False, lse_only: bool = False, native=None, loop=None, qsT=None):
    """Rows lo:hi of the bank against the already scaled queries ``qs = beta q`` (B, N).

    Returns ``(m, l, acc)``: per query the largest score m (B,), sum of exp(score - m) l (B,) and
    the unnormalised output sum exp(score - m) values (B, M) ((B, 0) with ``lse_only``: only the
    first product is computed). The online update per chunk is
    ``m' = max(m, max s)``, ``l' = l e^{m - m'} + sum e^{s - m'}``, ``acc' = acc e^{m - m'} + e^{s - m'} V``.
    ``native`` (from :meth:`assocmem._native.Library.online_exp`) does the max / exp / sum of a chunk in one
    compiled call; without it numpy does them. ``loop`` (from :meth:`assocmem._native.Library.chunk_loop`)
    runs the whole loop below in one compiled call (banks already in ``qs``'s dtype, C-contiguous),
    with the scores transposed when ``qsT`` (``qs.T``, C-contiguous) is given.
    """
    dt = qs.dtype
    B = qs.shape[0]
    M = 0 if lse_only else (values if values is not None else keys).shape[1]
    if hi <= lo:
        return np.full(B, -np.inf, dtype=dt), np.zeros(B, dtype=dt), np.zeros((B, M), dtype=dt)
    vals = keys if (values is None or lse_only) else values
    # (one query: numpy's matmul takes BLAS's matrix-vector path, 1.4x faster than gemm with one row)
    if (loop is not None and B > 1 and not bf16 and keys.dtype == dt and vals.dtype == dt and keys.flags.c_contiguous
            and vals.flags.c_contiguous and qs.flags.c_contiguous):
        m, l, acc = np.empty(B, dtype=dt), np.empty(B, dtype=dt), np.empty((B, M), dtype=dt)
        loop(qs, keys, vals, lo, hi, chunk, m, l, acc, qsT)
        return m, l, acc
    m = np.full(B, -np.inf, dtype=dt)
    l = np.zeros(B, dtype=dt)
    acc = np.zeros((B, M), dtype=dt)
    sfull = _workspace((B, chunk), dt, "s")
    tmp = _workspace((B, M), dt, "t")
    cm = _workspace((B,), dt, "cm")
    rowsum = _workspace((B,), dt, "rowsum")
    first = True
    for c0 in range(lo, hi, chunk):
        c1 = min(c0 + chunk, hi)
        kc = _chunk_as(keys, c0, c1, dt, bf16, "k")
        vc = kc if (values is None or lse_only) else _chunk_as(values, c0, c1, dt, bf16, "v")
        s = sfull if c1 - c0 == chunk else _workspace((B, c1 - c0), dt, "s_tail")
        np.matmul(qs, kc.T, out=s)
        if native is not None:
            native(s, m, cm, rowsum)  # m <- m', s <- e^{s - m'}, cm <- e^{m - m'}, rowsum <- sum e^{s - m'}
            if first:
                l[:] = rowsum
                if M:
                    np.matmul(s, vc, out=acc)
                first = False
                continue
            if M:
                np.matmul(s, vc, out=tmp)
            if not (cm == 1).all():
                l *= cm
                acc *= cm[:, None]
            l += rowsum
            acc += tmp
            continue
        np.max(s, axis=1, out=cm)
        if first:
            m[:] = cm
            s -= m[:, None]
            np.exp(s, out=s)
            np.sum(s, axis=1, out=l)
            if M:
                np.matmul(s, vc, out=acc)
            first = False
            continue
        np.maximum(m, cm, out=cm)  # cm = m'
        s -= cm[:, None]
        np.exp(s, out=s)
        np.subtract(m, cm, out=m)
        np.exp(m, out=m)  # m = e^{m - m'}
        if M:
            np.matmul(s, vc, out=tmp)
        if (m == 1).all():
            l += s.sum(axis=1)
            acc += tmp
        else:
            l *= m
            l += s.sum(axis=1)
            acc *= m[:, None]
            acc += tmp
        m[:] = cm
    return m, l, acc


_native_fns: dict = {}


def _native_lib():
    """The compiled kernel for this CPU (:func:`assocmem._native.load`), built beside the
    calibration cache; None where it cannot be had."""
    return _load_native(os.path.dirname(cache_path()))


def _native_get(kind: str, dtype):
    """A compiled part of the kernel for ``dtype`` (numpy or torch; ``"exp"``: the per-chunk step,
    ``"loop"``: the chunk loop with numpy's BLAS, ``"small"``: a whole small retrieval; ``"variant"``:
    the name of the instruction-set variant loaded; ``"lib"``: the :class:`assocmem._native.Library`);
    None where it cannot be had. Once found, looked up per dtype and setting of ``ASSOCMEM_NATIVE``
    (``0`` switches all off; this runs on every kernel call); a part that could not be had is retried
    when the compiler's environment or the cache directory changes."""
    env = os.environ
    native = env.get("ASSOCMEM_NATIVE")
    fn = _native_fns.get((kind, dtype, native))
    if fn is not None:
        return fn
    if native is not None and native.strip() == "0":
        return None
    # what the build depends on, read cheaply (cache_path() costs ~13 us: this path runs on every
    # kernel call where the helper cannot be had)
    missing = (kind, dtype, native, env.get("ASSOCMEM_CACHE_DIR"), env.get("XDG_CACHE_HOME"), env.get("HOME"),
               *(env.get(k) for k in COMPILER_ENV))
    if missing in _native_fns:
        return None
    dt = np.dtype(_NP_DTYPES.get(dtype, dtype))
    lib = _native_lib()
    fn = None
    if lib is not None:
        if kind == "lib":
            fn = lib
        elif kind == "variant":
            fn = lib.variant
        elif kind == "exp":
            fn = lib.online_exp(dt)
        elif kind == "small":
            fn = lib.small(dt)
        elif kind == "loop":
            blas = _numpy_blas_path()
            fn = lib.chunk_loop(dt, blas) if blas else None
    _native_fns[(kind, dtype, native) if fn is not None else missing] = fn
    return fn


def _native_exp(dtype):
    return _native_get("exp", dtype)


def _native_loop(dtype):
    return _native_get("loop", dtype)


#: the kernel's variants where the compiled loop applies: scores B x chunk, or transposed (chunk x B)
VARIANTS = ("loop", "loop-t")


def _variants(dtype, kdtype, B: int) -> list[str]:
    """The kernel's variants for this problem: ``"loop"`` (the compiled chunk loop, scores B x chunk)
    and ``"loop-t"`` (scores transposed); ``[""]`` (the Python loop) where the compiled loop does not
    apply (one query, a bank converted chunk by chunk, no compiled kernel)."""
    if B == 1 or kdtype != dtype or _native_exp(dtype) is None or _native_loop(dtype) is None:
        return [""]
    return list(VARIANTS)


def _default_variant(dtype, kdtype, B: int) -> str:
    """Without a calibration: scores transposed for fewer than 128 queries."""
    v = _variants(dtype, kdtype, B)
    return v[-1] if B < 128 else v[0]


def merge_partials(parts, inplace: bool = False):
    """Log-sum-exp merge of partial results ``(m, l, acc)`` in the given (fixed) order; works on
    numpy arrays and on torch tensors alike. Returns the merged ``(m, l, acc)``. ``inplace`` (numpy):
    the parts' own arrays are rescaled and summed into the first one's (no temporaries)."""
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0][0], np.ndarray):
        mx = parts[0][0].copy()
        for p in parts[1:]:
            np.maximum(mx, p[0], out=mx)
        if inplace:
            (m0, l, acc), rest = parts[0], parts[1:]
            w = np.exp(m0 - mx)
            l *= w
            acc *= w[:, None]
            for pm, pl, pa in rest:
                w = np.exp(pm - mx)  # 0 for an empty part (pm = -inf)
                l += pl * w
                pa *= w[:, None]
                acc += pa
            return mx, l, acc
        l = np.zeros_like(parts[0][1])
        acc = np.zeros_like(parts[0][2])
        for pm, pl, pa in parts:
            w = np.exp(pm - mx)  # 0 for an empty part (pm = -inf)
            l += pl * w
            acc += pa * w[:, None]
        return mx, l, acc
    mx = parts[0][0]
    for p in parts[1:]:
        mx = torch.maximum(mx, p[0])
    l = torch.zeros_like(parts[0][1])
    acc = torch.zeros_like(parts[0][2])
    for pm, pl, pa in parts:
        w = torch.exp(pm - mx)
        l = l + pl * w
        acc = acc + pa * w.unsqueeze(-1)
    return mx, l, acc


def finish(m, l, acc):
    """Normalise a merged partial: the retrieved states acc / l (in place for numpy)."""
    if isinstance(acc, np.ndarray):
        acc /= l[:, None]
        return acc
    return acc / l.unsqueeze(-1)


def _groups(K: int, chunk: int, threads: int) -> list[tuple[int, int, int]]:
    """Split 0:K into one contiguous group per thread of (nearly) equal row counts, each cut into
    equal chunks of at most ``chunk`` rows: ``(lo, hi, chunk)`` per group. Equal groups keep the
    threads busy to the end (groups of whole chunks left one thread with 3 of 5 groups on
    K = 10,000, chunk 1,024: 20 % of the time on one core). Two groups per thread, taken
    dynamically, were 5 % slower at N = 256, K = 10,000, B = 256 (per-group set-up and a longer
    merge) for a gain only when another process takes a core. Merged in this order, so the result
    does not depend on which thread ran which group."""
    n_chunks = -(-K // chunk)
    n_groups = max(1, min(n_chunks, threads))
    out = []
    for g in range(n_groups):
        lo, hi = K * g // n_groups, K * (g + 1) // n_groups
        if hi > lo:
            pieces = -(-(hi - lo) // chunk)
            out.append((lo, hi, -(-(hi - lo) // pieces)))
    return out


def retrieve_numpy(qs: np.ndarray, keys: np.ndarray, values: np.ndarray | None, chunk: int, threads: int,
                   bf16: bool = False, lo: int = 0, hi: int | None = None, normalise: bool = True,
                   lse_only: bool = False, native: bool = True, variant: str | None = None):
    """The whole kernel: rows lo:hi of the bank against ``qs = beta q``, in ``threads`` threads.
    Returns the states (B, M), or the merged ``(m, l, acc)`` when ``normalise`` is False.
    ``variant``: which compiled loop (see :func:`_variants`; None: :func:`_default_variant`, ``""``:
    the Python loop)."""
    hi = keys.shape[0] if hi is None else hi
    groups = [(lo + a, lo + b, c) for a, b, c in _groups(hi - lo, chunk, threads)]
    nat = _native_exp(qs.dtype) if native else None
    loop = qsT = None
    if nat is not None:
        B = qs.shape[0]
        if variant is None:
            variant = _default_variant(qs.dtype, keys.dtype, B)
        base, _, layout = variant.partition("-")
        loop = _native_loop(qs.dtype) if base == "loop" else None
        if loop is not None and layout == "t" and B > 1:
            qsT = np.ascontiguousarray(qs.T)
    def part(group):
        a, b, c = group
        return partial_numpy(qs, keys, values, a, b, c, bf16, lse_only, nat, loop, qsT)

    if len(groups) == 1:
        parts = [part(groups[0])]
    else:  # one group per thread (see _groups): the pool takes all but the first, this thread that one
        pool = _get_pool(len(groups) - 1)
        with _SingleThreadedBlas():
            futures = [pool.submit(part, g) for g in groups[1:]]
            parts = [part(groups[0])] + [f.result() for f in futures]
    merged = merge_partials(parts, inplace=True)  # the parts are this call's own arrays
    return finish(*merged) if normalise else merged


# ---------------------------------------------------------------------------------------------------
# the same online softmax on torch tensors (any device; used for streaming on GPU and as reference)
# ---------------------------------------------------------------------------------------------------
def partial_torch(qs: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None, chunk: int,
                  compute_dtype: torch.dtype | None = None, lse_only: bool = False):
    """``(m, l, acc)`` of the rows of ``keys`` against ``qs = beta q`` on the tensors' device,
    chunk by chunk (chunks converted to ``compute_dtype``, default that of ``qs``)."""
    dt = compute_dtype or qs.dtype
    qs = qs.to(dt)
    B = qs.shape[0]
    M = 0 if lse_only else (values if values is not None else keys).shape[1]
    m = torch.full((B,), -math.inf, dtype=dt, device=qs.device)
    l = torch.zeros(B, dtype=dt, device=qs.device)
    acc = torch.zeros(B, M, dtype=dt, device=qs.device)
    K = keys.shape[0]
    for c0 in range(0, K, chunk):
        kc = keys[c0:c0 + chunk].to(device=qs.device, dtype=dt)
        s = qs @ kc.T
        mn = torch.maximum(m, s.amax(-1))
        s.sub_(mn.unsqueeze(-1)).exp_()
        a = torch.exp(m - mn)
        l = l * a + s.sum(-1)
        if M:
            vc = kc if values is None else values[c0:c0 + chunk].to(device=qs.device, dtype=dt)
            acc = torch.addmm(acc * a.unsqueeze(-1), s, vc)
        m = mn
    return m, l, acc


# ---------------------------------------------------------------------------------------------------
# calibration: which path and chunk size per shape class, measured once and cached on disk
# ---------------------------------------------------------------------------------------------------
def _bucket(x: int) -> int:
    return max(0, int(x) - 1).bit_length()  # ceil(log2 x)


def available_paths(dtype) -> str:
    """What the kernel can run for ``dtype`` in this process, as recorded with every calibration
    decision: ``"compiled-<isa>+loop"`` (the compiled step and chunk loop of that instruction-set
    variant), ``"compiled-<isa>"`` (the compiled step only: no cblas ``?gemm`` in numpy's BLAS) or
    ``"numpy"`` (no compiled kernel: ``ASSOCMEM_NATIVE=0``, no compiler, a failed build)."""
    variant = _native_get("variant", dtype)
    if variant is None:
        return "numpy"
    return f"compiled-{variant}" + ("+loop" if _native_loop(dtype) is not None else "")


def _class_key(B: int, N: int, M: int, K: int, dt: torch.dtype, kdt: torch.dtype, threads: int) -> tuple:
    """A calibration decision's key: power-of-two buckets of the shape, the dtypes, the threads and
    the paths available when it is made (a decision taken without the compiled kernel is not reused
    by a process that has it, nor the other way round)."""
    return (str(dt), str(kdt), _bucket(B), _bucket(N), _bucket(M), min(_bucket(K), 17), threads, available_paths(dt))


#: the largest chunk a calibration can choose (rows of the bank per step of the loop)
MAX_CHUNK = 1 << 24


def _parse_decision(k: str, v) -> tuple[tuple, tuple] | None:
    """A cache entry as ``(key, (path, chunk, variant))``, or None where anything in it is not what
    a calibration writes (a hand-edited or corrupted file; such entries are recalibrated): chunk
    0 or negative crashed every retrieval of its class."""
    try:
        key = tuple(json.loads(k))
    except (ValueError, TypeError):
        return None
    if (len(key) != 8 or not all(isinstance(x, str) for x in key[:2] + key[7:])
            or not all(type(x) is int and 0 <= x <= 64 for x in key[2:6]) or type(key[6]) is not int or key[6] < 1):
        return None
    if not isinstance(v, dict) or v.get("available") != key[7]:
        return None
    path, chunk, variant = v.get("path"), v.get("chunk"), v.get("variant")
    if path == "torch":
        ok = chunk == 0 and type(chunk) is int and variant == ""
    elif path == "numpy":
        allowed = ("",) + (VARIANTS if key[7].endswith("+loop") else ())
        ok = type(chunk) is int and 1 <= chunk <= MAX_CHUNK and variant in allowed
    else:
        ok = False
    return (key, (path, chunk, variant)) if ok else None


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one, else what ``platform`` says)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


@functools.lru_cache(maxsize=None)
def _machine_id() -> str:
    """What every timing depends on: the CPU (its name and its instruction-set flags), the cores,
    and the versions of Python, torch, numpy and numpy's BLAS."""
    blas = ",".join(f"{c.internal_api}-{c.version}" for c in _blas_controllers())
    raw = "|".join([cpu_model(), isa_signature(), str(os.cpu_count()), platform.python_version(),
                    torch.__version__, np.__version__, blas])
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def cache_path() -> str:
    """Calibration cache file: ``$ASSOCMEM_CACHE_DIR`` or ``$XDG_CACHE_HOME/assocmem`` (default
    ``~/.cache/assocmem``), one JSON file per machine / torch / numpy / BLAS combination."""
    base = os.environ.get("ASSOCMEM_CACHE_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "assocmem")
    return os.path.join(base, f"kernels-{_machine_id()}.json")


def _read_disk(path: str) -> dict:
    """The valid decisions of the cache file at ``path`` (none if it is missing, unreadable or of
    another format); entries that fail :func:`_parse_decision` are left out."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("decisions"), dict):
        return {}  # decided by another kernel or calibration procedure: decide again
    out = {}
    for k, v in data["decisions"].items():
        parsed = _parse_decision(k, v)
        if parsed is not None:
            out[parsed[0]] = parsed[1]
    return out


def _load_disk() -> None:
    global _disk_loaded
    _disk_loaded = True
    for key, d in _read_disk(cache_path()).items():
        _decisions.setdefault(key, d)


def _save_disk(new: dict) -> None:
    """Merge ``new`` decisions into the cache file under its lock (other processes may have added
    theirs since this one read it) and write it atomically."""
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with file_lock(path + ".lock"):
            merged = _read_disk(path)
            merged.update(new)
            data = {"format": CACHE_FORMAT, "machine": _machine_id(), "cpu": cpu_model(),
                    "cpu_isa": isa_signature(), "torch": torch.__version__, "numpy": np.__version__,
                    "decisions": {json.dumps(list(k)): {"path": p, "chunk": c, "variant": v, "available": k[7]}
                                  for k, (p, c, v) in merged.items()}}
            atomic_write_bytes(path, json.dumps(data, indent=0).encode())
    except OSError:
        pass  # a read-only home: the decision still holds for this process


def clear_cache(disk: bool = False) -> None:
    """Forget calibration decisions (in memory; and the cache file when ``disk``)."""
    global _disk_loaded
    with _lock:
        _decisions.clear()
        _disk_loaded = False
        if disk:
            try:
                os.unlink(cache_path())
            except OSError:
                pass


@functools.lru_cache(maxsize=None)
def _l2_bytes() -> int:
    """One core's L2 cache (Linux sysfs), 1 MiB where it cannot be read."""
    try:
        for idx in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            d = os.path.join("/sys/devices/system/cpu/cpu0/cache", idx)
            with open(os.path.join(d, "level")) as fh:
                if fh.read().strip() != "2":
                    continue
            with open(os.path.join(d, "size")) as fh:
                size = fh.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            return int(size.rstrip("KMB")) * mult
    except (OSError, ValueError):
        pass
    return 1 << 20


def _chunk_candidates(B: int, N: int, M: int, K: int) -> list[int]:
    """Chunk sizes from the one whose working set (a chunk of the bank's keys and values and its
    B x chunk scores, float32) fills half an L2 cache, up to eight times that: the second product
    then reads the chunk from cache (measured best: 128-256 rows at B = 64, N = 1024; 512-1024 at
    B = 256, N = 256, on a 2 MiB L2)."""
    row = (B + N + M) * 4
    c0 = 1 << max(6, min(12, (_l2_bytes() // 2 // max(row, 1)).bit_length() - 1))
    cands = [c0, 2 * c0, 4 * c0, 8 * c0]
    small = [x for x in cands if x < K]
    return small or [min(cands)]


def _default_chunk(B: int, N: int, M: int, K: int) -> int:
    c = _chunk_candidates(B, N, M, K)
    return c[min(1, len(c) - 1)]


def best_plan(B: int, N: int, M: int, K: int, dt: torch.dtype = torch.float32,
              kdt: torch.dtype | None = None) -> tuple[int, str | None]:
    """``(chunk, variant)`` for the numpy kernel on this problem: the calibrated ones when
    calibration chose the kernel for this shape class (mode ``"auto"``), else the defaults
    (variant None: :func:`_default_variant`)."""
    kdt = dt if kdt is None else kdt
    if _mode == "auto" and B * K * (N + M) >= 2 * SMALL_WORK:
        path, chunk, variant = decide(B, N, K, M, dt, kdt)
        if path == "numpy":
            return chunk, variant
    return _default_chunk(B, N, M, K), None


def _time_min(fn, rounds: int) -> float:
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(B: int, N: int, K: int, M: int | None = None, dtype: torch.dtype = torch.float32,
              kdtype: torch.dtype | None = None, threads: int | None = None, rounds: int = 5,
              save: bool = True) -> tuple[str, int, str]:
    """Time plain torch against the chunked kernel on a problem of this shape class: first its
    variants (:func:`_variants`: which BLAS, which score layout) at the default chunk size, then the
    best variant at the other chunk sizes; each kernel call paired with the plain-torch calls
    around it (robust to other load on the machine). Stores and returns the decision
    ``(path, chunk, variant)``."""
    M = N if M is None else M
    kdtype = dtype if kdtype is None else kdtype
    threads = kernel_threads() if threads is None else threads
    key = _class_key(B, N, M, K, dtype, kdtype, threads)
    # a proxy bank: the real row count up to ~2 GFLOP of work per trial (big enough that the bank
    # does not sit in a cache the real one would not fit) and 16 MiB of plain torch's B x K scores
    # (larger score blocks only add page faults to every torch call: 3.6 s of calibration at
    # B = 256, N = 64 with 64 MiB)
    cands_c = _chunk_candidates(B, N, M, K)
    Kp = int(min(K, max(2 * threads * max(cands_c), min(2 ** 30 // max(1, B * (N + M) // 2), 2 ** 22 // max(1, B)))))
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, N, generator=g, dtype=dtype) / math.sqrt(N)
    keys = (torch.randn(Kp, N, generator=g, dtype=torch.float32) / math.sqrt(N)).to(kdtype)
    values = None if M == N else torch.randn(Kp, M, generator=g, dtype=torch.float32).to(kdtype)
    qs = q.numpy()
    kn, bf16 = _np_view(keys)
    vn = None if values is None else _np_view(values)[0]

    def torch_path():
        kk = keys if kdtype == dtype else keys.to(dtype)
        vv = kk if values is None else (values if kdtype == dtype else values.to(dtype))
        return torch.softmax(q @ kk.T, dim=-1) @ vv

    c_def = _default_chunk(B, N, M, Kp)

    def candidate(c, v):
        return lambda: retrieve_numpy(qs, kn, vn, c, threads, bf16, variant=v)

    t0 = time.perf_counter()
    torch_path()  # warm-up (allocations, thread start)
    t0 = time.perf_counter() - t0
    variants = _variants(dtype, kdtype, B)
    chunks = _chunk_candidates(B, N, M, Kp)
    # two stages: the variant (BLAS and score layout) at the default chunk, then the chunk for it
    n_all = len(variants) + sum(c != c_def for c in chunks)  # candidates in both stages
    stage1 = {("numpy", c_def, v): candidate(c_def, v) for v in variants}
    score = _paired_scores(stage1, torch_path, rounds, t0, n_all)
    best_v = min(score, key=score.get)[2]
    stage2 = {("numpy", c, best_v): candidate(c, best_v) for c in chunks if c != c_def}
    if stage2:
        score.update(_paired_scores(stage2, torch_path, rounds, t0, n_all))
    kernel = min(score, key=score.get)
    choice = kernel if score[kernel] < KERNEL_MARGIN else ("torch", 0, "")
    with _lock:
        _decisions[key] = choice
    if save:
        _save_disk({key: choice})
    return choice


def _paired_scores(kernels: dict, torch_path, rounds: int, t_torch: float, n_candidates: int) -> dict:
    """Each kernel candidate's median time over plain torch's, timed in pairs (see :func:`calibrate`)."""
    # a round costs about 4 calls per candidate: big proxies get fewer rounds (at least 3)
    rounds = max(min(rounds, 3), min(rounds, int(3.0 / (4 * n_candidates * max(t_torch, 1e-6)))))
    for fn in kernels.values():
        fn()
    # Paired timings: every kernel candidate runs between two plain-torch calls and is scored by
    # its time over theirs, so a machine that slows down or speeds up during calibration (other
    # jobs, frequency changes) moves both sides of each ratio alike; the median ratio over the
    # rounds decides. The best of several candidates is biased low against the single torch one,
    # so the kernel must win by KERNEL_MARGIN, otherwise plain torch (no extra threads) stays.
    # Each timed call follows an untimed call of the same function: the steady state of a loop of
    # retrievals (right after a torch call, torch's OpenMP workers still spin and slow the kernel's
    # threads by up to 20 %, a state that a recall loop never sees).
    def steady(fn):
        fn()
        return _time_min(fn, 1)

    ratios: dict = {k: [] for k in kernels}
    before = steady(torch_path)
    for _ in range(rounds):
        for k, fn in kernels.items():
            t = steady(fn)
            after = steady(torch_path)
            ratios[k].append(2 * t / (before + after))
            before = after
    return {k: float(np.median(v)) for k, v in ratios.items()}


def decide(B: int, N: int, K: int, M: int, dtype: torch.dtype, kdtype: torch.dtype) -> tuple[str, int, str]:
    """The path for this problem: ``("torch", 0, "")`` or ``("numpy", chunk, variant)``; calibrates
    once per class."""
    threads = kernel_threads()
    key = _class_key(B, N, M, K, dtype, kdtype, threads)
    d = _decisions.get(key)
    if d is not None:
        return d
    if not _disk_loaded:
        with _lock:
            if not _disk_loaded:
                _load_disk()
        d = _decisions.get(key)
        if d is not None:
            return d
    return calibrate(B, N, K, M, dtype, kdtype, threads)


def _np_view(t: torch.Tensor) -> tuple[np.ndarray, bool]:
    """Zero-copy numpy view of a CPU tensor; bfloat16 comes back as its uint16 bit pattern."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), True
    return t.numpy(), False


# ---------------------------------------------------------------------------------------------------
# the dispatcher used by assocmem.functional.retrieve
# ---------------------------------------------------------------------------------------------------
def check_beta(beta) -> float:
    """``beta`` as a Python float: a real finite number (int, float, numpy scalar) or a one-element
    real tensor (0-d); a clear ``TypeError`` / ``ValueError`` naming ``beta`` otherwise (a str, a
    bool, a complex number, NaN or an infinity never reaches the compiled code)."""
    if isinstance(beta, torch.Tensor):
        if beta.numel() != 1 or beta.dtype.is_complex or beta.dtype is torch.bool:
            raise TypeError(f"beta: got {describe(beta)}; expected a real number or a 0-d real tensor")
        v = float(beta.detach())
    elif isinstance(beta, Real) and not isinstance(beta, (bool, np.bool_)):
        v = float(beta)
    else:
        raise TypeError(f"beta: got {describe(beta)}; expected a real number or a 0-d real tensor")
    if not math.isfinite(v):
        raise ValueError(f"beta: got {v!r}; expected a finite real number")
    return v


def _tiny(query, keys, values, beta, return_lse=False):
    """The whole update for a tiny problem, unchunked, in the calling thread: one compiled call
    where the helper is built (~10 us at N = 64, K = 1,000, B = 1), else numpy."""
    if type(beta) is not float or not math.isfinite(beta):
        beta = check_beta(beta)
    small = _native_get("small", query.dtype)
    if small is not None:
        if not query.is_contiguous():
            query = query.contiguous()
        vals = keys if values is None else values
        B, N = query.shape
        K, M = vals.shape
        out = torch.empty(B, M, dtype=query.dtype)
        lse = torch.empty(B, dtype=query.dtype) if return_lse else None
        small(query.data_ptr(), keys.data_ptr(), vals.data_ptr(), B, N, M, K, beta, out.data_ptr(),
              0 if lse is None else lse.data_ptr())
        return (out, lse) if return_lse else out
    kn = keys.numpy()
    s = (query.numpy() * beta) @ kn.T
    m = s.max(axis=1, keepdims=True)
    s -= m
    np.exp(s, out=s)
    out = s @ (kn if values is None else values.numpy())
    l = s.sum(axis=1, keepdims=True)
    out /= l
    if return_lse:
        return torch.from_numpy(out), torch.from_numpy((m + np.log(l))[:, 0])
    return torch.from_numpy(out)


def try_retrieve(query, keys, values, beta, mask, return_lse: bool = False):
    """``softmax(beta q k^T) v`` by the fastest path for this shape class, or ``None`` when the
    kernel does not apply (masks, batched keys, non-CPU tensors, anything needing gradients,
    non-contiguous banks, small problems) and the caller should run plain torch. With
    ``return_lse`` returns ``(states, logsumexp(beta q k^T))``, the second at no extra cost."""
    # cheapest rejections first: this runs on every retrieval, tiny ones included
    if mask is not None or _mode == "torch" or type(query) is not _Tensor or type(keys) is not _Tensor:
        return None
    dt = query.dtype
    kdt = keys.dtype
    if ((dt is not _F32 and dt is not _F64) or (kdt is not dt and not (dt is _F32 and kdt in _LOW))
            or query.ndim != 2 or keys.ndim != 2 or not query.is_cpu or not keys.is_cpu):
        return None
    if values is not None and (type(values) is not _Tensor or values.ndim != 2 or values.dtype is not kdt
                               or not values.is_cpu or values.shape[0] != keys.shape[0]
                               or not values.is_contiguous()):
        return None
    if (query.requires_grad or keys.requires_grad or (values is not None and values.requires_grad)
            or (isinstance(beta, _Tensor) and beta.requires_grad)) and torch.is_grad_enabled():
        return None
    if type(beta) is not float:
        if isinstance(beta, torch.Tensor) and (beta.numel() != 1 or not beta.is_cpu):
            return None  # a per-query beta or one on another device: plain torch broadcasts it
        beta = check_beta(beta)
    elif not math.isfinite(beta):
        beta = check_beta(beta)  # raises
    if query.requires_grad:  # only under no_grad: .numpy() refuses tensors that require grad
        query = query.detach()
    if keys.requires_grad:
        keys = keys.detach()
    if values is not None and values.requires_grad:
        values = values.detach()
    B, N = query.shape
    K = keys.shape[0]
    if keys.shape[1] != N or K == 0 or B == 0 or not keys.is_contiguous():
        return None
    M = N if values is None else values.shape[1]
    work = B * K * (N + M)
    if _mode != "numpy" and work < 2 * SMALL_WORK:
        if work > TINY_WORK or kdt != dt:
            return None
        return _tiny(query, keys, values, beta, return_lse)
    if _mode == "auto":
        path, chunk, variant = decide(B, N, K, M, dt, kdt)
    else:
        path, chunk, variant = "numpy", _default_chunk(B, N, M, K), None
    if path != "numpy":
        return None
    qs = np.multiply(query.numpy(), beta, dtype=_NP_DTYPES[dt])
    kn, bf16 = _np_view(keys)
    vn = None if values is None else _np_view(values)[0]
    if return_lse:
        m, l, acc = retrieve_numpy(qs, kn, vn, chunk, kernel_threads(), bf16, normalise=False, variant=variant)
        lse = np.log(l)
        lse += m
        return torch.from_numpy(finish(m, l, acc)), torch.from_numpy(lse)
    out = retrieve_numpy(qs, kn, vn, chunk, kernel_threads(), bf16, variant=variant)
    return torch.from_numpy(out)


# -- the recall loops' per-step reductions ------------------------------------------------------------
# They go through numpy on CPU: a torch elementwise op on B x N >= 32k elements runs a parallel region,
# after which torch's OpenMP workers spin for ~6 ms and take a core from the retrieval kernel's next
# call (measured: recall went from 0.96x to 1.3x steps x one step; with OMP_WAIT_POLICY=PASSIVE set
# before torch loads it is 0.96x either way).
def numpy_view(t: torch.Tensor):
    """Zero-copy numpy view of a CPU float32/float64 tensor that needs no graph, else None."""
    if t.is_cpu and (t.dtype is _F32 or t.dtype is _F64) and not (t.requires_grad and torch.is_grad_enabled()):
        return t.detach().numpy()
    return None


def max_abs_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """max_j |new - old| per row, shape (B,)."""
    a, b = numpy_view(new), numpy_view(old)
    if a is not None and b is not None and a.size:
        return torch.from_numpy(np.abs(a - b).max(axis=1))
    return (new - old).abs().amax(-1) if new.numel() else new.new_zeros(new.shape[0])


def half_sq_norm(x: torch.Tensor) -> torch.Tensor:
    """x.x / 2 per row, shape (B,)."""
    a = numpy_view(x)
    if a is not None and a.ndim == 2:
        return torch.from_numpy(0.5 * np.einsum("ij,ij->i", a, a))
    return 0.5 * (x * x).sum(-1)
