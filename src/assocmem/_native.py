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

__all__ = ["online_exp", "chunk_loop", "small_retrieve", "SOURCE", "FLAGS"]

# One row at a time: m[b] <- max(m[b], max_j s[b, j]); s[b, :] <- exp(s[b, :] - m_new);
# alpha[b] <- exp(m_old - m_new) (0 when m_old = -inf); rowsum[b] <- sum_j s[b, j]. A row whose new
# maximum is not finite (a NaN score, an overflowed +-inf) comes back all NaN, as numpy's step gives.
# Exponentials of x < LO (e^-87 = 1.6e-38 for float32, e^-708 = 3.3e-308 for float64: about the
# smallest normal numbers) are returned as exactly 0: libm's exp takes a slow path for subnormal
# results, 8-15x slower per element, and with a sharp softmax (large beta) nearly every score of a
# chunk lands there. The terms dropped are below 1.6e-38 of the row's largest term (float32).
SOURCE = r"""
#include <math.h>
#include <stdlib.h>
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
#define COL_EXP(NAME, T, EXP, LO)                                                         \
static void NAME(T *r, long c, long B, const T *mn, T *rowsum) {                          \
    for (long j = 0; j < c; j++) {                                                        \
        T *row = r + j * B;                                                               \
        _Pragma("omp simd")                                                               \
        for (long b = 0; b < B; b++) {                                                    \
            T x = row[b] - mn[b];                                                         \
            T e = EXP(x > LO ? x : LO);                                                   \
            e = x >= LO ? e : (T)0;                                                       \
            row[b] = e;                                                                   \
            rowsum[b] += e;                                                               \
        }                                                                                 \
    }                                                                                     \
}
ROW_MAX(row_max_f64, double)
ROW_EXP(row_exp_f64, double, exp, -708.0)
COL_EXP(col_exp_f64, double, exp, -708.0)
/* s_k = beta q.key_k for k < K; out += sum_k s_k value_k (out: M entries) */
#define DOTS(NAME, T)                                                                     \
static void NAME(const T *q, const T *keys, long N, long K, T beta, T *s) {              \
    for (long k = 0; k < K; k++) {                                                        \
        const T *kk = keys + k * N;                                                       \
        T d = 0;                                                                          \
        _Pragma("omp simd reduction(+:d)")                                                \
        for (long j = 0; j < N; j++) d += q[j] * kk[j];                                   \
        s[k] = beta * d;                                                                  \
    }                                                                                     \
}
#define AXPYS(NAME, T)                                                                    \
static void NAME(const T *s, const T *values, long M, long K, T *out) {                  \
    for (long k = 0; k < K; k++) {                                                        \
        const T *vk = values + k * M;                                                     \
        T e = s[k];                                                                       \
        if (e == (T)0) continue;                                                          \
        _Pragma("omp simd")                                                               \
        for (long j = 0; j < M; j++) out[j] += e * vk[j];                                 \
    }                                                                                     \
}
DOTS(dots_f64, double)
AXPYS(axpys_f64, double)

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
#if defined(__AVX512F__)
/* with AVX-512: the same polynomial on sixteen lanes, masked loads and stores for the tails */
static inline __m512 exp16(__m512 x) {
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);
    __m512 n = _mm512_sub_ps(t, magic);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 z = _mm512_mul_ps(r, r);
    __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, z, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(magic)), 23);
    y = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), e));
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ), y);
}
static inline __mmask16 tail16(long k) { return (__mmask16)((1u << k) - 1u); }
static float row_max_f32(const float *r, long c, int *nan) {
    __m512 m0 = _mm512_set1_ps(r[0]), m1 = m0;
    __mmask16 u = 0;
    long j = 0;
    for (; j + 32 <= c; j += 32) {
        __m512 a = _mm512_loadu_ps(r + j), b = _mm512_loadu_ps(r + j + 16);
        m0 = _mm512_max_ps(m0, a);
        m1 = _mm512_max_ps(m1, b);
        u |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);
    }
    float mx = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
    int bad = u != 0;
    for (; j < c; j++) { mx = r[j] > mx ? r[j] : mx; bad |= r[j] != r[j]; }
    *nan = bad;
    return mx;
}
static float row_exp_f32(float *r, long c, float mn) {
    __m512 vm = _mm512_set1_ps(mn), a0 = _mm512_setzero_ps(), a1 = a0;
    long j = 0;
    for (; j + 32 <= c; j += 32) {
        __m512 x0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(r + j), vm));
        __m512 x1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(r + j + 16), vm));
        _mm512_storeu_ps(r + j, x0);
        _mm512_storeu_ps(r + j + 16, x1);
        a0 = _mm512_add_ps(a0, x0);
        a1 = _mm512_add_ps(a1, x1);
    }
    for (; j < c; j += 16) { /* masked: lanes past the end load -inf and give 0 */
        __mmask16 k = tail16(c - j < 16 ? c - j : 16);
        __m512 x = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, r + j), vm));
        _mm512_mask_storeu_ps(r + j, k, x);
        a0 = _mm512_add_ps(a0, x);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
/* the transposed layout (c rows of B queries): r[j, b] <- exp(r[j, b] - mn[b]), rowsum[b] += it */
static void col_exp_f32(float *r, long c, long B, const float *mn, float *rowsum) {
    for (long j = 0; j < c; j++) {
        float *row = r + j * B;
        for (long b = 0; b < B; b += 16) {
            __mmask16 k = tail16(B - b < 16 ? B - b : 16);
            __m512 x = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, row + b),
                                           _mm512_maskz_loadu_ps(k, mn + b)));
            _mm512_mask_storeu_ps(row + b, k, x);
            _mm512_mask_storeu_ps(rowsum + b, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, rowsum + b), x));
        }
    }
}
#else
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
/* the transposed layout (c rows of B queries): r[j, b] <- exp(r[j, b] - mn[b]), rowsum[b] += it;
   eight queries per vector, the last < 8 through a padded block */
static void col_exp_f32(float *r, long c, long B, const float *mn, float *rowsum) {
    long b8 = B & ~7L;
    for (long j = 0; j < c; j++) {
        float *row = r + j * B;
        for (long b = 0; b < b8; b += 8) {
            __m256 x = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + b), _mm256_loadu_ps(mn + b)));
            _mm256_storeu_ps(row + b, x);
            _mm256_storeu_ps(rowsum + b, _mm256_add_ps(_mm256_loadu_ps(rowsum + b), x));
        }
        if (b8 < B) {
            float buf[8];
            long k = B - b8;
            for (long i = 0; i < 8; i++) buf[i] = i < k ? row[b8 + i] - mn[b8 + i] : -INFINITY;
            __m256 x = exp8(_mm256_loadu_ps(buf));
            _mm256_storeu_ps(buf, x);
            for (long i = 0; i < k; i++) { row[b8 + i] = buf[i]; rowsum[b8 + i] += buf[i]; }
        }
    }
}
#endif
/* eight keys per pass over q: eight independent FMA chains (four would wait on the FMA latency)
   and one horizontal-add tree for the eight dot products */
static void dots_f32(const float *q, const float *keys, long N, long K, float beta, float *s) {
    long n8 = N & ~7L, k = 0;
    for (; k + 8 <= K; k += 8) {
        const float *kp = keys + k * N;
        __m256 a[8];
        for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
        for (long j = 0; j < n8; j += 8) {
            __m256 x = _mm256_loadu_ps(q + j);
            for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(x, _mm256_loadu_ps(kp + i * N + j), a[i]);
        }
        __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
        if (n8 < N) {
            float t[8];
            _mm256_storeu_ps(t, r);
            for (int i = 0; i < 8; i++)
                for (long j = n8; j < N; j++) t[i] += q[j] * kp[i * N + j];
            r = _mm256_loadu_ps(t);
        }
        _mm256_storeu_ps(s + k, _mm256_mul_ps(r, _mm256_set1_ps(beta)));
    }
    for (; k < K; k++) {
        const float *kk = keys + k * N;
        float d = 0;
        for (long j = 0; j < N; j++) d += q[j] * kk[j];
        s[k] = beta * d;
    }
}
/* out (M) += sum_k s_k value_k: 64 columns at a time in eight registers over all keys (eight
   independent FMA chains), then 8 at a time, then the last columns */
static void axpys_f32(const float *s, const float *values, long M, long K, float *out) {
    long j0 = 0;
    for (; j0 + 64 <= M; j0 += 64) {
        __m256 o[8];
        for (int i = 0; i < 8; i++) o[i] = _mm256_loadu_ps(out + j0 + 8 * i);
        for (long k = 0; k < K; k++) {
            if (s[k] == 0.0f) continue;
            __m256 e = _mm256_set1_ps(s[k]);
            const float *v = values + k * M + j0;
            for (int i = 0; i < 8; i++) o[i] = _mm256_fmadd_ps(e, _mm256_loadu_ps(v + 8 * i), o[i]);
        }
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(out + j0 + 8 * i, o[i]);
    }
    for (; j0 + 8 <= M; j0 += 8) {
        __m256 o0 = _mm256_loadu_ps(out + j0), o1 = _mm256_setzero_ps();
        long k = 0;
        for (; k + 2 <= K; k += 2) {
            o0 = _mm256_fmadd_ps(_mm256_set1_ps(s[k]), _mm256_loadu_ps(values + k * M + j0), o0);
            o1 = _mm256_fmadd_ps(_mm256_set1_ps(s[k + 1]), _mm256_loadu_ps(values + (k + 1) * M + j0), o1);
        }
        if (k < K) o0 = _mm256_fmadd_ps(_mm256_set1_ps(s[k]), _mm256_loadu_ps(values + k * M + j0), o0);
        _mm256_storeu_ps(out + j0, _mm256_add_ps(o0, o1));
    }
    for (long k = 0; k < K && j0 < M; k++) {
        float e = s[k];
        const float *v = values + k * M;
        for (long j = j0; j < M; j++) out[j] += e * v[j];
    }
}
#else
ROW_MAX(row_max_f32, float)
ROW_EXP(row_exp_f32, float, expf, -87.0f)
COL_EXP(col_exp_f32, float, expf, -87.0f)
DOTS(dots_f32, float)
AXPYS(axpys_f32, float)
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

/* The same step on transposed scores sT (c x B: row j is key j of the chunk against every query),
   vectorised over the queries; mx (B) and bad (B) are scratch. Same results, NaN columns included. */
#define ONLINE_EXP_T(NAME, T, COL_EXP_FN, EXP)                                            \
static void NAME(T *s, long c, long B, T *m, T *alpha, T *rowsum, T *mx, int *bad) {      \
    for (long b = 0; b < B; b++) { mx[b] = m[b]; bad[b] = m[b] != m[b]; rowsum[b] = 0; }  \
    for (long j = 0; j < c; j++) {                                                        \
        const T *r = s + j * B;                                                           \
        _Pragma("omp simd")                                                               \
        for (long b = 0; b < B; b++) {                                                    \
            T x = r[b];                                                                   \
            mx[b] = x > mx[b] ? x : mx[b];                                                \
            bad[b] |= x != x;                                                             \
        }                                                                                 \
    }                                                                                     \
    int any = 0;                                                                          \
    for (long b = 0; b < B; b++) {                                                        \
        T mo = m[b], mn = mx[b];                                                          \
        if (bad[b] || !isfinite(mn)) { bad[b] = 1; any = 1; mx[b] = 0; continue; }        \
        alpha[b] = (mo == -INFINITY) ? (T)0 : EXP(mo - mn);                               \
        m[b] = mn;                                                                        \
    }                                                                                     \
    COL_EXP_FN(s, c, B, mx, rowsum);                                                      \
    if (any)                                                                              \
        for (long b = 0; b < B; b++) {                                                    \
            if (!bad[b]) continue;                                                        \
            for (long j = 0; j < c; j++) s[j * B + b] = NAN;                              \
            m[b] = alpha[b] = rowsum[b] = NAN;                                            \
        }                                                                                 \
}
ONLINE_EXP_T(online_exp_t_f32, float, col_exp_f32, expf)
ONLINE_EXP_T(online_exp_t_f64, double, col_exp_f64, exp)

/* The kernel's whole chunk loop over rows lo:hi of the bank (no Python, no GIL between the chunks):
   s = qs keys_c^T, the step above, acc <- alpha acc + s values_c (the BLAS accumulates: beta = 1).
   The products go through the caller's cblas ?gemm: 64-bit integers (ILP64) or 32-bit. M = 0: the
   log-sum-exp only. On return m, l (B,) and acc (B x M) hold the partial result of the rows. */
#define GEMM(T, G, ilp, ta, tb, Mr, Nc, Kk, A, lda, Bp, ldb, beta, C, ldc)                   \
    do {                                                                                  \
        if (ilp) ((void (*)(int, int, int, long, long, long, T, const T *, long, const T *, \
                            long, T, T *, long))(G))(101, ta, tb, Mr, Nc, Kk, (T)1, A,    \
                                                     lda, Bp, ldb, beta, C, ldc);         \
        else ((void (*)(int, int, int, int, int, int, T, const T *, int, const T *, int,   \
                        T, T *, int))(G))(101, ta, tb, (int)(Mr), (int)(Nc), (int)(Kk),   \
                                          (T)1, A, (int)(lda), Bp, (int)(ldb), beta, C,   \
                                          (int)(ldc));                                    \
    } while (0)
/* The Fortran-convention ?gemm_ (column-major, arguments by pointer, 32-bit integers), as MKL
   exports it from torch's own library: row-major C = A B is column-major C^T = B^T A^T. */
#define FGEMM(T, G, ta, tb, Mm, Nn, Kk, A, lda, Bp, ldb, beta, C, ldc)                      \
    do {                                                                                  \
        int m_ = (int)(Mm), n_ = (int)(Nn), k_ = (int)(Kk), la_ = (int)(lda);               \
        int lb_ = (int)(ldb), lc_ = (int)(ldc);                                           \
        T one_ = 1, be_ = (beta);                                                         \
        ((void (*)(const char *, const char *, const int *, const int *, const int *,     \
                   const T *, const T *, const int *, const T *, const int *, const T *,  \
                   T *, const int *))(G))(ta, tb, &m_, &n_, &k_, &one_, A, &la_, Bp, &lb_, \
                                          &be_, C, &lc_);                                 \
    } while (0)
/* conv: 0 cblas with 32-bit integers, 1 cblas ILP64, 2 Fortran ?gemm_ (MKL). set_threads: NULL, or
   MKL_Set_Num_Threads_Local, called with 1 for the loop (this thread's products run on this
   core only: the caller's threads are the parallelism) and restored after. qsT: NULL, or the
   queries transposed (N x B): then the scores of a chunk are computed transposed (c x B) from it,
   which MKL runs 15 % faster for few queries (B = 64, N = 1024), with the step above along rows
   of queries; mx and bad (B entries each) are that step's scratch. */
#define CHUNK_LOOP(NAME, T, STEP, STEP_T)                                                  \
void NAME(const T *qs, const T *keys, const T *values, long B, long N, long M, long lo,   \
          long hi, long chunk, T *s, T *m, T *l, T *acc, T *alpha, T *rowsum, void *gemm,  \
          int conv, void *set_threads, const T *qsT, T *mx, int *bad) {                   \
    int saved = set_threads ? ((int (*)(int))set_threads)(1) : 0;                         \
    for (long b = 0; b < B; b++) { m[b] = -INFINITY; l[b] = 0; }                          \
    for (long i = 0; i < B * M; i++) acc[i] = 0;                                          \
    for (long c0 = lo; c0 < hi; c0 += chunk) {                                            \
        long c = hi - c0 < chunk ? hi - c0 : chunk;                                       \
        const T *kc = keys + c0 * N, *vc = values + c0 * M;                               \
        if (qsT) {                                                                        \
            if (conv == 2) FGEMM(T, gemm, "N", "N", B, c, N, qsT, B, kc, N, (T)0, s, B);   \
            else GEMM(T, gemm, conv, 111, 111, c, B, N, kc, N, qsT, B, (T)0, s, B);        \
            STEP_T(s, c, B, m, alpha, rowsum, mx, bad);                                   \
        } else {                                                                          \
            if (conv == 2) FGEMM(T, gemm, "T", "N", c, B, N, kc, N, qs, N, (T)0, s, c);   \
            else GEMM(T, gemm, conv, 111, 112, B, c, N, qs, N, kc, N, (T)0, s, c);        \
            STEP(s, B, c, c, m, alpha, rowsum);                                           \
        }                                                                                 \
        for (long b = 0; b < B; b++) {                                                    \
            T a = alpha[b];                                                               \
            if (a != (T)1) { T *r = acc + b * M; for (long j = 0; j < M; j++) r[j] *= a; } \
            l[b] = l[b] * a + rowsum[b];                                                  \
        }                                                                                 \
        if (!M) continue;                                                                 \
        if (qsT) {                                                                        \
            if (conv == 2) FGEMM(T, gemm, "N", "T", M, B, c, vc, M, s, B, (T)1, acc, M);  \
            else GEMM(T, gemm, conv, 112, 111, B, M, c, s, B, vc, M, (T)1, acc, M);        \
        } else {                                                                          \
            if (conv == 2) FGEMM(T, gemm, "N", "N", M, B, c, vc, M, s, c, (T)1, acc, M);  \
            else GEMM(T, gemm, conv, 111, 111, B, M, c, s, c, vc, M, (T)1, acc, M);        \
        }                                                                                 \
    }                                                                                     \
    if (set_threads) ((int (*)(int))set_threads)(saved);                                  \
}
CHUNK_LOOP(chunk_loop_f32, float, online_exp_f32, online_exp_t_f32)
CHUNK_LOOP(chunk_loop_f64, double, online_exp_f64, online_exp_t_f64)

/* A whole small retrieval without BLAS (problems that fit in L2, where a library call costs more
   than the arithmetic): per query s_k = beta q.key_k, the step above, out = sum_k e_k value_k / l,
   lse = m + log l (not written where lse is NULL). The K scores live in a per-thread buffer that
   grows as needed. Returns 0, or -1 when that buffer cannot be allocated. */
#define SMALL(NAME, T, DOTS_FN, ROW_MAX_FN, ROW_EXP_FN, AXPYS_FN, LOG)                    \
int NAME(const T *q, const T *keys, const T *values, long B, long N, long M, long K,      \
         T beta, T *out, T *lse) {                                                        \
    static __thread T *s = 0;                                                             \
    static __thread long cap = 0;                                                         \
    if (cap < K) {                                                                        \
        T *p = (T *)realloc(s, (size_t)K * sizeof(T));                                    \
        if (!p) return -1;                                                                \
        s = p;                                                                            \
        cap = K;                                                                          \
    }                                                                                     \
    for (long b = 0; b < B; b++) {                                                        \
        T *ob = out + b * M;                                                              \
        DOTS_FN(q + b * N, keys, N, K, beta, s);                                          \
        int nan;                                                                          \
        T mx = ROW_MAX_FN(s, K, &nan);                                                    \
        if (nan || !isfinite(mx)) {                                                       \
            for (long j = 0; j < M; j++) ob[j] = NAN;                                     \
            if (lse) lse[b] = NAN;                                                        \
            continue;                                                                     \
        }                                                                                 \
        T l = ROW_EXP_FN(s, K, mx);                                                       \
        for (long j = 0; j < M; j++) ob[j] = 0;                                           \
        AXPYS_FN(s, values, M, K, ob);                                                    \
        for (long j = 0; j < M; j++) ob[j] /= l;                                          \
        if (lse) lse[b] = mx + LOG(l);                                                    \
    }                                                                                     \
    return 0;                                                                             \
}
SMALL(small_f32, float, dots_f32, row_max_f32, row_exp_f32, axpys_f32, logf)
SMALL(small_f64, double, dots_f64, row_max_f64, row_exp_f64, axpys_f64, log)
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


def _place(directory: str, cpu: str) -> tuple:
    """What a build depends on besides the source: where it lives, the compiler asked for, the CPU."""
    return directory, os.environ.get("CC", "cc"), cpu


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
        f.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 6 + [ctypes.c_void_p] * 7 + [ctypes.c_int] + [ctypes.c_void_p] * 4
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
    for dt, name, ct in ((np.float32, "small_f32", ctypes.c_float), (np.float64, "small_f64", ctypes.c_double)):
        f = getattr(lib, name)
        f.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 4 + [ct] + [ctypes.c_void_p] * 2
        f.restype = ctypes.c_int
        small = _small_wrapper(f)
        if not _small_checks(small, dt):
            return None
        fns[("small", np.dtype(dt))] = small
    return fns


def _small_wrapper(f):
    """``small(q, keys, values, B, N, M, K, beta, out, lse)`` on data pointers (``lse`` may be 0);
    the call costs ~1 us, so callers pass tensors' ``data_ptr()`` (numpy's ``.ctypes.data`` costs
    1.7 us per array). Raises MemoryError when the score buffer cannot be had."""

    def small(q, keys, values, B, N, M, K, beta, out, lse):
        if f(q, keys, values, B, N, M, K, beta, out, lse):
            raise MemoryError(f"assocmem: no memory for {K} scores")

    return small


def _small_checks(small, dtype) -> bool:
    """The small-problem retrieval against a float64 softmax (separate values and values = keys)."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 9)).astype(dtype)
    keys = rng.standard_normal((21, 9)).astype(dtype)
    vals = rng.standard_normal((21, 4)).astype(dtype)
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
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


