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
#include <stdint.h>
#include <stdlib.h>

#include "apr_native.h"

int apr_glue_abi(void) { return 2; }

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
    float top = -INFINITY;
    for (int64_t j = 0; j < len; j++) top = fmaxf(top, p[j]);
    const __m256 vtop = _mm256_set1_ps(top);
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) _mm256_storeu_ps(p + j, apr_exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(p + j), vtop)));
    for (; j < len; j++) p[j] = expf(p[j] - top);
    float total = 0.0f;
    for (j = 0; j < len; j++) total += p[j];
    const float inv = 1.0f / total;
    for (j = 0; j < len; j++) p[j] *= inv;
}

/* out[0..d) = sum_j p[j] * v[j][0..d): 64 columns at a time in registers. */
static void weighted_sum(const float *p, const float *v, int64_t len, int64_t d, float *out) {
    int64_t i0 = 0;
    for (; i0 + 64 <= d; i0 += 64) {
        __m256 acc[8];
        for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
        for (int64_t j = 0; j < len; j++) {
            const __m256 w = _mm256_set1_ps(p[j]);
            const float *vj = v + j * d + i0;
            for (int c = 0; c < 8; c++) acc[c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vj + 8 * c), acc[c]);
        }
        for (int c = 0; c < 8; c++) _mm256_storeu_ps(out + i0 + 8 * c, acc[c]);
    }
    for (int64_t i = i0; i < d; i++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < len; j++) acc += p[j] * v[j * d + i];
        out[i] = acc;
    }
}

/* One new token of one sequence: writes its key and value (k_new, v_new [kv_heads][d]) at position pos
 * of the layer's cache (keys, values [kv_heads][cap][d]), then for each of the kv_heads * rep query
 * heads (q [kv_heads * rep][d]; query head g * rep + r reads kv head g) attends over positions
 * lo .. pos, lo = max(0, pos - window + 1) (window 0: no window): softmax(scale * q.k) weighted sum of
 * values into out [kv_heads * rep][d]. Returns nonzero when out of memory or pos is out of range. */
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
    const int64_t heads = kv_heads * rep;
    int failed = 0;
#pragma omp parallel for schedule(static) if (heads > 1 && heads * len * d >= 32768)
    for (int64_t head = 0; head < heads; head++) {
        float *p = malloc((size_t)len * sizeof(float));
        if (!p) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        const int64_t g = head / rep;
        const float *qh = q + head * d, *kh = keys + (g * cap + lo) * d, *vh = values + (g * cap + lo) * d;
        for (int64_t j = 0; j < len; j++) p[j] = dot(qh, kh + j * d, d) * scale;
        softmax_in_place(p, len);
        weighted_sum(p, vh, len, d, out + head * d);
        free(p);
    }
    return failed;
}
