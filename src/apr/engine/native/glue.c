/* The float32 work between apr's quantized products on the CPU decode path: RMSNorm, NEOX RoPE and
 * the attention of one new token over its KV cache.
 *
 * Why this exists: between two products a decoder layer runs ~40 small PyTorch operators, each a few
 * microseconds of dispatch for a few thousand flops; on the 1.5B that was ~13 ms of a ~70 ms token.
 * These kernels do the same arithmetic in one call each. They follow the PyTorch reference (apr's
 * model.py) operation for operation in float32; only the order of the float reductions differs, so
 * results agree to rounding, and each output row depends on its own inputs alone (batch invariance).
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "apr_native.h"

int apr_glue_abi(void) { return 4; }

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float dot(const float *a, const float *b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* hsum8 of s0..s3 at once, each bit-identical to hsum8(si): ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)),
 * done for the 4 together (~9 operations instead of ~20). */
static inline __m128 hsum8x4(__m256 s0, __m256 s1, __m256 s2, __m256 s3) {
    /* t = low half + high half: [t of s0 | t of s1] and [t of s2 | t of s3] */
    const __m256 t01 = _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
    const __m256 t23 = _mm256_add_ps(_mm256_permute2f128_ps(s2, s3, 0x20), _mm256_permute2f128_ps(s2, s3, 0x31));
    /* u = (t0 + t2, t1 + t3): lanes [u0, u1] of s0, s2 in the low half and of s1, s3 in the high half */
    const __m256 u = _mm256_add_ps(_mm256_shuffle_ps(t01, t23, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(t01, t23, _MM_SHUFFLE(3, 2, 3, 2)));
    /* u0 + u1: low half [s0, s2, ...], high half [s1, s3, ...] */
    const __m256 sums = _mm256_add_ps(_mm256_shuffle_ps(u, u, _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm256_shuffle_ps(u, u, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm_unpacklo_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1));
}

/* out[r] = x[r] * 1/sqrt(mean(x[r]^2) + eps) * scale, for rows of n; out may be x. */
void apr_rms_norm(const float *x, const float *scale, int64_t rows, int64_t n, float eps, float *out) {
    /* Rows are independent: a prompt's rows split over the threads (which row a thread takes never changes
     * a row's operations); one decode row stays on the calling thread. */
#pragma omp parallel for schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = out + r * n;
        const float inv = 1.0f / sqrtf(dot(xr, xr, n) / (float)n + eps);
        const __m256 vinv = _mm256_set1_ps(inv);
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vinv),
                                                  _mm256_loadu_ps(scale + i)));
        for (; i < n; i++) yr[i] = xr[i] * inv * scale[i];
    }
}

/* In place, NEOX rotation (halves): x [t][heads][d] with cos/sin [t][d] (halves duplicated, as HF builds
 * them): y_i = x_i cos_i - x_{i+h} sin_i and y_{i+h} = x_{i+h} cos_{i+h} + x_i sin_{i+h}, h = d/2. */
void apr_rope_neox(float *x, int64_t t, int64_t heads, int64_t d, const float *cos, const float *sin) {
    const int64_t h = d / 2;
#pragma omp parallel for schedule(static) if (t * heads * d >= 65536) /* positions are independent */
    for (int64_t p = 0; p < t; p++) {
        const float *c = cos + p * d, *s = sin + p * d;
        for (int64_t head = 0; head < heads; head++) {
            float *v = x + (p * heads + head) * d;
            int64_t i = 0;
            for (; i + 8 <= h; i += 8) {
                const __m256 lo = _mm256_loadu_ps(v + i), hi = _mm256_loadu_ps(v + i + h);
                const __m256 new_lo = _mm256_sub_ps(_mm256_mul_ps(lo, _mm256_loadu_ps(c + i)),
                                                    _mm256_mul_ps(hi, _mm256_loadu_ps(s + i)));
                const __m256 new_hi = _mm256_add_ps(_mm256_mul_ps(hi, _mm256_loadu_ps(c + i + h)),
                                                    _mm256_mul_ps(lo, _mm256_loadu_ps(s + i + h)));
                _mm256_storeu_ps(v + i, new_lo);
                _mm256_storeu_ps(v + i + h, new_hi);
            }
            for (; i < h; i++) {
                const float lo = v[i], hi = v[i + h];
                v[i] = lo * c[i] - hi * s[i];
                v[i + h] = hi * c[i + h] + lo * s[i + h];
            }
        }
    }
}

