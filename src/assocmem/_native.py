"""The retrieval kernel's compiled part, Model B retrieval (KH 2021 eq. 16) as an online log-sum-exp
over chunks of the bank (source: ``csrc/retrieval.c``): built at first use with setuptools' compiler
classes for the instruction-set variant the CPU's flags allow, cached on disk with its size and
SHA-256, verified before every load and self-tested against numpy before anything relies on it.

Where it cannot be had (``ASSOCMEM_NATIVE=0``, no compiler, a failed build or self-test) :func:`load`
returns None, after one warning per process for a failure, and :mod:`assocmem._kernels` does the same
work with numpy.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings

import numpy as np

from ._io import atomic_write_bytes, atomic_replace, file_lock, sha256_file

__all__ = ["load", "Library", "cpu_flags", "isa_signature", "select_variant", "switched_off", "build_tag",
           "cached_paths", "NativeBuildWarning", "COMPILER_ENV", "SOURCE_PATH", "VARIANTS", "FLAGS"]

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "retrieval.c")
#: version of the cache's file layout and sidecar: files of another format are rebuilt
FORMAT = 1
# -fopenmp-simd lets the pragmas vectorise the generic variant's loops with libmvec's exp; the sum
# is reassociated (vector lanes), so its last bits differ from numpy's pairwise sum, not its
# accuracy. -g0: no debug sections (a smaller file to hash before each load).
FLAGS = ("-O3", "-g0", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math")
#: variant -> (CPU flags it needs, as /proc/cpuinfo names them; compiler flags), widest first
VARIANTS = {
    "avx512": (("avx512f", "avx2", "fma"), ("-mavx512f", "-mavx2", "-mfma")),
    "avx2": (("avx2", "fma"), ("-mavx2", "-mfma")),
    "generic": ((), ()),
}
# the CPU flags that name instruction sets (what a build or a timing can depend on)
_ISA_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "bmi", "amx", "popcnt", "asimd", "sve", "neon", "fp", "vsx",
                 "altivec", "rvv")
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


class NativeBuildWarning(RuntimeWarning):
    """The compiled kernel could not be built, loaded or verified; retrieval runs on numpy."""


class BuildError(RuntimeError):
    """A compile or link failed; the message carries the compiler's output."""


# ---------------------------------------------------------------------------------------------------
# what a build depends on
# ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags as the OS reports them (Linux ``/proc/cpuinfo``: ``flags`` on x86,
    ``Features`` on ARM), empty where there is no such file. The kernel's variant and every cache key
    use these, not the CPU's name: two CPUs of one name may differ (a hypervisor can hide AVX-512)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def isa_signature(flags=None) -> str:
    """The instruction-set flags among ``flags`` (default :func:`cpu_flags`), sorted and joined:
    what decides which variant can run and how fast each path is."""
    flags = cpu_flags() if flags is None else flags
    isa = sorted(f for f in flags if f.startswith(_ISA_PREFIXES))
    return ",".join(isa) or platform.machine() or "unknown"


