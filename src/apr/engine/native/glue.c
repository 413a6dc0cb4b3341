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
    /* The maximum in 8 lanes (the same value in any order; fmaxf one at a time was a libm call each) */
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
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
    for (j = 0; j + 8 <= len; j += 8) _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), vinv));
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

/* weighted_group over `count` vectors, 3 at a time. */
APR_INLINE void weighted_span(const float *p, int64_t p_stride, int64_t count, const void *v, int64_t a, int64_t b,
                              int64_t d, float *out, const int half) {
    int64_t w = 0;
    for (; w + 3 <= count; w += 3) weighted_group(p + w * p_stride, p_stride, 3, v, a, b, d, out + w * d, half);
    if (count - w == 2) weighted_group(p + w * p_stride, p_stride, 2, v, a, b, d, out + w * d, half);
    if (count - w == 1) weighted_group(p + w * p_stride, p_stride, 1, v, a, b, d, out + w * d, half);
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
APR_INLINE int attend_one(const float *q, const float *k_new, const float *v_new, void *keys, void *values,
                          int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos, int64_t window,
                          float scale, float *out, const int half) {
    if (pos < 0 || pos >= cap) return 2;
    for (int64_t g = 0; g < kv_heads; g++) {
        kv_store(keys, (g * cap + pos) * d, k_new + g * d, d, half);
        kv_store(values, (g * cap + pos) * d, v_new + g * d, d, half);
    }
    const int64_t lo = (window > 0 && pos - window + 1 > 0) ? pos - window + 1 : 0;
    const int64_t len = pos - lo + 1;
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
        const int64_t n = end - first;
        float *p = malloc((size_t)(n * len) * sizeof(float));
        if (!p) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        /* p + r * len - lo: head r's scores, indexed by position */
        const int64_t head = g * cap * d;
        const void *kh = half ? (const void *)((const uint16_t *)keys + head) : (const void *)((const float *)keys + head);
        const void *vh = half ? (const void *)((const uint16_t *)values + head) : (const void *)((const float *)values + head);
        for (int64_t j0 = lo; j0 <= pos; j0 += APR_ATTN_BLOCK) {
            const int64_t j1 = j0 + APR_ATTN_BLOCK < pos + 1 ? j0 + APR_ATTN_BLOCK : pos + 1;
            scores_span(q + first * d, d, n, kh, j0, j1, d, scale, p - lo, len, half);
        }
        for (int64_t r = 0; r < n; r++) softmax_in_place(p + r * len, len);
        for (int64_t i = 0; i < n * d; i++) out[first * d + i] = 0.0f;
        for (int64_t j0 = lo; j0 <= pos; j0 += APR_ATTN_BLOCK) {
            const int64_t j1 = j0 + APR_ATTN_BLOCK < pos + 1 ? j0 + APR_ATTN_BLOCK : pos + 1;
            weighted_span(p - lo, len, n, vh, j0, j1, d, out + first * d, half);
        }
        free(p);
    }
    return failed;
}

int apr_attend_one(const float *q, const float *k_new, const float *v_new, void *keys, void *values,
                   int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos, int64_t window, float scale,
                   float *out, int half) {
    return half ? attend_one(q, k_new, v_new, keys, values, kv_heads, rep, cap, d, pos, window, scale, out, 1)
                : attend_one(q, k_new, v_new, keys, values, kv_heads, rep, cap, d, pos, window, scale, out, 0);
}

/* Query rows attending together: ATTN_RUN_ROWS positions x the rep query heads of one kv head share each
 * block of keys and values read from memory (a prompt at 4000 positions read every kv head's 4 MB of keys
 * and values once a row; now once per ATTN_RUN_ROWS rows, from L1 for all of them). */
#define APR_ATTN_RUN_ROWS 16

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
APR_INLINE int attend_run(const float *q, const float *k_new, const float *v_new, void *keys, void *values,
                          int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos0, int64_t n,
                          int64_t window, float scale, float *out, const int half) {
    if (pos0 < 0 || n < 1 || pos0 + n > cap) return 2;
    const int64_t heads = kv_heads * rep;
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < kv_heads; g++) {
            kv_store(keys, (g * cap + pos0 + i) * d, k_new + (i * kv_heads + g) * d, d, half);
            kv_store(values, (g * cap + pos0 + i) * d, v_new + (i * kv_heads + g) * d, d, half);
        }
    const int64_t blocks = (n + APR_ATTN_RUN_ROWS - 1) / APR_ATTN_RUN_ROWS, units = kv_heads * blocks;
    int failed = 0;
    /* Later rows attend over more positions: dynamic scheduling, the longest blocks first. */
#pragma omp parallel for schedule(dynamic, 1) if (units > 1)
    for (int64_t unit = 0; unit < units; unit++) {
        const int64_t g = unit % kv_heads, block = blocks - 1 - unit / kv_heads;
        const int64_t first = block * APR_ATTN_RUN_ROWS;
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
        float *p = malloc((size_t)(vectors * stride) * sizeof(float));
        if (!p) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        const int64_t head = g * cap * d;
        const void *kg = half ? (const void *)((const uint16_t *)keys + head) : (const void *)((const float *)keys + head);
        const void *vg = half ? (const void *)((const uint16_t *)values + head) : (const void *)((const float *)values + head);
        for (int64_t j0 = lo[0]; j0 < end; j0 += APR_ATTN_BLOCK) {
            const int64_t j1 = j0 + APR_ATTN_BLOCK < end ? j0 + APR_ATTN_BLOCK : end;
            for (int64_t i = 0; i < rows; i++) {
                const int64_t a = j0 > lo[i] ? j0 : lo[i], b = j1 < hi[i] ? j1 : hi[i];
                if (a < b)
                    scores_span(q + ((first + i) * heads + g * rep) * d, d, rep, kg, a, b, d, scale,
                                p + i * rep * stride - lo[i], stride, half);
            }
        }
        for (int64_t i = 0; i < rows; i++)
            for (int64_t h = 0; h < rep; h++) {
                softmax_in_place(p + (i * rep + h) * stride, hi[i] - lo[i]);
                float *ov = out + ((first + i) * heads + g * rep + h) * d;
                for (int64_t e = 0; e < d; e++) ov[e] = 0.0f;
            }
        for (int64_t j0 = lo[0]; j0 < end; j0 += APR_ATTN_BLOCK) {
            const int64_t j1 = j0 + APR_ATTN_BLOCK < end ? j0 + APR_ATTN_BLOCK : end;
            for (int64_t i = 0; i < rows; i++) {
                const int64_t a = j0 > lo[i] ? j0 : lo[i], b = j1 < hi[i] ? j1 : hi[i];
                if (a < b)
                    weighted_span(p + i * rep * stride - lo[i], stride, rep, vg, a, b, d,
                                  out + ((first + i) * heads + g * rep) * d, half);
            }
        }
        free(p);
    }
    return failed;
}

int apr_attend_run(const float *q, const float *k_new, const float *v_new, void *keys, void *values,
                   int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos0, int64_t n, int64_t window,
                   float scale, float *out, int half) {
    return half ? attend_run(q, k_new, v_new, keys, values, kv_heads, rep, cap, d, pos0, n, window, scale, out, 1)
                : attend_run(q, k_new, v_new, keys, values, kv_heads, rep, cap, d, pos0, n, window, scale, out, 0);
}