def small_retrieve(directory: str, cpu: str, dtype) -> object | None:
    """``f(q, keys, values, B, N, M, K, beta, out, lse)``: a whole retrieval of a small problem (it
    should fit in L2) in one compiled call without BLAS, on data pointers of C-contiguous arrays of
    ``dtype`` (``lse`` may be 0: not computed); None where the helper is unavailable."""
    if online_exp(directory, cpu, dtype) is None:
        return None
    fns = _by_place.get(_place(directory, cpu))
    return fns.get(("small", np.dtype(dtype))) if fns else None


def _gemm_symbol(blas_path: str, dtype) -> tuple[int, int, int | None] | None:
    """``(address of ?gemm, calling convention, address of MKL_Set_Num_Threads_Local or None)`` in the
    BLAS library at ``blas_path``, or None. Convention 0: ``cblas_?gemm`` with 32-bit integers, 1: the
    ``64_``-suffixed ILP64 cblas numpy's wheels ship, 2: MKL's Fortran ``?gemm_`` (torch's own library
    exports MKL that way; its ``MKL_Set_Num_Threads_Local`` keeps each caller's products on one core)."""
    x = "s" if np.dtype(dtype) == np.float32 else "d"
    try:
        lib = ctypes.CDLL(blas_path)
    except OSError:
        return None
    threads = getattr(lib, "MKL_Set_Num_Threads_Local", None)  # the C interface (lower case: Fortran, by pointer)
    if threads is not None:
        fn = getattr(lib, f"{x}gemm_", None)
        if fn is None:
            return None
        return ctypes.cast(fn, ctypes.c_void_p).value, 2, ctypes.cast(threads, ctypes.c_void_p).value
    for name in (f"scipy_cblas_{x}gemm64_", f"cblas_{x}gemm64_", f"cblas_{x}gemm"):
        fn = getattr(lib, name, None)
        if fn is not None:
            return ctypes.cast(fn, ctypes.c_void_p).value, int(name.endswith("64_")), None
    return None