/* p[0..len) <- softmax(p); the exponentials in 8 lanes, the tail and the sums in order. */
static void softmax_in_place(float *p, int64_t len) {
    /* The maximum in 8 lanes (the same value in any order; fmaxf one at a time was a libm call each), four
     * independent chains: one chain waited on each max's latency, a third of the softmax's time. */
    __m256 vmax = _mm256_set1_ps(-INFINITY), vmax1 = vmax, vmax2 = vmax, vmax3 = vmax;
    int64_t j = 0;
    for (; j + 32 <= len; j += 32) {
        vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(p + j));
        vmax1 = _mm256_max_ps(vmax1, _mm256_loadu_ps(p + j + 8));
        vmax2 = _mm256_max_ps(vmax2, _mm256_loadu_ps(p + j + 16));
        vmax3 = _mm256_max_ps(vmax3, _mm256_loadu_ps(p + j + 24));
    }
    vmax = _mm256_max_ps(_mm256_max_ps(vmax, vmax1), _mm256_max_ps(vmax2, vmax3));
    for (; j + 8 <= len; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(p + j));
    float lanes[8], top = -INFINITY;
    _mm256_storeu_ps(lanes, vmax);
    for (int i = 0; i < 8; i++) top = lanes[i] > top ? lanes[i] : top;
    for (; j < len; j++) top = p[j] > top ? p[j] : top;
    const __m256 vtop = _mm256_set1_ps(top);
    /* The sum in 8 lanes as the exponentials come (hsum8, then the tail in order): one scalar chain of
     * additions over the row cost 4 cycles a position, ~20 % of a long prompt's attention. */
    __m256 vsum = _mm256_setzero_ps();
    j = 0;
#if defined(__AVX512F__)
    /* 16 exponentials at a time (the same function on every lane); the sum still adds 8 lanes at a time, the
     * low 8 then the high 8, as the loop below would. */
    const __m512 vtop16 = _mm512_set1_ps(top);
    for (; j + 16 <= len; j += 16) {
        const __m512 e = apr_exp_nonpositive16(_mm512_sub_ps(_mm512_loadu_ps(p + j), vtop16));
        _mm512_storeu_ps(p + j, e);
        vsum = _mm256_add_ps(vsum, _mm512_castps512_ps256(e));
        vsum = _mm256_add_ps(vsum, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
    }
#endif
    for (; j + 8 <= len; j += 8) {
        const __m256 e = apr_exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(p + j), vtop));
        _mm256_storeu_ps(p + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float total = hsum8(vsum);
    for (; j < len; j++) {
        p[j] = expf(p[j] - top);
        total += p[j];
    }
    const float inv = 1.0f / total;
    const __m256 vinv = _mm256_set1_ps(inv);
    j = 0;
#if defined(__AVX512F__)
    for (; j + 16 <= len; j += 16) _mm512_storeu_ps(p + j, _mm512_mul_ps(_mm512_loadu_ps(p + j), _mm512_set1_ps(inv)));
#endif
    for (; j + 8 <= len; j += 8) _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), vinv));
    for (; j < len; j++) p[j] *= inv;
}

/* Positions a block of attention keeps in L1 (BLOCK rows of K or V, 64 KiB at d = 128 ... fits twice). */
#define APR_ATTN_BLOCK 32

/* The KV cache holds float32 or fp16 (`half`): keys and values are read as 8 floats at a time either way
 * (F16C converts exactly), so the arithmetic below is the same for both, on the values the cache holds.
 * `half` is a constant wherever these are inlined: each kernel is built once per cache type. */
#define APR_INLINE static inline __attribute__((always_inline))

APR_INLINE __m256 kv_load8(const void *base, int64_t index, const int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + index)))
                : _mm256_loadu_ps((const float *)base + index);
}

APR_INLINE float kv_load1(const void *base, int64_t index, const int half) {
    return half ? _cvtsh_ss(((const uint16_t *)base)[index]) : ((const float *)base)[index];
}

/* base[index .. index + n) <- x[0..n), rounded to nearest even in fp16 caches. */
APR_INLINE void kv_store(void *base, int64_t index, const float *x, int64_t n, const int half) {
    if (!half) {
        for (int64_t e = 0; e < n; e++) ((float *)base)[index + e] = x[e];
        return;
    }
    uint16_t *out = (uint16_t *)base + index;
    int64_t e = 0;
    for (; e + 8 <= n; e += 8)
        _mm_storeu_si128((__m128i *)(out + e), _mm256_cvtps_ph(_mm256_loadu_ps(x + e), _MM_FROUND_TO_NEAREST_INT));
    for (; e < n; e++) out[e] = _cvtss_sh(x[e], _MM_FROUND_TO_NEAREST_INT);
}

/* Attention scores. Every score is computed by one arithmetic, whichever kernel below computes it: scale *
 * (hsum8 of one chain of 8-lane FMAs over q[0..d8) . k[0..d8) in order, d8 = d - d % 8, then the d % 8
 * remaining products added in order). So a score has the same bits in a decode step (apr_attend_one)
 * and in a prompt (apr_attend_run), whatever query vectors and keys are grouped together. The key at
 * element `at` of the cache `k`. */
APR_INLINE float score(const float *q, const void *k, int64_t at, int64_t d, float scale, const int half) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), kv_load8(k, at + i, half), acc);
    float s = hsum8(acc);
    for (; i < d; i++) s += q[i] * kv_load1(k, at + i, half);
    return s * scale;
}

/* The scores of `queries` (1 or 2) query vectors q0, q1 against the 4 consecutive keys at element `at` of
 * k, into p0[0..4) and p1[0..4). Two queries share each key load: 6 loads for 8 FMAs (one query: 5 for 4),
 * and 8 independent chains keep both FMA pipes busy. */
