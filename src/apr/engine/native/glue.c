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

int apr_glue_abi(void) { return 3; }

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

/* Attention scores. Every score is computed by one arithmetic, whichever kernel below computes it: scale *
 * (hsum8 of one chain of 8-lane FMAs over q[0..d8) . k[0..d8) in order, d8 = d - d % 8, then the d % 8
 * remaining products added in order). So a score has the same bits in a decode step (apr_attend_one)
 * and in a prompt (apr_attend_run), whatever query vectors and keys are grouped together. */
static inline float score(const float *q, const float *k, int64_t d, float scale) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), acc);
    float s = hsum8(acc);
    for (; i < d; i++) s += q[i] * k[i];
    return s * scale;
}

/* The scores of `queries` (1 or 2) query vectors q0, q1 against 4 consecutive keys k [4][d], into p0[0..4)
 * and p1[0..4). Two queries share each key load: 6 loads for 8 FMAs (one query: 5 for 4), and 8
 * independent chains keep both FMA pipes busy. */
static inline void scores_x4(const float *q0, const float *q1, int queries, const float *k, int64_t d, float scale,
                             float *p0, float *p1) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t i = 0;
    if (queries == 2) {
        for (; i + 8 <= d; i += 8) {
            __m256 k0 = _mm256_loadu_ps(k + i), k1 = _mm256_loadu_ps(k + d + i);
            __m256 k2 = _mm256_loadu_ps(k + 2 * d + i), k3 = _mm256_loadu_ps(k + 3 * d + i);
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
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + i), a0);
            a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + d + i), a1);
            a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 2 * d + i), a2);
            a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + 3 * d + i), a3);
        }
    }
    float sa[4], sb[4];
    _mm_storeu_ps(sa, hsum8x4(a0, a1, a2, a3));
    _mm_storeu_ps(sb, hsum8x4(b0, b1, b2, b3));
    for (int j = 0; j < 4; j++) {
        for (int64_t e = i; e < d; e++) sa[j] += q0[e] * k[j * d + e];
        p0[j] = sa[j] * scale;
        if (queries == 2) {
            for (int64_t e = i; e < d; e++) sb[j] += q1[e] * k[j * d + e];
            p1[j] = sb[j] * scale;
        }
    }
}

/* Scores of query vectors q[v] (v < count; the one at v is at q + v * q_stride, its scores at
 * p + v * p_stride) against keys k[a..b) ([.][d]): pairs of vectors, 4 keys at a time. */
static void scores_span(const float *q, int64_t q_stride, int64_t count, const float *k, int64_t a, int64_t b,
                        int64_t d, float scale, float *p, int64_t p_stride) {
    for (int64_t v = 0; v < count; v += 2) {
        const int queries = v + 1 < count ? 2 : 1;
        const float *q0 = q + v * q_stride, *q1 = q0 + (queries == 2 ? q_stride : 0);
        float *p0 = p + v * p_stride, *p1 = p0 + (queries == 2 ? p_stride : 0);
        int64_t j = a;
        for (; j + 4 <= b; j += 4) scores_x4(q0, q1, queries, k + j * d, d, scale, p0 + j, p1 + j);
        for (; j < b; j++) {
            p0[j] = score(q0, k + j * d, d, scale);
            if (queries == 2) p1[j] = score(q1, k + j * d, d, scale);
        }
    }
}

/* out[r] = x[r] * 1/sqrt(mean(x[r]^2) + eps) * scale, for rows of n; out may be x. */
void apr_rms_norm(const float *x, const float *scale, int64_t rows, int64_t n, float eps, float *out) {
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

/* Scores p[r][0..len) = scale * q[r] . k[j] for the n query rows q[r] that share the keys k [len][d]: each
 * block of key rows is read from memory once and serves every query row from L1 (one query head at a
 * time re-read the whole cache per head: 6 times over for Qwen's GQA). */
static void scores(const float *q, int64_t n, const float *k, int64_t len, int64_t d, float scale, float *p) {
    for (int64_t j0 = 0; j0 < len; j0 += APR_ATTN_BLOCK) {
        const int64_t j1 = j0 + APR_ATTN_BLOCK < len ? j0 + APR_ATTN_BLOCK : len;
        scores_span(q, d, n, k, j0, j1, d, scale, p, len);
    }
}

/* out[r][0..d) = sum_j p[r][j] * v[j][0..d) for the n rows sharing v [len][d]; like scores, block by block
 * of v rows, each serving every row. Every output element is one chain of FMAs over j = 0, 1, ... in
 * order, whatever the blocking (the partial sums wait in out between blocks). */
static void weighted_sums(const float *p, int64_t n, const float *v, int64_t len, int64_t d, float *out) {
    for (int64_t i = 0; i < n * d; i++) out[i] = 0.0f;
    for (int64_t j0 = 0; j0 < len; j0 += APR_ATTN_BLOCK) {
        const int64_t j1 = j0 + APR_ATTN_BLOCK < len ? j0 + APR_ATTN_BLOCK : len;
        for (int64_t r = 0; r < n; r++) {
            const float *pr = p + r * len;
            float *orow = out + r * d;
            int64_t i0 = 0;
            for (; i0 + 64 <= d; i0 += 64) {
                __m256 acc[8];
                for (int c = 0; c < 8; c++) acc[c] = _mm256_loadu_ps(orow + i0 + 8 * c);
                for (int64_t j = j0; j < j1; j++) {
                    const __m256 w = _mm256_set1_ps(pr[j]);
                    const float *vj = v + j * d + i0;
                    for (int c = 0; c < 8; c++) acc[c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vj + 8 * c), acc[c]);
                }
                for (int c = 0; c < 8; c++) _mm256_storeu_ps(orow + i0 + 8 * c, acc[c]);
            }
            for (int64_t i = i0; i < d; i++) {
                float acc = orow[i];
                for (int64_t j = j0; j < j1; j++) acc += pr[j] * v[j * d + i];
                orow[i] = acc;
            }
        }
    }
}

