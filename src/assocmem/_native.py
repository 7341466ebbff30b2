"""The retrieval kernel's compiled parts (KH eq. 16 as an online log-sum-exp over chunks of the
bank): the per-chunk max / exp / row-sum step (AVX2+FMA polynomial exp for float32, glibc's
vectorised libm exp otherwise) and the whole chunk loop around it with the products through numpy's
own BLAS (``cblas_?gemm``). Compiled on first use with the system C compiler and self-tested against
numpy; where that fails (no compiler, no libmvec, no cblas symbol, no writable cache) the functions
here return None and :mod:`assocmem._kernels` does the same work with numpy.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading

import numpy as np

__all__ = ["online_exp", "chunk_loop", "SOURCE", "FLAGS"]

# One row at a time: m[b] <- max(m[b], max_j s[b, j]); s[b, :] <- exp(s[b, :] - m_new);
# alpha[b] <- exp(m_old - m_new) (0 when m_old = -inf); rowsum[b] <- sum_j s[b, j]. A row whose new
# maximum is not finite (a NaN score, an overflowed +-inf) comes back all NaN, as numpy's step gives.
# Exponentials of x < LO (e^-87 = 1.6e-38 for float32, e^-708 = 3.3e-308 for float64: about the
# smallest normal numbers) are returned as exactly 0: libm's exp takes a slow path for subnormal
# results, 8-15x slower per element, and with a sharp softmax (large beta) nearly every score of a
# chunk lands there. The terms dropped are below 1.6e-38 of the row's largest term (float32).
SOURCE = r"""
#include <math.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#pragma omp declare simd notinbranch
extern float expf(float);
#pragma omp declare simd notinbranch
extern double exp(double);

#define ROW_MAX(NAME, T)                                                                  \
static T NAME(const T *r, long c, int *nan) {                                             \
    T mx = r[0];                                                                          \
    int bad = 0;                                                                          \
    _Pragma("omp simd reduction(max:mx) reduction(|:bad)")                                \
    for (long j = 0; j < c; j++) { mx = r[j] > mx ? r[j] : mx; bad |= r[j] != r[j]; }     \
    *nan = bad;                                                                           \
    return mx;                                                                            \
}
/* x = r - mn <= 0 and not NaN here; libm's exp on x >= LO, exactly 0 below */
#define ROW_EXP(NAME, T, EXP, LO)                                                         \
static T NAME(T *r, long c, T mn) {                                                       \
    T acc = 0;                                                                            \
    _Pragma("omp simd reduction(+:acc)")                                                  \
    for (long j = 0; j < c; j++) {                                                        \
        T x = r[j] - mn;                                                                  \
        T e = EXP(x > LO ? x : LO);                                                       \
        e = x >= LO ? e : (T)0;                                                           \
        r[j] = e;                                                                         \
        acc += e;                                                                         \
    }                                                                                     \
    return acc;                                                                           \
}
ROW_MAX(row_max_f64, double)
ROW_EXP(row_exp_f64, double, exp, -708.0)

#if defined(__AVX2__) && defined(__FMA__)
/* float32 with AVX2 + FMA: e^x for x <= 0 by the Cephes expf polynomial on x - n ln 2 and 2^n added
   to the exponent bits (max relative error 3e-7 against libm), 0 below -87; two vectors per step
   with their own accumulators (a single reduction chain was the bottleneck of the pragma loop) */