def select_variant(flags=None) -> str:
    """The widest variant whose instruction sets the CPU has (``generic`` off x86 or without flags)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if _X86:
        for name, (need, _) in VARIANTS.items():
            if set(need) <= flags:
                return name
    return "generic"


def switched_off() -> bool:
    """``ASSOCMEM_NATIVE=0`` in the environment: the compiled kernel is not built or used."""
    return os.environ.get("ASSOCMEM_NATIVE", "1").strip() == "0"


COMPILER_ENV = ("CC", "CFLAGS", "CPPFLAGS", "LDSHARED", "LDFLAGS", "ARCHFLAGS", "AR")


def _compiler_config() -> list:
    """What setuptools' ``customize_compiler`` builds its command lines from: Python's build
    configuration and the environment variables that override it."""
    cfg = sysconfig.get_config_vars("CC", "CFLAGS", "CCSHARED", "LDSHARED", "SHLIB_SUFFIX")
    return [str(v) for v in cfg] + [f"{k}={os.environ.get(k, '')}" for k in COMPILER_ENV]


@functools.lru_cache(maxsize=8)
def _source_digest(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


def build_tag(variant: str) -> str:
    """Hash of everything a build of ``variant`` depends on: the source, the flags (the variant's
    instruction sets included), the compiler's configuration, the platform and the cache format."""
    st = os.stat(SOURCE_PATH)
    need, vflags = VARIANTS[variant]
    parts = [str(FORMAT), _source_digest(SOURCE_PATH, st.st_mtime_ns, st.st_size), variant, *need, *FLAGS,
             *vflags, *_compiler_config(), sys.platform, platform.machine()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def cached_paths(directory: str, variant: str, tag: str | None = None) -> tuple[str, str, str]:
    """``(library, sidecar, lock)`` of a variant's build in ``directory``."""
    stem = os.path.join(directory, f"native-{variant}-{tag or build_tag(variant)}")
    return stem + ".so", stem + ".json", stem + ".lock"


# ---------------------------------------------------------------------------------------------------
# build, verify
# ---------------------------------------------------------------------------------------------------
def _verified(so: str, sidecar: str, tag: str) -> bool:
    """The library at ``so`` is the one its sidecar describes: same tag, size and SHA-256 (a file
    cut short by a crash, or altered, is not loaded: mapping a truncated library kills the process
    with SIGBUS when the missing pages are touched)."""
    try:
        with open(sidecar) as fh:
            meta = json.load(fh)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("tag") != tag:
            return False
        size, digest = meta.get("size"), meta.get("sha256")
        if type(size) is not int or not isinstance(digest, str):
            return False
        return os.stat(so).st_size == size and sha256_file(so) == digest
    except (OSError, ValueError):
        return False


def _run(cmd, **kwargs) -> None:
    """Run one compiler or linker command with its output captured; :class:`BuildError` with that
    output when it fails (setuptools' own runner lets it go to the terminal, and its error names
    only the exit status)."""
    cmd = [os.fspath(c) for c in cmd]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"{' '.join(cmd)}: {e}") from None
    if r.returncode != 0:
        out = ((r.stderr or "") + (r.stdout or "")).strip()
        raise BuildError(f"{' '.join(cmd)} exited with status {r.returncode}:\n{out}")


def _compiler():
    """setuptools' compiler for this Python (``customize_compiler``: Python's build configuration,
    overridden by CC, CFLAGS, LDSHARED...), whose commands run through :func:`_run`."""
    import setuptools  # noqa: F401 -- provides ``distutils`` on Python >= 3.12

    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    cc.spawn = cc.call = _run  # ``call`` in recent setuptools, ``spawn`` before
    return cc


_BUILD_PREFIX = ".build-native."


def _remove_stale_builds(directory: str) -> None:
    """Remove build directories left by builders that were killed (their names carry the pid)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid = name[len(_BUILD_PREFIX):].split(".", 1)[0]
        if not name.startswith(_BUILD_PREFIX) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive: another process building another variant
        except ProcessLookupError:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        except OSError:
            continue


def _build(directory: str, variant: str, tag: str) -> None:
    """Compile and link ``variant`` in a private temporary directory, then move the library into
    place atomically (written, fsynced, renamed; directory fsynced) and write its sidecar (size,
    SHA-256, flags) the same way. Raises :class:`BuildError` with the compiler's output."""
    so, sidecar, _ = cached_paths(directory, variant, tag)
    need, vflags = VARIANTS[variant]
    _remove_stale_builds(directory)
    work = tempfile.mkdtemp(prefix=f"{_BUILD_PREFIX}{os.getpid()}.", dir=directory)
    try:
        try:
            cc = _compiler()
            objs = cc.compile([SOURCE_PATH], output_dir=work, extra_postargs=[*FLAGS, *vflags, "-fPIC"])
            out = os.path.join(work, "retrieval.so")
            cc.link_shared_object(objs, out, libraries=["m"])
        except BuildError:
            raise
        except ImportError as e:
            raise BuildError(f"setuptools is needed to build it ({e})") from None
        except Exception as e:  # CompileError, LinkError, a platform setuptools has no compiler class for
            raise BuildError(f"{type(e).__name__}: {e}") from None
        atomic_replace(so, lambda tmp: shutil.copyfile(out, tmp))
        meta = {"format": FORMAT, "tag": tag, "variant": variant, "cpu_flags_required": list(need),
                "flags": [*FLAGS, *vflags], "compiler": " ".join(map(str, getattr(cc, "compiler_so", []))),
                "size": os.stat(so).st_size, "sha256": sha256_file(so), "source_sha256": sha256_file(SOURCE_PATH)}
        atomic_write_bytes(sidecar, json.dumps(meta, indent=1).encode())
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# the loaded library
# ---------------------------------------------------------------------------------------------------
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_tls = threading.local()


class LoadError(RuntimeError):
    """The library loaded but is not the one expected (variant, symbols) or fails its self-test."""