APR_INLINE void scores_x4(const float *q0, const float *q1, int queries, const void *k, int64_t at, int64_t d,
                          float scale, float *p0, float *p1, const int half) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t i = 0;
    if (queries == 2) {
        for (; i + 8 <= d; i += 8) {
            __m256 k0 = kv_load8(k, at + i, half), k1 = kv_load8(k, at + d + i, half);
            __m256 k2 = kv_load8(k, at + 2 * d + i, half), k3 = kv_load8(k, at + 3 * d + i, half);
            /* Keys in registers: GCC otherwise folds each key load into both of its FMAs (10 loads, not 6). */
            __asm__("" : "+x"(k0), "+x"(k1), "+x"(k2), "+x"(k3));
            const __m256 x = _mm256_loadu_ps(q0 + i), y = _mm256_loadu_ps(q1 + i);
            a0 = _mm256_fmadd_ps(x, k0, a0);
            a1 = _mm256_fmadd_ps(x, k1, a1);
            a2 = _mm256_fmadd_ps(x, k2, a2);
            a3 = _mm256_fmadd_ps(x, k3, a3);
            b0 = _mm256_fmadd_ps(y, k0, b0);
            b1 = _mm256_fmadd_ps(y, k1, b1);
            b2 = _mm256_fmadd_ps(y, k2, b2);
            b3 = _mm256_fmadd_ps(y, k3, b3);
        }
    } else {
        for (; i + 8 <= d; i += 8) {
            const __m256 x = _mm256_loadu_ps(q0 + i);
            a0 = _mm256_fmadd_ps(x, kv_load8(k, at + i, half), a0);
            a1 = _mm256_fmadd_ps(x, kv_load8(k, at + d + i, half), a1);
            a2 = _mm256_fmadd_ps(x, kv_load8(k, at + 2 * d + i, half), a2);
            a3 = _mm256_fmadd_ps(x, kv_load8(k, at + 3 * d + i, half), a3);
        }
    }
    if (i == d) { /* no tail: scale the 4 sums at once */
        const __m128 vscale = _mm_set1_ps(scale);
        _mm_storeu_ps(p0, _mm_mul_ps(hsum8x4(a0, a1, a2, a3), vscale));
        if (queries == 2) _mm_storeu_ps(p1, _mm_mul_ps(hsum8x4(b0, b1, b2, b3), vscale));
        return;
    }
    float sa[4], sb[4];
    _mm_storeu_ps(sa, hsum8x4(a0, a1, a2, a3));
    _mm_storeu_ps(sb, hsum8x4(b0, b1, b2, b3));
    for (int j = 0; j < 4; j++) {
        for (int64_t e = i; e < d; e++) sa[j] += q0[e] * kv_load1(k, at + j * d + e, half);
        p0[j] = sa[j] * scale;
        if (queries == 2) {
            for (int64_t e = i; e < d; e++) sb[j] += q1[e] * kv_load1(k, at + j * d + e, half);
            p1[j] = sb[j] * scale;
        }
    }
}

/* Scores of query vectors q[v] (v < count; the one at v is at q + v * q_stride, its scores at
 * p + v * p_stride) against keys a..b-1 of k ([.][d]): pairs of vectors, 4 keys at a time. */
APR_INLINE void scores_span(const float *q, int64_t q_stride, int64_t count, const void *k, int64_t a, int64_t b,
                            int64_t d, float scale, float *p, int64_t p_stride, const int half) {
    for (int64_t v = 0; v < count; v += 2) {
        const int queries = v + 1 < count ? 2 : 1;
        const float *q0 = q + v * q_stride, *q1 = q0 + (queries == 2 ? q_stride : 0);
        float *p0 = p + v * p_stride, *p1 = p0 + (queries == 2 ? p_stride : 0);
        int64_t j = a;
        for (; j + 4 <= b; j += 4) scores_x4(q0, q1, queries, k, j * d, d, scale, p0 + j, p1 + j, half);
        for (; j < b; j++) {
            p0[j] = score(q0, k, j * d, d, scale, half);
            if (queries == 2) p1[j] = score(q1, k, j * d, d, scale, half);
        }
    }
}

/* out[m'][e] += sum over j in a..b-1 of p[m'][j] v[j][e] for M query vectors (p[m'] at p + m' * p_stride,
 * out[m'] at out + m' * d; v [.][d]). Elements below d - d % 64 take one FMA chain over j in order, the rest a
 * multiply and an add, so an output element has the same bits however its positions are split into blocks
 * and its vectors grouped (the partial sums wait in out between blocks). M vectors x 32 elements at a time:
 * each value row's 4 loads serve M rows of FMAs (8 elements of 1 vector: 8 loads and a broadcast for 8). */