static inline __m256 exp8(__m256 x) {
    const __m256 magic = _mm256_set1_ps(12582912.0f); /* 1.5 * 2^23: rounds to an integer */
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
    __m256 n = _mm256_sub_ps(t, magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 z = _mm256_mul_ps(r, r);
    __m256 y = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, z, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic)), 23);
    y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), e));
    return _mm256_and_ps(y, _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ));
}
static inline float hmax8(__m256 v) {
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_max_ss(a, _mm_shuffle_ps(a, a, 1)));
}
static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ss(a, _mm_shuffle_ps(a, a, 1)));
}
static float row_max_f32(const float *r, long c, int *nan) {
    __m256 m0 = _mm256_set1_ps(r[0]), m1 = m0, u = _mm256_setzero_ps();
    long j = 0;
    for (; j + 16 <= c; j += 16) {
        __m256 a = _mm256_loadu_ps(r + j), b = _mm256_loadu_ps(r + j + 8);
        m0 = _mm256_max_ps(m0, a);
        m1 = _mm256_max_ps(m1, b);
        u = _mm256_or_ps(u, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
    }
    float mx = hmax8(_mm256_max_ps(m0, m1));
    int bad = _mm256_movemask_ps(u) != 0;
    for (; j < c; j++) { mx = r[j] > mx ? r[j] : mx; bad |= r[j] != r[j]; }
    *nan = bad;
    return mx;
}
static float row_exp_f32(float *r, long c, float mn) {
    __m256 vm = _mm256_set1_ps(mn), a0 = _mm256_setzero_ps(), a1 = a0;
    long j = 0;
    for (; j + 16 <= c; j += 16) {
        __m256 x0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(r + j), vm));
        __m256 x1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(r + j + 8), vm));
        _mm256_storeu_ps(r + j, x0);
        _mm256_storeu_ps(r + j + 8, x1);
        a0 = _mm256_add_ps(a0, x0);
        a1 = _mm256_add_ps(a1, x1);
    }
    float acc = hsum8(_mm256_add_ps(a0, a1));
    for (; j < c; j += 8) { /* the last < 16 through a padded block (-inf pads give 0) */
        float buf[8];
        long k = c - j < 8 ? c - j : 8;
        for (long i = 0; i < 8; i++) buf[i] = i < k ? r[j + i] - mn : -INFINITY;
        __m256 x = exp8(_mm256_loadu_ps(buf));
        _mm256_storeu_ps(buf, x);
        for (long i = 0; i < k; i++) { r[j + i] = buf[i]; acc += buf[i]; }
    }
    return acc;
}
#else
ROW_MAX(row_max_f32, float)
ROW_EXP(row_exp_f32, float, expf, -87.0f)
#endif

#define ONLINE_EXP(NAME, T, ROW_MAX_FN, ROW_EXP_FN, EXP)                                  \
void NAME(T *s, long B, long c, long ld, T *m, T *alpha, T *rowsum) {                     \
    for (long b = 0; b < B; b++) {                                                        \
        T *r = s + b * ld;                                                                \
        int nan;                                                                          \
        T mx = ROW_MAX_FN(r, c, &nan);                                                    \
        T mo = m[b];                                                                      \
        T mn = mo > mx ? mo : mx;                                                         \
        if (nan || mo != mo || !isfinite(mn)) {                                           \
            for (long j = 0; j < c; j++) r[j] = NAN;                                      \
            m[b] = alpha[b] = rowsum[b] = NAN;                                            \
            continue;                                                                     \
        }                                                                                 \
        T acc = ROW_EXP_FN(r, c, mn);                                                     \
        alpha[b] = (mo == -INFINITY) ? (T)0 : EXP(mo - mn);                               \
        m[b] = mn;                                                                        \
        rowsum[b] = acc;                                                                  \
    }                                                                                     \
}
ONLINE_EXP(online_exp_f32, float, row_max_f32, row_exp_f32, expf)
ONLINE_EXP(online_exp_f64, double, row_max_f64, row_exp_f64, exp)

/* The kernel's whole chunk loop over rows lo:hi of the bank (no Python, no GIL between the chunks):
   s = qs keys_c^T, the step above, acc <- alpha acc + s values_c (the BLAS accumulates: beta = 1).
   The products go through the caller's cblas ?gemm: 64-bit integers (ILP64) or 32-bit. M = 0: the
   log-sum-exp only. On return m, l (B,) and acc (B x M) hold the partial result of the rows. */