def _loop_checks(loop, dtype) -> bool:
    """The chunk loop against a float64 softmax on a small problem (three chunks, the last short;
    separate values, values = keys, and the log-sum-exp only), in both score layouts (11 queries:
    a whole vector of eight and a tail in the transposed one)."""
    rng = np.random.default_rng(0)
    qs = rng.standard_normal((11, 5)).astype(dtype) * 4
    keys = rng.standard_normal((40, 5)).astype(dtype)
    vals = rng.standard_normal((40, 3)).astype(dtype)
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
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


def chunk_loop(directory: str, cpu: str, dtype, blas_path: str | None) -> object | None:
    """``f(qs, keys, values, lo, hi, chunk, m, l, acc, qsT=None)``: the kernel's chunk loop over rows lo:hi in
    one compiled call, the products through the ``?gemm`` of the BLAS at ``blas_path`` (numpy's
    OpenBLAS, or torch's library where it exports MKL: see ``_gemm_symbol``);
    ``values`` may be ``keys``; ``acc`` of width 0 computes the log-sum-exp only; ``qsT`` (the
    queries transposed, C-contiguous) selects the transposed score layout. ``m``, ``l``,
    ``acc`` are written (no need to initialise). None where the helper, the BLAS symbol or the
    self-test against a float64 softmax fails (then the chunk loop stays in Python)."""
    step = online_exp(directory, cpu, dtype)
    if step is None or blas_path is None:
        return None
    key = (*_place(directory, cpu), np.dtype(dtype).char, blas_path)
    fn = _loops.get(key, False)
    if fn is not False:
        return fn
    with _lock:
        fns = _by_place.get(_place(directory, cpu))
        raw = fns.get(("loop", np.dtype(dtype))) if fns else None
        sym = _gemm_symbol(blas_path, dtype)
        fn = None
        if raw is not None and sym is not None:
            gemm, conv, set_threads = sym
            dt = np.dtype(dtype)

            def fn(qs, keys, values, lo, hi, chunk, m, l, acc, qsT=None, _raw=raw):
                B, N = qs.shape
                ws = getattr(_tls, "ws", None)
                if ws is None or ws[0].size < B * chunk or ws[1].size < B or ws[0].dtype != dt:
                    ws = _tls.ws = (np.empty(B * chunk, dt), np.empty(B, dt), np.empty(B, dt), np.empty(B, dt),
                                    np.empty(B, np.intc))
                s, alpha, rowsum, mx, bad = ws  # per-thread scratch: scores of a chunk, alpha, row sums, ...
                _raw(qs.ctypes.data, keys.ctypes.data, values.ctypes.data, B, N, acc.shape[1], lo, hi, chunk,
                     s.ctypes.data, m.ctypes.data, l.ctypes.data, acc.ctypes.data, alpha.ctypes.data,
                     rowsum.ctypes.data, gemm, conv, set_threads, None if qsT is None else qsT.ctypes.data,
                     mx.ctypes.data, bad.ctypes.data)

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
    place = _place(directory, cpu)
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