APR_INLINE void weighted_group(const float *p, int64_t p_stride, const int m, const void *v, int64_t a, int64_t b,
                               int64_t d, float *out, const int half) {
    const int64_t d64 = d - d % 64;
    for (int64_t i0 = 0; i0 < d64; i0 += 32) {
        __m256 acc[3][4];
        for (int r = 0; r < m; r++)
            for (int c = 0; c < 4; c++) acc[r][c] = _mm256_loadu_ps(out + r * d + i0 + 8 * c);
        for (int64_t j = a; j < b; j++) {
            const int64_t at = j * d + i0;
            const __m256 v0 = kv_load8(v, at, half), v1 = kv_load8(v, at + 8, half);
            const __m256 v2 = kv_load8(v, at + 16, half), v3 = kv_load8(v, at + 24, half);
            for (int r = 0; r < m; r++) {
                const __m256 w = _mm256_broadcast_ss(p + r * p_stride + j);
                acc[r][0] = _mm256_fmadd_ps(w, v0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(w, v1, acc[r][1]);
                acc[r][2] = _mm256_fmadd_ps(w, v2, acc[r][2]);
                acc[r][3] = _mm256_fmadd_ps(w, v3, acc[r][3]);
            }
        }
        for (int r = 0; r < m; r++)
            for (int c = 0; c < 4; c++) _mm256_storeu_ps(out + r * d + i0 + 8 * c, acc[r][c]);
    }
    for (int r = 0; r < m; r++)
        for (int64_t e = d64; e < d; e++) {
            float acc = out[r * d + e];
            for (int64_t j = a; j < b; j++) acc += p[r * p_stride + j] * kv_load1(v, j * d + e, half);
            out[r * d + e] = acc;
        }
}

#if defined(__AVX512F__)
/* The 512-bit attention of the avx512vnni and amx builds: the same float operations on every score and every
 * output element as the 256-bit kernels above, lane for lane, on twice the lanes (the variant test checks the
 * bits). A score is one 8-lane FMA chain over d, so a 512-bit register carries two of them: two query vectors
 * side by side (pack_query_pairs) against one key broadcast to both halves. An output element is its own chain
 * over positions, so the weighted sums simply take 16 elements a register. */
#define APR_ATTN_WIDE 1

/* qp[(s * chunks + c) * 16 ..]: the 8 floats of chunk c (elements 8c .. 8c + 7, chunks = d / 8) of query vector
 * 2s in the low half and of vector 2s + 1 in the high half (vector 2s again when count is odd); vector v is at
 * q + v * q_stride. */
static inline void pack_query_pairs(const float *q, int64_t q_stride, int64_t count, int64_t chunks, float *qp) {
    for (int64_t s = 0; s < (count + 1) / 2; s++) {
        const float *lo = q + 2 * s * q_stride, *hi = 2 * s + 1 < count ? lo + q_stride : lo;
        for (int64_t c = 0; c < chunks; c++) {
            _mm256_storeu_ps(qp + (s * chunks + c) * 16, _mm256_loadu_ps(lo + 8 * c));
            _mm256_storeu_ps(qp + (s * chunks + c) * 16 + 8, _mm256_loadu_ps(hi + 8 * c));
        }
    }
}

/* The 8 values from element `index` of a cache (part of one key) in both halves of a register (a load-unit broadcast). */
APR_INLINE __m512 kv_broadcast8(const void *base, int64_t index, const int half) {
    return half ? _mm512_cvtph_ps(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + index))))
                : _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps((const float *)base + index))));
}

/* hsum8x4 of the 8 halves of z0..z3 at once, each sum the bits of hsum8 of its half (the same additions in the
 * same order, on 512-bit registers: half the shuffles): lanes 0..3 the low halves' sums, 4..7 the high ones'. */