#define GEMM(T, G, ilp, tb, Mr, Nc, Kk, A, lda, Bp, ldb, beta, C, ldc)                       \
    do {                                                                                  \
        if (ilp) ((void (*)(int, int, int, long, long, long, T, const T *, long, const T *, \
                            long, T, T *, long))(G))(101, 111, tb, Mr, Nc, Kk, (T)1, A,   \
                                                     lda, Bp, ldb, beta, C, ldc);         \
        else ((void (*)(int, int, int, int, int, int, T, const T *, int, const T *, int,   \
                        T, T *, int))(G))(101, 111, tb, (int)(Mr), (int)(Nc), (int)(Kk),  \
                                          (T)1, A, (int)(lda), Bp, (int)(ldb), beta, C,   \
                                          (int)(ldc));                                    \
    } while (0)
#define CHUNK_LOOP(NAME, T, STEP)                                                          \
void NAME(const T *qs, const T *keys, const T *values, long B, long N, long M, long lo,   \
          long hi, long chunk, T *s, T *m, T *l, T *acc, T *alpha, T *rowsum, void *gemm,  \
          int ilp64) {                                                                    \
    for (long b = 0; b < B; b++) { m[b] = -INFINITY; l[b] = 0; }                          \
    for (long i = 0; i < B * M; i++) acc[i] = 0;                                          \
    for (long c0 = lo; c0 < hi; c0 += chunk) {                                            \
        long c = hi - c0 < chunk ? hi - c0 : chunk;                                       \
        const T *kc = keys + c0 * N, *vc = values + c0 * M;                               \
        GEMM(T, gemm, ilp64, 112, B, c, N, qs, N, kc, N, (T)0, s, c);                     \
        STEP(s, B, c, c, m, alpha, rowsum);                                               \
        for (long b = 0; b < B; b++) {                                                    \
            T a = alpha[b];                                                               \
            if (a != (T)1) { T *r = acc + b * M; for (long j = 0; j < M; j++) r[j] *= a; } \
            l[b] = l[b] * a + rowsum[b];                                                  \
        }                                                                                 \
        if (M) GEMM(T, gemm, ilp64, 111, B, M, c, s, c, vc, M, (T)1, acc, M);             \
    }                                                                                     \
}
CHUNK_LOOP(chunk_loop_f32, float, online_exp_f32)
CHUNK_LOOP(chunk_loop_f64, double, online_exp_f64)
"""
# -march=native: built on the machine that runs it (the file name carries the CPU model);
# -fopenmp-simd lets the pragmas above vectorise the loops with libmvec's exp; the sum is
# reassociated (vector lanes), so its last bits differ from numpy's pairwise sum, not its accuracy.
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
         "-fPIC", "-shared")

_lock = threading.Lock()
_by_place: dict[tuple, object] = {}  # (cache directory, $CC, cpu) -> {dtype: function} or None
_by_tag: dict[str, object] = {}  # build tag -> the same: one build and load per process
_tls = threading.local()
_loops: dict[tuple, object] = {}  # (place, dtype, BLAS) -> checked chunk loop or None


def _tag(cc: str, cpu: str) -> str:
    return hashlib.sha1("|".join([SOURCE, *FLAGS, cc, cpu]).encode()).hexdigest()[:16]


def _compile(directory: str, cc: str, tag: str) -> str | None:
    path = os.path.join(directory, f"native-{tag}.so")
    if os.path.exists(path):
        return path
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".native-{tag}.{os.getpid()}.so")
    src = tmp[:-3] + ".c"
    try:
        with open(src, "w") as fh:
            fh.write(SOURCE)
        r = subprocess.run([cc, *FLAGS, src, "-o", tmp, "-lm"], capture_output=True, timeout=120)
        if r.returncode != 0:
            return None
        os.replace(tmp, path)  # atomic: a concurrent builder of the same tag writes the same bytes
        return path
    finally:
        for p in (src, tmp):
            try:
                os.unlink(p)
            except OSError:
                pass


def _load(path: str) -> dict | None:
    lib = ctypes.CDLL(path)
    fns = {}
    for dt, name in ((np.float32, "online_exp_f32"), (np.float64, "online_exp_f64")):
        f = getattr(lib, name)
        f.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        f.restype = None
        fns[np.dtype(dt)] = f
    loops = {}
    for dt, name in ((np.float32, "chunk_loop_f32"), (np.float64, "chunk_loop_f64")):
        f = getattr(lib, name)
        f.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 6 + [ctypes.c_void_p] * 7 + [ctypes.c_int]
        f.restype = None
        loops[("loop", np.dtype(dt))] = f
    # a self-test against numpy before anything relies on it (a miscompiled or foreign file is refused)
    for dt, f in fns.items():
        s = np.linspace(-30, 5, 37, dtype=dt).reshape(1, 37).repeat(3, axis=0)
        s[1] -= 100
        m = np.array([-np.inf, 0.0, 10.0], dtype=dt)
        mn = np.maximum(m, s.max(axis=1))
        want_s, want_alpha = np.exp(s - mn[:, None]), np.exp(m - mn)
        alpha, rowsum = np.empty(3, dt), np.empty(3, dt)
        _call(f, s, m, alpha, rowsum)
        tiny = 1.5 * np.finfo(dt).tiny  # results below e^-87 (e^-708) come back as 0
        if not (np.array_equal(m, mn) and np.allclose(alpha, want_alpha, rtol=1e-6, atol=0)
                and np.allclose(s, want_s, rtol=1e-5, atol=tiny)
                and np.allclose(rowsum, want_s.sum(1), rtol=1e-5, atol=s.shape[1] * tiny)):
            return None
    fns.update(loops)  # checked with a BLAS in chunk_loop
    return fns


def _gemm_symbol(blas_path: str, dtype) -> tuple[int, bool] | None:
    """The address of ``cblas_?gemm`` in the BLAS library at ``blas_path`` (numpy's) and whether it
    takes 64-bit integers (the ``64_``-suffixed ILP64 builds numpy's wheels ship), or None."""
    x = "s" if np.dtype(dtype) == np.float32 else "d"
    try:
        lib = ctypes.CDLL(blas_path)
    except OSError:
        return None
    for name in (f"scipy_cblas_{x}gemm64_", f"cblas_{x}gemm64_", f"cblas_{x}gemm"):
        fn = getattr(lib, name, None)
        if fn is not None:
            return ctypes.cast(fn, ctypes.c_void_p).value, name.endswith("64_")
    return None


def _loop_checks(loop, dtype) -> bool:
    """The chunk loop against a float64 softmax on a small problem (three chunks, the last short;
    separate values, values = keys, and the log-sum-exp only)."""
    rng = np.random.default_rng(0)
    qs = rng.standard_normal((3, 5)).astype(dtype) * 4
    keys = rng.standard_normal((40, 5)).astype(dtype)
    vals = rng.standard_normal((40, 3)).astype(dtype)
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    sc = qs.astype(np.float64) @ keys.astype(np.float64).T
    p = np.exp(sc - sc.max(1, keepdims=True))
    lse = np.log(p.sum(1)) + sc.max(1)
    p /= p.sum(1, keepdims=True)
    for v, M in ((vals, 3), (keys, 5), (keys, 0)):
        m, l, acc = np.empty(3, dtype), np.empty(3, dtype), np.empty((3, M), dtype)
        loop(qs, keys, v, 0, 40, 16, m, l, acc)
        want = p @ v[:, :M].astype(np.float64)
        if not (np.allclose(m + np.log(l), lse, rtol=tol, atol=0)
                and (M == 0 or np.allclose(acc / l[:, None], want, rtol=tol, atol=tol))):
            return False
    return True


def chunk_loop(directory: str, cpu: str, dtype, blas_path: str | None) -> object | None:
    """``f(qs, keys, values, lo, hi, chunk, m, l, acc)``: the kernel's chunk loop over rows lo:hi in
    one compiled call, the products through ``cblas_?gemm`` of the BLAS at ``blas_path`` (numpy's);
    ``values`` may be ``keys``; ``acc`` of width 0 computes the log-sum-exp only. ``m``, ``l``,
    ``acc`` are written (no need to initialise). None where the helper, the BLAS symbol or the
    self-test against a float64 softmax fails (then the chunk loop stays in Python)."""
    step = online_exp(directory, cpu, dtype)
    if step is None or blas_path is None:
        return None
    key = (directory, os.environ.get("CC", "cc"), cpu, np.dtype(dtype).char, blas_path)
    fn = _loops.get(key, False)
    if fn is not False:
        return fn
    with _lock:
        fns = _by_place.get((directory, os.environ.get("CC", "cc"), cpu))
        raw = fns.get(("loop", np.dtype(dtype))) if fns else None
        sym = _gemm_symbol(blas_path, dtype)
        fn = None
        if raw is not None and sym is not None:
            gemm, ilp64 = sym
            dt = np.dtype(dtype)

            def fn(qs, keys, values, lo, hi, chunk, m, l, acc, _raw=raw):
                B, N = qs.shape
                ws = getattr(_tls, "ws", None)
                if ws is None or ws[0].size < B * chunk or ws[1].size < B or ws[0].dtype != dt:
                    ws = _tls.ws = (np.empty(B * chunk, dt), np.empty(B, dt), np.empty(B, dt))
                s, alpha, rowsum = ws  # per-thread scratch: scores of a chunk, alpha, row sums
                _raw(qs.ctypes.data, keys.ctypes.data, values.ctypes.data, B, N, acc.shape[1], lo, hi, chunk,
                     s.ctypes.data, m.ctypes.data, l.ctypes.data, acc.ctypes.data, alpha.ctypes.data,
                     rowsum.ctypes.data, gemm, int(ilp64))

            if not _loop_checks(fn, dtype):
                fn = None
        _loops[key] = fn
    return fn


def _call(f, s: np.ndarray, m: np.ndarray, alpha: np.ndarray, rowsum: np.ndarray) -> None:
    f(s.ctypes.data, s.shape[0], s.shape[1], s.strides[0] // s.itemsize, m.ctypes.data, alpha.ctypes.data,
      rowsum.ctypes.data)


def online_exp(directory: str, cpu: str, dtype) -> object | None:
    """``f(s, m, alpha, rowsum)`` doing the step above in place on C-contiguous-row arrays of
    ``dtype`` (float32 or float64), or None when the compiled helper is unavailable or switched off
    (``ASSOCMEM_NATIVE=0``). Built once per machine into ``directory`` and loaded once per process."""
    if os.environ.get("ASSOCMEM_NATIVE", "1").strip() == "0":
        return None
    place = (directory, os.environ.get("CC", "cc"), cpu)
    fns = _by_place.get(place, False)
    if fns is False:
        with _lock:
            fns = _by_place.get(place, False)
            if fns is False:
                cc = shutil.which(place[1])
                tag = _tag(cc, cpu) if cc else None
                fns = _by_tag.get(tag, False) if tag else None
                if fns is False:
                    try:
                        path = _compile(directory, cc, tag)
                        fns = _load(path) if path else None
                    except (OSError, subprocess.SubprocessError, AttributeError):
                        fns = None
                    _by_tag[tag] = fns
                _by_place[place] = fns
    if fns is None:
        return None
    f = fns.get(np.dtype(dtype))
    return None if f is None else (lambda s, m, alpha, rowsum: _call(f, s, m, alpha, rowsum))
