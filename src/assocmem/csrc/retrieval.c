/* assocmem's compiled retrieval kernel: Model B retrieval softmax(beta q xi^T) V (Krotov & Hopfield
   2021, eq. 16; Ramsauer et al. 2020) as an online log-sum-exp over chunks of the bank (Milakov &
   Gimelshein 2018): per chunk, the scores' running maximum m, the exponentials e^(s - m) in place,
   their row sums l and the rescale e^(m_old - m_new) of what was accumulated before.

   Built at first use by assocmem._native (setuptools' compiler classes) once per machine and
   instruction-set variant, selected from the CPU's flags at run time:
     avx512   -mavx512f -mavx2 -mfma   sixteen-lane exp / max with masked tails
     avx2     -mavx2 -mfma             eight-lane Cephes exp polynomial, two accumulators
     generic  (no -m flag)             libm's vectorised exp through OpenMP SIMD pragmas
   and loaded with ctypes. Exported (float32 _f32 and float64 _f64 of each):
     online_exp    the per-chunk max / exp / row-sum step on a B x c block of scores
     chunk_loop    the whole loop over rows lo:hi of a bank, products through a cblas ?gemm
                   the caller passes (numpy's own BLAS)
     small         a whole small retrieval without BLAS (problems that fit in L2)
     assocmem_native_variant   the variant this file was compiled as (checked on load)

   Exponentials of x < LO (e^-87 = 1.6e-38 for float32, e^-708 = 3.3e-308 for float64: about the
   smallest normal numbers) are returned as exactly 0: libm's exp takes a slow path for subnormal
   results, 8-15x slower per element, and with a sharp softmax (large beta) nearly every score of a
   chunk lands there. The terms dropped are below 1.6e-38 of the row's largest term (float32). A row
   whose new maximum is not finite (a NaN score, an overflowed +-inf) comes back all NaN, as the
   numpy step gives. */
#include <math.h>
#include <stdlib.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__)
#define VARIANT "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define VARIANT "avx2"
#else
#define VARIANT "generic"
#endif
const char *assocmem_native_variant(void) { return VARIANT; }

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
/* ilp: 0 cblas with 32-bit integers, 1 cblas ILP64 (the 64_-suffixed symbols numpy's wheels
   ship). qsT: NULL, or the queries transposed (N x B): then the scores of a chunk are computed
   transposed (c x B) from it, with the step above along rows of queries; mx and bad (B entries
   each) are that step's scratch. Which layout is faster depends on the BLAS and the shape: the
   caller's calibration picks. */
#define CHUNK_LOOP(NAME, T, STEP, STEP_T)                                                  \
void NAME(const T *qs, const T *keys, const T *values, long B, long N, long M, long lo,   \
          long hi, long chunk, T *s, T *m, T *l, T *acc, T *alpha, T *rowsum, void *gemm,  \
          int ilp, const T *qsT, T *mx, int *bad) {                                        \
    for (long b = 0; b < B; b++) { m[b] = -INFINITY; l[b] = 0; }                          \
    for (long i = 0; i < B * M; i++) acc[i] = 0;                                          \
    for (long c0 = lo; c0 < hi; c0 += chunk) {                                            \
        long c = hi - c0 < chunk ? hi - c0 : chunk;                                       \
        const T *kc = keys + c0 * N, *vc = values + c0 * M;                               \
        if (qsT) {                                                                        \
            GEMM(T, gemm, ilp, 111, 111, c, B, N, kc, N, qsT, B, (T)0, s, B);             \
            STEP_T(s, c, B, m, alpha, rowsum, mx, bad);                                   \
        } else {                                                                          \
            GEMM(T, gemm, ilp, 111, 112, B, c, N, qs, N, kc, N, (T)0, s, c);              \
            STEP(s, B, c, c, m, alpha, rowsum);                                           \
        }                                                                                 \
        for (long b = 0; b < B; b++) {                                                    \
            T a = alpha[b];                                                               \
            if (a != (T)1) { T *r = acc + b * M; for (long j = 0; j < M; j++) r[j] *= a; } \
            l[b] = l[b] * a + rowsum[b];                                                  \
        }                                                                                 \
        if (!M) continue;                                                                 \
        if (qsT) {                                                                        \
            GEMM(T, gemm, ilp, 112, 111, B, M, c, s, B, vc, M, (T)1, acc, M);             \
        } else {                                                                          \
            GEMM(T, gemm, ilp, 111, 111, B, M, c, s, c, vc, M, (T)1, acc, M);             \
        }                                                                                 \
    }                                                                                     \
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