class Library:
    """A verified, loaded and self-tested build: ``online_exp(dtype)``, ``small(dtype)`` and
    ``chunk_loop(dtype, blas_path)`` give its entry points as Python callables."""

    def __init__(self, path: str, variant: str):
        self.path, self.variant = path, variant
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise LoadError(f"cannot load {path}: {e}") from None
        self._lib = lib
        try:
            lib.assocmem_native_variant.restype = ctypes.c_char_p
            got = lib.assocmem_native_variant().decode()
            self._steps, self._loops_raw, self._small = {}, {}, {}
            for dt, x, ct in ((_F32, "f32", ctypes.c_float), (_F64, "f64", ctypes.c_double)):
                f = getattr(lib, f"online_exp_{x}")
                f.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_void_p]
                f.restype = None
                self._steps[dt] = f
                f = getattr(lib, f"chunk_loop_{x}")
                f.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_long] * 6 + [ctypes.c_void_p] * 7 + [ctypes.c_int]
                              + [ctypes.c_void_p] * 3)
                f.restype = None
                self._loops_raw[dt] = f
                f = getattr(lib, f"small_{x}")
                f.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 4 + [ct] + [ctypes.c_void_p] * 2
                f.restype = ctypes.c_int
                self._small[dt] = _small_wrapper(f)
        except AttributeError as e:
            raise LoadError(f"{path} lacks an entry point ({e})") from None
        if got != variant:
            raise LoadError(f"{path} was compiled as {got!r}, expected {variant!r}")
        for dt in (_F32, _F64):
            if not _step_checks(self.online_exp(dt), dt):
                raise LoadError(f"{path}: the {dt} step disagrees with numpy")
            if not _small_checks(self._small[dt], dt):
                raise LoadError(f"{path}: the {dt} small retrieval disagrees with a float64 softmax")
        self._loops: dict = {}

    def online_exp(self, dtype):
        """``f(s, m, alpha, rowsum)``: the per-chunk step in place on C-contiguous-row arrays of
        ``dtype``: ``m <- max(m, max_j s)``, ``s <- e^(s - m_new)``, ``alpha <- e^(m_old - m_new)``
        (0 where ``m_old = -inf``), ``rowsum <- sum_j s``."""
        f = self._steps.get(np.dtype(dtype))
        if f is None:
            return None
        return lambda s, m, alpha, rowsum: _call(f, s, m, alpha, rowsum)

    def small(self, dtype):
        """``f(q, keys, values, B, N, M, K, beta, out, lse)``: a whole retrieval of a small problem
        in one compiled call without BLAS, on data pointers of C-contiguous arrays of ``dtype``
        (``lse`` may be 0: not computed)."""
        return self._small.get(np.dtype(dtype))

    def chunk_loop(self, dtype, blas_path: str | None):
        """``f(qs, keys, values, lo, hi, chunk, m, l, acc, qsT=None)``: the chunk loop over rows lo:hi
        in one compiled call, the products through the cblas ``?gemm`` of the BLAS library at
        ``blas_path`` (numpy's own); ``values`` may be ``keys``; ``acc`` of width 0 computes the
        log-sum-exp only; ``qsT`` (the queries transposed, C-contiguous) selects the transposed score
        layout. ``m``, ``l``, ``acc`` are written. None where the library has no cblas ``?gemm`` or
        the loop fails its self-test against a float64 softmax."""
        dt = np.dtype(dtype)
        key = (dt, blas_path)
        if key in self._loops:
            return self._loops[key]
        fn = None
        raw = self._loops_raw.get(dt)
        sym = _gemm_symbol(blas_path, dt) if blas_path and raw is not None else None
        if sym is not None:
            gemm, ilp = sym

            def fn(qs, keys, values, lo, hi, chunk, m, l, acc, qsT=None, _raw=raw):
                B = qs.shape[0]
                ws = getattr(_tls, "ws", None)
                if ws is None or ws[0].size < B * chunk or ws[1].size < B or ws[0].dtype != dt:
                    ws = _tls.ws = (np.empty(B * chunk, dt), np.empty(B, dt), np.empty(B, dt), np.empty(B, dt),
                                    np.empty(B, np.intc))
                s, alpha, rowsum, mx, bad = ws  # per-thread scratch: scores of a chunk, alpha, row sums, ...
                _raw(qs.ctypes.data, keys.ctypes.data, values.ctypes.data, B, qs.shape[1], acc.shape[1], lo, hi,
                     chunk, s.ctypes.data, m.ctypes.data, l.ctypes.data, acc.ctypes.data, alpha.ctypes.data,
                     rowsum.ctypes.data, gemm, ilp, None if qsT is None else qsT.ctypes.data, mx.ctypes.data,
                     bad.ctypes.data)

            if not _loop_checks(fn, dt):
                fn = None
        self._loops[key] = fn
        return fn