static inline __m256 hsum8x4_halves(__m512 z0, __m512 z1, __m512 z2, __m512 z3) {
    /* t = each half's low 128 bits + its high 128 bits: [z0.lo, z0.hi, z1.lo, z1.hi] and the same of z2, z3 */
    const __m512 t01 = _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_f32x4(z0, z1, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 t23 = _mm512_add_ps(_mm512_shuffle_f32x4(z2, z3, _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_f32x4(z2, z3, _MM_SHUFFLE(3, 1, 3, 1)));
    /* u = (t0 + t2, t1 + t3) per 128-bit lane, lane i: half i of z0 (or z1) beside the same half of z2 (or z3) */
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(3, 2, 3, 2)));
    /* u0 + u1: lanes [z0.lo z2.lo | z0.hi z2.hi | z1.lo z3.lo | z1.hi z3.hi] (each twice) */
    const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(u, u, _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_ps(u, u, _MM_SHUFFLE(3, 1, 3, 1)));
    /* lane 0 with lane 2 and lane 1 with lane 3: [z0.lo z1.lo z2.lo z3.lo | z0.hi z1.hi z2.hi z3.hi] */
    const __m512 both = _mm512_unpacklo_ps(sums, _mm512_shuffle_f32x4(sums, sums, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm512_castps512_ps256(both);
}

/* The scores of the 2 * `pairs` (1..3) query vectors packed at qp (from vector `first`, vectors at q +
 * v * q_stride, count in all) against the 4 consecutive keys from element `at` of k, into p[v][0..4)
 * (p[v] at p + v * p_stride): one register per pair and key, the halves summed as hsum8 sums them, then the
 * d % 8 tail in order and the scale, as scores_x4 does. */
APR_INLINE void scores_pairs_x4(const float *qp, const int pairs, int64_t chunks, const float *q, int64_t q_stride,
                                int64_t first, int64_t count, const void *k, int64_t at, int64_t d, float scale,
                                float *p, int64_t p_stride, const int half) {
    __m512 acc[3][4];
    for (int s = 0; s < pairs; s++)
        for (int j = 0; j < 4; j++) acc[s][j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; c++) {
        __m512 k0 = kv_broadcast8(k, at + 8 * c, half), k1 = kv_broadcast8(k, at + d + 8 * c, half);
        __m512 k2 = kv_broadcast8(k, at + 2 * d + 8 * c, half), k3 = kv_broadcast8(k, at + 3 * d + 8 * c, half);
        for (int s = 0; s < pairs; s++) {
            __m512 x = _mm512_loadu_ps(qp + (s * chunks + c) * 16);
            __asm__("" : "+v"(x)); /* one load for 4 FMAs: GCC otherwise folds it into each */
            acc[s][0] = _mm512_fmadd_ps(x, k0, acc[s][0]);
            acc[s][1] = _mm512_fmadd_ps(x, k1, acc[s][1]);
            acc[s][2] = _mm512_fmadd_ps(x, k2, acc[s][2]);
            acc[s][3] = _mm512_fmadd_ps(x, k3, acc[s][3]);
        }
    }
    const int64_t d8 = 8 * chunks;
    for (int s = 0; s < pairs; s++) {
        const __m256 sums = hsum8x4_halves(acc[s][0], acc[s][1], acc[s][2], acc[s][3]);
        const int64_t v = first + 2 * s;
        const int both = v + 1 < count;
        if (d8 == d) { /* no tail: scale the 8 sums at once */
            const __m256 scaled = _mm256_mul_ps(sums, _mm256_set1_ps(scale));
            _mm_storeu_ps(p + v * p_stride, _mm256_castps256_ps128(scaled));
            if (both) _mm_storeu_ps(p + (v + 1) * p_stride, _mm256_extractf128_ps(scaled, 1));
            continue;
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, sums);
        for (int h = 0; h < 1 + both; h++)
            for (int j = 0; j < 4; j++) {
                float sum = lanes[4 * h + j];
                for (int64_t e = d8; e < d; e++) sum += q[(v + h) * q_stride + e] * kv_load1(k, at + j * d + e, half);
                p[(v + h) * p_stride + j] = sum * scale;
            }
    }
}

/* scores_span on 512-bit registers: the `count` query vectors at q (q_stride apart; packed at qp by
 * pack_query_pairs) against keys a..b-1 of k ([.][d]), 3 pairs of vectors and 4 keys at a time. */
APR_INLINE void scores_span_wide(const float *qp, const float *q, int64_t q_stride, int64_t count, const void *k,
                                 int64_t a, int64_t b, int64_t d, float scale, float *p, int64_t p_stride,
                                 const int half) {
    const int64_t chunks = d / 8, pairs = (count + 1) / 2;
    for (int64_t s = 0; s < pairs; s += 3) {
        const int64_t group = pairs - s < 3 ? pairs - s : 3;
        const float *qs = qp + s * chunks * 16;
        int64_t j = a;
        for (; j + 4 <= b; j += 4) {
            if (group == 3)
                scores_pairs_x4(qs, 3, chunks, q, q_stride, 2 * s, count, k, j * d, d, scale, p + j, p_stride, half);
            else if (group == 2)
                scores_pairs_x4(qs, 2, chunks, q, q_stride, 2 * s, count, k, j * d, d, scale, p + j, p_stride, half);
            else
                scores_pairs_x4(qs, 1, chunks, q, q_stride, 2 * s, count, k, j * d, d, scale, p + j, p_stride, half);
        }
        for (; j < b; j++)
            for (int64_t v = 2 * s; v < 2 * (s + group) && v < count; v++)
                p[v * p_stride + j] = score(q + v * q_stride, k, j * d, d, scale, half);
    }
}

APR_INLINE __m512 kv_load16(const void *base, int64_t index, const int half) {
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + index)))
                : _mm512_loadu_ps((const float *)base + index);
}

