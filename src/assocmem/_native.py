"""The retrieval kernel's per-chunk softmax step (KH eq. 16: the exponentials of the online
log-sum-exp) as a small C function, compiled on first use with the system C compiler so that the
exponentials run through glibc's vectorised ``exp`` (libmvec, ~0.75 ns per float32 against numpy's
~2 ns). Where no compiler, no libmvec or no writable cache is found, :func:`online_exp` returns
None and :mod:`assocmem._kernels` does the same step with numpy.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading

import numpy as np

__all__ = ["online_exp", "SOURCE", "FLAGS"]

# One row at a time: m[b] <- max(m[b], max_j s[b, j]); s[b, :] <- exp(s[b, :] - m_new);
# alpha[b] <- exp(m_old - m_new) (0 when m_old = -inf); rowsum[b] <- sum_j s[b, j].
SOURCE = r"""
#include <math.h>
#pragma omp declare simd notinbranch
extern float expf(float);
#pragma omp declare simd notinbranch
extern double exp(double);

#define ONLINE_EXP(NAME, T, EXP)                                                         \
void NAME(T *s, long B, long c, long ld, T *m, T *alpha, T *rowsum) {                     \
    for (long b = 0; b < B; b++) {                                                        \
        T *r = s + b * ld;                                                                \
        T mx = r[0];                                                                      \
        int nan = 0;                                                                      \
        _Pragma("omp simd reduction(max:mx) reduction(|:nan)")                            \
        for (long j = 0; j < c; j++) { mx = r[j] > mx ? r[j] : mx; nan |= r[j] != r[j]; } \
        T mo = m[b];                                                                      \
        T mn = mo > mx ? mo : mx;                                                         \
        if (nan) mn = NAN;                                                                \
        T acc = 0;                                                                        \
        _Pragma("omp simd reduction(+:acc)")                                              \
        for (long j = 0; j < c; j++) { T e = EXP(r[j] - mn); r[j] = e; acc += e; }        \
        alpha[b] = (mo == -INFINITY) ? (T)0 : EXP(mo - mn);                               \
        m[b] = mn;                                                                        \
        rowsum[b] = acc;                                                                  \
    }                                                                                     \
}
ONLINE_EXP(online_exp_f32, float, expf)
ONLINE_EXP(online_exp_f64, double, exp)
"""
# -march=native: built on the machine that runs it (the file name carries the CPU model);
# -fopenmp-simd lets the pragmas above vectorise the loops with libmvec's exp; the sum is
# reassociated (vector lanes), so its last bits differ from numpy's pairwise sum, not its accuracy.
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
         "-fPIC", "-shared")

_lock = threading.Lock()
_by_place: dict[tuple, object] = {}  # (cache directory, $CC, cpu) -> {dtype: function} or None
_by_tag: dict[str, object] = {}  # build tag -> the same: one build and load per process


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
    # a self-test against numpy before anything relies on it (a miscompiled or foreign file is refused)
    for dt, f in fns.items():
        s = np.linspace(-30, 5, 37, dtype=dt).reshape(1, 37).repeat(3, axis=0)
        s[1] -= 100
        m = np.array([-np.inf, 0.0, 10.0], dtype=dt)
        mn = np.maximum(m, s.max(axis=1))
        want_s, want_alpha = np.exp(s - mn[:, None]), np.exp(m - mn)
        alpha, rowsum = np.empty(3, dt), np.empty(3, dt)
        _call(f, s, m, alpha, rowsum)
        if not (np.array_equal(m, mn) and np.allclose(alpha, want_alpha, rtol=1e-6, atol=0)
                and np.allclose(s, want_s, rtol=1e-5, atol=0) and np.allclose(rowsum, want_s.sum(1), rtol=1e-5, atol=0)):
            return None
    return fns


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