def _call(f, s: np.ndarray, m: np.ndarray, alpha: np.ndarray, rowsum: np.ndarray) -> None:
    f(s.ctypes.data, s.shape[0], s.shape[1], s.strides[0] // s.itemsize, m.ctypes.data, alpha.ctypes.data,
      rowsum.ctypes.data)


def _small_wrapper(f):
    """``small(q, keys, values, B, N, M, K, beta, out, lse)`` on data pointers (``lse`` may be 0);
    the call costs ~1 us, so callers pass tensors' ``data_ptr()`` (numpy's ``.ctypes.data`` costs
    1.7 us per array). ``beta`` must be a Python float (``assocmem._kernels.check_beta`` makes one).
    Raises MemoryError when the score buffer cannot be had."""

    def small(q, keys, values, B, N, M, K, beta, out, lse):
        if type(beta) is not float:
            raise TypeError(f"beta: got {type(beta).__name__} {beta!r}; expected a float")
        if f(q, keys, values, B, N, M, K, beta, out, lse):
            raise MemoryError(f"assocmem: no memory for {K} scores")

    return small


def _gemm_symbol(blas_path: str, dtype) -> tuple[int, int] | None:
    """``(address of cblas_?gemm, 1 for its ILP64 form with 64-bit integers else 0)`` in the BLAS
    library at ``blas_path``, or None. The documented CBLAS interface, under the names numpy's wheels
    (``scipy_cblas_?gemm64_``), ILP64 builds (``cblas_?gemm64_``) and plain builds give it."""
    x = "s" if np.dtype(dtype) == _F32 else "d"
    try:
        lib = ctypes.CDLL(blas_path)
    except OSError:
        return None
    for name in (f"scipy_cblas_{x}gemm64_", f"cblas_{x}gemm64_", f"cblas_{x}gemm"):
        fn = getattr(lib, name, None)
        if fn is not None:
            return ctypes.cast(fn, ctypes.c_void_p).value, int(name.endswith("64_"))
    return None


# ---------------------------------------------------------------------------------------------------
# self-tests (run on every load, before anything relies on the library)
# ---------------------------------------------------------------------------------------------------
def _step_checks(step, dt) -> bool:
    """The step against numpy on rows of 37 scores over the underflow range, previous maxima -inf,
    below and above the chunk's; results under 1.5x the smallest normal number may come back 0."""
    s = np.linspace(-30, 5, 37, dtype=dt).reshape(1, 37).repeat(3, axis=0)
    s[1] -= 100
    m = np.array([-np.inf, 0.0, 10.0], dtype=dt)
    mn = np.maximum(m, s.max(axis=1))
    want_s, want_alpha = np.exp(s - mn[:, None]), np.exp(m - mn)
    alpha, rowsum = np.empty(3, dt), np.empty(3, dt)
    step(s, m, alpha, rowsum)
    tiny = 1.5 * np.finfo(dt).tiny
    return bool(np.array_equal(m, mn) and np.allclose(alpha, want_alpha, rtol=1e-6, atol=0)
                and np.allclose(s, want_s, rtol=1e-5, atol=tiny)
                and np.allclose(rowsum, want_s.sum(1), rtol=1e-5, atol=s.shape[1] * tiny))