/* out[m'][e] += sum over j in a..b-1 of p[m'][j] v[j][e] for M query vectors (p[m'] at p + m' * p_stride,
 * out[m'] at out + m' * d), bit-identical to weighted_sums: elements below d - d % 64 take one FMA chain
 * over j in order, the rest a multiply and an add. M vectors x 32 elements at a time: each value row's
 * 4 loads serve M rows of FMAs (weighted_sums: 8 loads and a broadcast for 8 FMAs). */
static inline __attribute__((always_inline)) void weighted_group(const float *p, int64_t p_stride, const int m,
                                                                 const float *v, int64_t a, int64_t b, int64_t d,
                                                                 float *out) {
    const int64_t d64 = d - d % 64;
    for (int64_t i0 = 0; i0 < d64; i0 += 32) {
        __m256 acc[3][4];
        for (int r = 0; r < m; r++)
            for (int c = 0; c < 4; c++) acc[r][c] = _mm256_loadu_ps(out + r * d + i0 + 8 * c);
        for (int64_t j = a; j < b; j++) {
            const float *vj = v + j * d + i0;
            const __m256 v0 = _mm256_loadu_ps(vj), v1 = _mm256_loadu_ps(vj + 8);
            const __m256 v2 = _mm256_loadu_ps(vj + 16), v3 = _mm256_loadu_ps(vj + 24);
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
            for (int64_t j = a; j < b; j++) acc += p[r * p_stride + j] * v[j * d + e];
            out[r * d + e] = acc;
        }
}

/* weighted_group over `count` vectors, 3 at a time. */
static void weighted_span(const float *p, int64_t p_stride, int64_t count, const float *v, int64_t a, int64_t b,
                          int64_t d, float *out) {
    int64_t w = 0;
    for (; w + 3 <= count; w += 3) weighted_group(p + w * p_stride, p_stride, 3, v, a, b, d, out + w * d);
    if (count - w == 2) weighted_group(p + w * p_stride, p_stride, 2, v, a, b, d, out + w * d);
    if (count - w == 1) weighted_group(p + w * p_stride, p_stride, 1, v, a, b, d, out + w * d);
}

/* One new token of one sequence: writes its key and value (k_new, v_new [kv_heads][d]) at position pos
 * of the layer's cache (keys, values [kv_heads][cap][d]), then for each of the kv_heads * rep query
 * heads (q [kv_heads * rep][d]; query head g * rep + r reads kv head g) attends over positions
 * lo .. pos, lo = max(0, pos - window + 1) (window 0: no window): softmax(scale * q.k) weighted sum of
 * values into out [kv_heads * rep][d]. Returns nonzero when out of memory or pos is out of range.
 *
 * Threads take the query heads of a kv head together (split in parts only when there are fewer kv heads
 * than threads), so each reads that kv head's keys and values from memory once: for Qwen2.5-1.5B's 28
 * layers at 4096 positions, 25 -> 16.5 ms a token than a head at a time (13.3 with the cache on huge
 * pages). A head's numbers do not depend on the split or the thread count. */
int apr_attend_one(const float *q, const float *k_new, const float *v_new, float *keys, float *values,
                   int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos, int64_t window,
                   float scale, float *out) {
    if (pos < 0 || pos >= cap) return 2;
    for (int64_t g = 0; g < kv_heads; g++) {
        for (int64_t i = 0; i < d; i++) {
            keys[(g * cap + pos) * d + i] = k_new[g * d + i];
            values[(g * cap + pos) * d + i] = v_new[g * d + i];
        }
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
        const float *kh = keys + (g * cap + lo) * d, *vh = values + (g * cap + lo) * d;
        scores(q + first * d, n, kh, len, d, scale, p);
        for (int64_t r = 0; r < n; r++) softmax_in_place(p + r * len, len);
        weighted_sums(p, n, vh, len, d, out + first * d);
        free(p);
    }
    return failed;
}

/* Query rows attending together: ATTN_RUN_ROWS positions x the rep query heads of one kv head share each
 * block of keys and values read from memory (a prompt at 4000 positions read every kv head's 4 MB of keys
 * and values once a row; now once per ATTN_RUN_ROWS rows, from L1 for all of them). */
#define APR_ATTN_RUN_ROWS 16

/* The attention of one sequence's consecutive new positions pos0 .. pos0 + n - 1 (a prompt, or the rows a
 * lookup step verifies), giving every row the bits apr_attend_one gives it alone: stores the n keys and
 * values (k_new, v_new [n][kv_heads][d]) at their positions of the layer's cache (keys, values
 * [kv_heads][cap][d]), then row i's query heads (q [n][kv_heads * rep][d]) attend over lo_i .. pos0 + i
 * (lo_i = max(0, pos0 + i - window + 1), window 0: none) into out [n][kv_heads * rep][d]. A row sees no
 * position after its own, so writing all the keys first is causal attention.
 *
 * Why the bits are apr_attend_one's: a query vector's scores are the same dots (score's arithmetic, see
 * above); its softmax is softmax_in_place over exactly its own lo_i .. pos_i; each output element
 * is one chain of FMAs over its positions in order. Only which query vectors share a key block's loads
 * changes. So a prompt's rows are computed as decode computes them one at a time, whatever the chunking of
 * the prompt, the blocking here or the thread count. The work is split into (kv head, block of rows) units:
 * the score buffer is the block's rows x rep heads x their longest span. Returns 0, 1 (no memory) or 2 (a
 * position outside the cache). */
int apr_attend_run(const float *q, const float *k_new, const float *v_new, float *keys, float *values,
                   int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos0, int64_t n, int64_t window,
                   float scale, float *out) {
    if (pos0 < 0 || n < 1 || pos0 + n > cap) return 2;
    const int64_t heads = kv_heads * rep;
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < kv_heads; g++)
            for (int64_t e = 0; e < d; e++) {
                keys[(g * cap + pos0 + i) * d + e] = k_new[(i * kv_heads + g) * d + e];
                values[(g * cap + pos0 + i) * d + e] = v_new[(i * kv_heads + g) * d + e];
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
        const int64_t span = hi[rows - 1] - lo[0], stride = hi[rows - 1] - lo[rows - 1];
        /* p: per query vector (row i, head h: vector i * rep + h) its scores at p + vector * stride, from lo[i] */
        float *p = malloc((size_t)(vectors * stride) * sizeof(float));
        if (!p) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        const float *kg = keys + g * cap * d, *vg = values + g * cap * d;
        for (int64_t j0 = lo[0]; j0 < lo[0] + span; j0 += APR_ATTN_BLOCK) {
            const int64_t j1 = j0 + APR_ATTN_BLOCK < lo[0] + span ? j0 + APR_ATTN_BLOCK : lo[0] + span;
            for (int64_t i = 0; i < rows; i++) {
                const int64_t a = j0 > lo[i] ? j0 : lo[i], b = j1 < hi[i] ? j1 : hi[i];
                if (a >= b) continue;
                scores_span(q + ((first + i) * heads + g * rep) * d, d, rep, kg, a, b, d, scale,
                            p + i * rep * stride - lo[i], stride);
            }
        }
        for (int64_t i = 0; i < rows; i++)
            for (int64_t h = 0; h < rep; h++) {
                softmax_in_place(p + (i * rep + h) * stride, hi[i] - lo[i]);
                float *ov = out + ((first + i) * heads + g * rep + h) * d;
                for (int64_t e = 0; e < d; e++) ov[e] = 0.0f;
            }
        /* weighted_sums' arithmetic, per vector over its own positions, block by block of value rows */
        for (int64_t j0 = lo[0]; j0 < lo[0] + span; j0 += APR_ATTN_BLOCK) {
            const int64_t j1 = j0 + APR_ATTN_BLOCK < lo[0] + span ? j0 + APR_ATTN_BLOCK : lo[0] + span;
            for (int64_t i = 0; i < rows; i++) {
                const int64_t a = j0 > lo[i] ? j0 : lo[i], b = j1 < hi[i] ? j1 : hi[i];
                if (a >= b) continue;
                weighted_span(p + i * rep * stride - lo[i], stride, rep, vg, a, b, d,
                              out + ((first + i) * heads + g * rep) * d);
            }
        }
        free(p);
    }
    return failed;
}