/* weighted_group on 512-bit registers: M vectors x 64 elements at a time, each element the same FMA chain. */
APR_INLINE void weighted_group_wide(const float *p, int64_t p_stride, const int m, const void *v, int64_t a,
                                    int64_t b, int64_t d, float *out, const int half) {
    const int64_t d64 = d - d % 64;
    for (int64_t i0 = 0; i0 < d64; i0 += 64) {
        __m512 acc[3][4];
        for (int r = 0; r < m; r++)
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_loadu_ps(out + r * d + i0 + 16 * c);
        for (int64_t j = a; j < b; j++) {
            const int64_t at = j * d + i0;
            __m512 v0 = kv_load16(v, at, half), v1 = kv_load16(v, at + 16, half);
            __m512 v2 = kv_load16(v, at + 32, half), v3 = kv_load16(v, at + 48, half);
            /* Values in registers: GCC otherwise folds each load into its M FMAs, and the 512-bit loads (two a
             * cycle) become the bound. */
            __asm__("" : "+v"(v0), "+v"(v1), "+v"(v2), "+v"(v3));
            for (int r = 0; r < m; r++) {
                const __m512 w = _mm512_set1_ps(p[r * p_stride + j]);
                acc[r][0] = _mm512_fmadd_ps(w, v0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(w, v1, acc[r][1]);
                acc[r][2] = _mm512_fmadd_ps(w, v2, acc[r][2]);
                acc[r][3] = _mm512_fmadd_ps(w, v3, acc[r][3]);
            }
        }
        for (int r = 0; r < m; r++)
            for (int c = 0; c < 4; c++) _mm512_storeu_ps(out + r * d + i0 + 16 * c, acc[r][c]);
    }
    for (int r = 0; r < m; r++)
        for (int64_t e = d64; e < d; e++) {
            float acc = out[r * d + e];
            for (int64_t j = a; j < b; j++) acc += p[r * p_stride + j] * kv_load1(v, j * d + e, half);
            out[r * d + e] = acc;
        }
}
#endif

/* weighted_group (weighted_group_wide where built) over `count` vectors, 3 at a time. */
APR_INLINE void weighted_span(const float *p, int64_t p_stride, int64_t count, const void *v, int64_t a, int64_t b,
                              int64_t d, float *out, const int half) {
#if defined(APR_ATTN_WIDE)
#define WEIGHTED_GROUP weighted_group_wide
#else
#define WEIGHTED_GROUP weighted_group
#endif
    int64_t w = 0;
    for (; w + 3 <= count; w += 3) WEIGHTED_GROUP(p + w * p_stride, p_stride, 3, v, a, b, d, out + w * d, half);
    if (count - w == 2) WEIGHTED_GROUP(p + w * p_stride, p_stride, 2, v, a, b, d, out + w * d, half);
    if (count - w == 1) WEIGHTED_GROUP(p + w * p_stride, p_stride, 1, v, a, b, d, out + w * d, half);
#undef WEIGHTED_GROUP
}

/* Where a build has the wide kernels, the query vectors of one row (or one decode step) are packed in pairs
 * once per unit (packed_query_floats floats; 0 without them) and every score and weighted sum takes 512 bits. */
static inline int64_t packed_query_floats(int64_t count, int64_t d) {
#if defined(APR_ATTN_WIDE)
    return (count + 1) / 2 * (d / 8) * 16;
#else
    (void)count, (void)d;
    return 0;
#endif
}

static inline void pack_queries(const float *q, int64_t q_stride, int64_t count, int64_t d, float *qp) {
#if defined(APR_ATTN_WIDE)
    pack_query_pairs(q, q_stride, count, d / 8, qp);
#else
    (void)q, (void)q_stride, (void)count, (void)d, (void)qp;
#endif
}

/* scores_span of `count` vectors at q (packed at qp by pack_queries). */
APR_INLINE void scores_of(const float *qp, const float *q, int64_t q_stride, int64_t count, const void *k, int64_t a,
                          int64_t b, int64_t d, float scale, float *p, int64_t p_stride, const int half) {
#if defined(APR_ATTN_WIDE)
    scores_span_wide(qp, q, q_stride, count, k, a, b, d, scale, p, p_stride, half);
#else
    (void)qp;
    scores_span(q, q_stride, count, k, a, b, d, scale, p, p_stride, half);
#endif
}

/* What every unit of one attention call shares: the queries, the layer's cache, where the outputs go, the
 * shapes. */
typedef struct {
    const float *q;
    void *keys, *values;
    float *out;
    int64_t kv_heads, rep, cap, d, window;
    float scale;
} attend_job;

/* The start of kv head g in a cache of `half` (fp16) or float32 elements. */
APR_INLINE const void *kv_head(const void *cache, int64_t g, const attend_job *job, const int half) {
    const int64_t at = g * job->cap * job->d;
    return half ? (const void *)((const uint16_t *)cache + at) : (const void *)((const float *)cache + at);
}

/* apr_attend_one's unit: query heads first .. first + n - 1 (all reading kv head g) over positions lo .. pos.
 * Returns 1 when out of memory. Inlined once per cache type (half is a constant in each copy). */
APR_INLINE int attend_one_unit(const attend_job *job, int64_t lo, int64_t pos, int64_t g, int64_t first, int64_t n,
                               const int half) {
    const int64_t d = job->d, len = pos - lo + 1, packed = packed_query_floats(n, d);
    float *p = malloc((size_t)(n * len + packed) * sizeof(float)), *qp = p + n * len;
    if (!p) return 1;
    /* p + r * len - lo: head r's scores, indexed by position */
    const void *kh = kv_head(job->keys, g, job, half), *vh = kv_head(job->values, g, job, half);
    const float *q = job->q + first * d;
    float *out = job->out + first * d;
    pack_queries(q, d, n, d, qp);
    for (int64_t j0 = lo; j0 <= pos; j0 += APR_ATTN_BLOCK) {
        const int64_t j1 = j0 + APR_ATTN_BLOCK < pos + 1 ? j0 + APR_ATTN_BLOCK : pos + 1;
        scores_of(qp, q, d, n, kh, j0, j1, d, job->scale, p - lo, len, half);
    }
    for (int64_t r = 0; r < n; r++) softmax_in_place(p + r * len, len);
    for (int64_t i = 0; i < n * d; i++) out[i] = 0.0f;
    for (int64_t j0 = lo; j0 <= pos; j0 += APR_ATTN_BLOCK) {
        const int64_t j1 = j0 + APR_ATTN_BLOCK < pos + 1 ? j0 + APR_ATTN_BLOCK : pos + 1;
        weighted_span(p - lo, len, n, vh, j0, j1, d, out, half);
    }
    free(p);
    return 0;
}

/* One new token of one sequence: writes its key and value (k_new, v_new [kv_heads][d]) at position pos
 * of the layer's cache (keys, values [kv_heads][cap][d], float32 or fp16 as `half` says), then for each of
 * the kv_heads * rep query heads (q [kv_heads * rep][d]; query head g * rep + r reads kv head g) attends over
 * positions lo .. pos, lo = max(0, pos - window + 1) (window 0: no window): softmax(scale * q.k) weighted sum
 * of values into out [kv_heads * rep][d]. Returns nonzero when out of memory or pos is out of range.
 *
 * Threads take the query heads of a kv head together (split in parts only when there are fewer kv heads
 * than threads), so each reads that kv head's keys and values from memory once, block by block of
 * APR_ATTN_BLOCK positions serving every head from L1: for Qwen2.5-1.5B's 28 layers at 4096 positions,
 * 25 -> 16.5 ms a token than a head at a time (13.3 with the cache on huge pages). A head's numbers do not
 * depend on the split or the thread count. */
int apr_attend_one(const float *q, const float *k_new, const float *v_new, void *keys, void *values,
                   int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos, int64_t window, float scale,
                   float *out, int half) {
    if (pos < 0 || pos >= cap) return 2;
    for (int64_t g = 0; g < kv_heads; g++) {
        kv_store(keys, (g * cap + pos) * d, k_new + g * d, d, half);
        kv_store(values, (g * cap + pos) * d, v_new + g * d, d, half);
    }
    const attend_job job = {q, keys, values, out, kv_heads, rep, cap, d, window, scale};
    const int64_t lo = (window > 0 && pos - window + 1 > 0) ? pos - window + 1 : 0, len = pos - lo + 1;
    const int threads = omp_get_max_threads();
    int64_t parts = (threads + kv_heads - 1) / kv_heads;
    if (parts > rep) parts = rep;
    const int64_t per_part = (rep + parts - 1) / parts, units = kv_heads * parts;
    int failed = 0;
#pragma omp parallel for schedule(static) if (units > 1 && kv_heads * rep * len * d >= 32768)
    for (int64_t unit = 0; unit < units; unit++) {
        const int64_t g = unit / parts, first = g * rep + (unit % parts) * per_part;
        const int64_t end = g * rep + rep < first + per_part ? g * rep + rep : first + per_part;
        if (first >= end) continue;
        const int rc = half ? attend_one_unit(&job, lo, pos, g, first, end - first, 1)
                            : attend_one_unit(&job, lo, pos, g, first, end - first, 0);
        if (rc) {
#pragma omp atomic write
            failed = 1;
        }
    }
    return failed;
}

/* Query rows attending together: ATTN_RUN_ROWS positions x the rep query heads of one kv head share each
 * block of keys and values read from memory (a prompt at 4000 positions read every kv head's 4 MB of keys
 * and values once a row; now once per ATTN_RUN_ROWS rows, from L1 for all of them). */
#define APR_ATTN_RUN_ROWS 16

/* apr_attend_run's unit: rows first .. first + APR_ATTN_RUN_ROWS - 1 (of the n from pos0) x the rep query heads of
 * kv head g. Returns 1 when out of memory. Inlined once per cache type. */
APR_INLINE int attend_run_unit(const attend_job *job, int64_t pos0, int64_t n, int64_t g, int64_t first,
                               const int half) {
    const int64_t d = job->d, rep = job->rep, heads = job->kv_heads * rep, window = job->window;
    const int64_t rows = n - first < APR_ATTN_RUN_ROWS ? n - first : APR_ATTN_RUN_ROWS;
    const int64_t vectors = rows * rep;
    int64_t lo[APR_ATTN_RUN_ROWS], hi[APR_ATTN_RUN_ROWS]; /* row i of the block: positions lo[i] .. hi[i] - 1 */
    for (int64_t i = 0; i < rows; i++) {
        const int64_t pos = pos0 + first + i;
        lo[i] = (window > 0 && pos - window + 1 > 0) ? pos - window + 1 : 0;
        hi[i] = pos + 1;
    }
    const int64_t end = hi[rows - 1], stride = hi[rows - 1] - lo[rows - 1];
    /* p: per query vector (row i, head h: vector i * rep + h) its scores at p + vector * stride, from lo[i] */
    const int64_t packed = packed_query_floats(rep, d); /* a row's */
    float *p = malloc((size_t)(vectors * stride + rows * packed) * sizeof(float)), *qp = p + vectors * stride;
    if (!p) return 1;
    const void *kg = kv_head(job->keys, g, job, half), *vg = kv_head(job->values, g, job, half);
    const float *q = job->q + (first * heads + g * rep) * d; /* row i's at q + i * heads * d */
    float *out = job->out + (first * heads + g * rep) * d;
    for (int64_t i = 0; i < rows; i++) pack_queries(q + i * heads * d, d, rep, d, qp + i * packed);
    for (int64_t j0 = lo[0]; j0 < end; j0 += APR_ATTN_BLOCK) {
        const int64_t j1 = j0 + APR_ATTN_BLOCK < end ? j0 + APR_ATTN_BLOCK : end;
        for (int64_t i = 0; i < rows; i++) {
            const int64_t a = j0 > lo[i] ? j0 : lo[i], b = j1 < hi[i] ? j1 : hi[i];
            if (a < b)
                scores_of(qp + i * packed, q + i * heads * d, d, rep, kg, a, b, d, job->scale,
                          p + i * rep * stride - lo[i], stride, half);
        }
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t h = 0; h < rep; h++) {
            softmax_in_place(p + (i * rep + h) * stride, hi[i] - lo[i]);
            for (int64_t e = 0; e < d; e++) out[(i * heads + h) * d + e] = 0.0f;
        }
    for (int64_t j0 = lo[0]; j0 < end; j0 += APR_ATTN_BLOCK) {
        const int64_t j1 = j0 + APR_ATTN_BLOCK < end ? j0 + APR_ATTN_BLOCK : end;
        for (int64_t i = 0; i < rows; i++) {
            const int64_t a = j0 > lo[i] ? j0 : lo[i], b = j1 < hi[i] ? j1 : hi[i];
            if (a < b) weighted_span(p + i * rep * stride - lo[i], stride, rep, vg, a, b, d, out + i * heads * d, half);
        }
    }
    free(p);
    return 0;
}

/* The attention of one sequence's consecutive new positions pos0 .. pos0 + n - 1 (a prompt, or the rows a
 * lookup step verifies), giving every row the bits apr_attend_one gives it alone: stores the n keys and
 * values (k_new, v_new [n][kv_heads][d]) at their positions of the layer's cache (keys, values
 * [kv_heads][cap][d], float32 or fp16 as `half` says), then row i's query heads (q [n][kv_heads * rep][d])
 * attend over lo_i .. pos0 + i (lo_i = max(0, pos0 + i - window + 1), window 0: none) into out
 * [n][kv_heads * rep][d]. A row sees no position after its own, so writing all the keys first is causal
 * attention.
 *
 * Why the bits are apr_attend_one's: a query vector's scores are the same dots (score's arithmetic, see
 * above); its softmax is softmax_in_place over exactly its own lo_i .. pos_i; each output element is one
 * chain of FMAs over its positions in order (weighted_group). Only which query vectors share a key block's
 * loads changes. So a prompt's rows are computed as decode computes them one at a time, whatever the
 * chunking of the prompt, the blocking here or the thread count. The work is split into (kv head, block of
 * rows) units: the score buffer is the block's rows x rep heads x their longest span. Returns 0, 1 (no
 * memory) or 2 (a position outside the cache). */
int apr_attend_run(const float *q, const float *k_new, const float *v_new, void *keys, void *values,
                   int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos0, int64_t n, int64_t window,
                   float scale, float *out, int half) {
    if (pos0 < 0 || n < 1 || pos0 + n > cap) return 2;
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < kv_heads; g++) {
            kv_store(keys, (g * cap + pos0 + i) * d, k_new + (i * kv_heads + g) * d, d, half);
            kv_store(values, (g * cap + pos0 + i) * d, v_new + (i * kv_heads + g) * d, d, half);
        }
    const attend_job job = {q, keys, values, out, kv_heads, rep, cap, d, window, scale};
    const int64_t blocks = (n + APR_ATTN_RUN_ROWS - 1) / APR_ATTN_RUN_ROWS, units = kv_heads * blocks;
    int failed = 0;
    /* Later rows attend over more positions: dynamic scheduling, the longest blocks first. */
#pragma omp parallel for schedule(dynamic, 1) if (units > 1)
    for (int64_t unit = 0; unit < units; unit++) {
        const int64_t g = unit % kv_heads, first = (blocks - 1 - unit / kv_heads) * APR_ATTN_RUN_ROWS;
        const int rc = half ? attend_run_unit(&job, pos0, n, g, first, 1) : attend_run_unit(&job, pos0, n, g, first, 0);
        if (rc) {
#pragma omp atomic write
            failed = 1;
        }
    }
    return failed;
}