def _small_checks(small, dtype) -> bool:
    """The small-problem retrieval against a float64 softmax (separate values and values = keys)."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 9)).astype(dtype)
    keys = rng.standard_normal((21, 9)).astype(dtype)
    vals = rng.standard_normal((21, 4)).astype(dtype)
    tol = 1e-5 if np.dtype(dtype) == _F32 else 1e-12
    sc = 1.5 * q.astype(np.float64) @ keys.astype(np.float64).T
    p = np.exp(sc - sc.max(1, keepdims=True))
    lse = np.log(p.sum(1)) + sc.max(1)
    p /= p.sum(1, keepdims=True)
    for v in (vals, keys):
        out, got_lse = np.empty((3, v.shape[1]), dtype), np.empty(3, dtype)
        small(q.ctypes.data, keys.ctypes.data, v.ctypes.data, 3, 9, v.shape[1], 21, 1.5, out.ctypes.data,
              got_lse.ctypes.data)
        if not (np.allclose(got_lse, lse, rtol=tol, atol=0) and np.allclose(out, p @ v, rtol=tol, atol=tol)):
            return False
    return True


def _loop_checks(loop, dtype) -> bool:
    """The chunk loop against a float64 softmax on a small problem (three chunks, the last short;
    separate values, values = keys, and the log-sum-exp only), in both score layouts (11 queries:
    a whole vector of eight and a tail in the transposed one)."""
    rng = np.random.default_rng(0)
    qs = rng.standard_normal((11, 5)).astype(dtype) * 4
    keys = rng.standard_normal((40, 5)).astype(dtype)
    vals = rng.standard_normal((40, 3)).astype(dtype)
    tol = 1e-5 if np.dtype(dtype) == _F32 else 1e-12
    sc = qs.astype(np.float64) @ keys.astype(np.float64).T
    p = np.exp(sc - sc.max(1, keepdims=True))
    lse = np.log(p.sum(1)) + sc.max(1)
    p /= p.sum(1, keepdims=True)
    qsT = np.ascontiguousarray(qs.T)
    for v, M, t in ((vals, 3, None), (keys, 5, None), (keys, 0, None), (vals, 3, qsT), (keys, 5, qsT), (keys, 0, qsT)):
        m, l, acc = np.empty(11, dtype), np.empty(11, dtype), np.empty((11, M), dtype)
        loop(qs, keys, v, 0, 40, 16, m, l, acc, t)
        want = p @ v[:, :M].astype(np.float64)
        if not (np.allclose(m + np.log(l), lse, rtol=tol, atol=0)
                and (M == 0 or np.allclose(acc / l[:, None], want, rtol=tol, atol=tol))):
            return False
    return True


# ---------------------------------------------------------------------------------------------------
# the one door
# ---------------------------------------------------------------------------------------------------
_lock = threading.RLock()
_libs: dict[tuple, Library | None] = {}  # (directory, variant, tag) -> loaded library, or None: failed
_warned: set = set()


def _warn_once(key, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"assocmem: {message}; retrieval runs on numpy instead (same results, slower). Set "
                  "ASSOCMEM_NATIVE=0 to skip the compiled kernel and this warning.", NativeBuildWarning, stacklevel=3)


def load(directory: str, variant: str | None = None) -> Library | None:
    """The compiled kernel for this CPU (``variant``: default :func:`select_variant`, or the next
    narrower variant where that one fails, e.g. a compiler without AVX-512 support), built into
    ``directory`` on first use under a file lock (one build per machine, whatever the number of
    processes), verified against its sidecar before it is loaded (rebuilt when the file is cut short
    or altered) and self-tested; loaded once per process. None where ``ASSOCMEM_NATIVE=0``, or when
    the build, the verification or the self-test fails (then one :class:`NativeBuildWarning` per
    process and directory, with the compiler's output)."""
    if switched_off():
        return None
    if variant is None:  # the widest the CPU runs; a narrower one where that cannot be built
        order = list(VARIANTS)
        for v in order[order.index(select_variant()):]:
            lib = load(directory, v)
            if lib is not None:
                return lib
        return None
    if variant not in VARIANTS:
        raise ValueError(f"variant: got {variant!r}; expected one of {', '.join(map(repr, VARIANTS))}")
    try:
        tag = build_tag(variant)
    except OSError as e:  # the source file is missing from this installation
        _warn_once(("source", SOURCE_PATH), f"the compiled kernel's source {SOURCE_PATH} cannot be read ({e})")
        return None
    key = (os.path.abspath(directory), variant, tag)
    lib = _libs.get(key, False)
    if lib is not False:
        return lib
    with _lock:
        lib = _libs.get(key, False)
        if lib is not False:
            return lib
        so, sidecar, lockfile = cached_paths(directory, variant, tag)
        lib = None
        try:
            if not _verified(so, sidecar, tag):
                os.makedirs(directory, exist_ok=True)
                with file_lock(lockfile):  # another process may be building the same tag
                    if not _verified(so, sidecar, tag):
                        _build(directory, variant, tag)
            lib = Library(so, variant)
        except BuildError as e:
            _warn_once(key, f"the compiled retrieval kernel ({variant}) could not be built in {directory}:\n{e}")
        except LoadError as e:
            _warn_once(key, f"the compiled retrieval kernel ({variant}) was refused: {e}")
        except OSError as e:
            _warn_once(key, f"the compiled retrieval kernel ({variant}) cannot be cached in {directory} ({e})")
        _libs[key] = lib
        return lib
