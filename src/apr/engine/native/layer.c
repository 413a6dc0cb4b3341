/* One decoder layer of one-token decode, for a batch of sequences, in a single call (apr's CPU decode path).
 *
 * Why this exists: with the products and the glue kernels in C, what was left of a decode step was
 * Python: ~15 operator calls a layer between the products, ~7 ms of a ~60 ms token on the 1.5B. Here
 * the whole layer (norms, projections, RoPE, attention over each sequence's own cache, gated MLP,
 * residuals) runs from one call. It uses the same product and glue kernels as the Python path, in the
 * same order; only the activation (SiLU / tanh-GELU, computed here with a vector exp) and the
 * additions differ from PyTorch's by rounding. Each row touches only its own inputs and cache, and the
 * products are batch invariant (qgemm.c), so a sequence's numbers do not depend on its batch mates.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "apr_native.h"

typedef struct {
    apr_weight q, k, v, o, gate, up, down;
    /* RMSNorm scales (offset already added), NULL when the architecture has none: post_attn and
     * post_mlp are gemma3's sandwich norms, q_norm/k_norm its per-head norms. */
    const float *input_norm, *post_attn_norm, *pre_mlp_norm, *post_mlp_norm, *q_norm, *k_norm;
    double eps, attn_scale;
    int64_t hidden, heads, kv_heads, head_dim, ffn, window, gelu;
} apr_layer;

void apr_rms_norm(const float *x, const float *scale, int64_t rows, int64_t n, float eps, float *out);
void apr_rope_neox(float *x, int64_t t, int64_t heads, int64_t d, const float *cos, const float *sin);
int apr_attend_one(const float *q, const float *k_new, const float *v_new, void *keys, void *values,
                   int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos, int64_t window, float scale,
                   float *out, int half);
int apr_attend_run(const float *q, const float *k_new, const float *v_new, void *keys, void *values,
                   int64_t kv_heads, int64_t rep, int64_t cap, int64_t d, int64_t pos0, int64_t n, int64_t window,
                   float scale, float *out, int half);

int apr_layer_abi(void) { return 4; }

/* y [m][w->n] = x [m][w->k] W^T (+ bias). */
static int product(const apr_weight *w, const float *x, int64_t m, float *y, int threads) {
    return apr_products(&w, 1, x, m, &y, threads);
}

/* Several products of one input: together when their layouts pad K alike (one quantization of x, one
 * parallel region), else one by one. */
static int products(const apr_weight *const *ws, int count, const float *x, int64_t m, float *const *ys,
                    int threads) {
    int status = apr_products(ws, count, x, m, ys, threads);
    if (status != -4) return status;
    for (int i = 0; i < count; i++) {
        status = product(ws[i], x, m, ys[i], threads);
        if (status) return status;
    }
    return 0;
}

/* sigmoid(z) = 1 / (1 + e^-z) from e^-|z| only, so the exponential never overflows. */
static inline __m256 sigmoid8(__m256 z) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = apr_exp_nonpositive(_mm256_or_ps(z, sign)); /* e^-|z| */
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, t));
    return _mm256_blendv_ps(inv, _mm256_mul_ps(t, inv), z); /* z < 0 (sign bit set): e^z / (1 + e^z) */
}

static inline float sigmoid1(float z) {
    const float t = expf(-fabsf(z));
    return z >= 0.0f ? 1.0f / (1.0f + t) : t / (1.0f + t);
}

/* gate[i] <- act(gate[i]) * up[i]; act is SiLU, or GELU with the tanh approximation (gemma3), written as
 * 0.5 z (1 + tanh(y)) = z * sigmoid(2y), y = sqrt(2/pi) (z + 0.044715 z^3). */
static void gated(float *gate, const float *up, int64_t count, int gelu) {
    const float c = 0.7978845608028654f, c3 = 0.044715f;
    const int64_t vectors = count / 8; /* the first 8 * vectors elements in lanes, the rest one by one */
    /* Elementwise: a prompt's elements split over the threads in whole vectors, so each element takes the
     * same path (lanes or scalar tail) whatever the thread count. */
#pragma omp parallel for schedule(static) if (count >= 65536)
    for (int64_t v = 0; v < vectors; v++) {
        const int64_t i = 8 * v;
        const __m256 z = _mm256_loadu_ps(gate + i);
        __m256 s;
        if (gelu) {
            const __m256 y = _mm256_mul_ps(_mm256_set1_ps(2.0f * c),
                                           _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(c3), z), _mm256_mul_ps(z, z), z));
            s = sigmoid8(y);
        } else {
            s = sigmoid8(z);
        }
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_mul_ps(z, s), _mm256_loadu_ps(up + i)));
    }
    for (int64_t i = 8 * vectors; i < count; i++) {
        const float z = gate[i];
        const float s = gelu ? sigmoid1(2.0f * c * (z + c3 * z * z * z)) : sigmoid1(z);
        gate[i] = z * s * up[i];
    }
}

static void add_into(float *x, const float *y, int64_t count) {
#pragma omp parallel for schedule(static) if (count >= 65536)
    for (int64_t i = 0; i < count; i++) x[i] += y[i];
}

/* x [rows][hidden] <- layer `index` (weights L) applied to x, one new token per row. Row r's cache is
 * keys[r] / values[r] ([layers][kv_heads][capacity[r]][head_dim], fp16 where `half`, else float32); its
 * token is at position pos[r], with
 * RoPE tables cos/sin [rows][head_dim]. Returns 0, or nonzero (x then undefined): -1 no memory, -2 a
 * position outside its cache, -3 an unknown weight layout. */
int apr_decode_layer(const apr_layer *L, int64_t index, float *x, int64_t rows, void *const *keys,
                     void *const *values, const int64_t *capacity, const int64_t *pos, const float *cos,
                     const float *sin, int half, int threads) {
    const int64_t hidden = L->hidden, d = L->head_dim, qdim = L->heads * d, kvdim = L->kv_heads * d;
    const int64_t widest = L->ffn > qdim ? L->ffn : qdim;
    float *h = malloc((size_t)(rows * (hidden > qdim ? hidden : qdim)) * sizeof(float));
    float *q = malloc((size_t)(rows * qdim) * sizeof(float));
    float *k = malloc((size_t)(rows * kvdim) * sizeof(float));
    float *v = malloc((size_t)(rows * kvdim) * sizeof(float));
    float *a = malloc((size_t)(rows * widest) * sizeof(float));
    float *b = malloc((size_t)(rows * (L->ffn > hidden ? L->ffn : hidden)) * sizeof(float));
    int status = (h && q && k && v && a && b) ? 0 : -1;
    const float eps = (float)L->eps;
    if (!status) {
        apr_rms_norm(x, L->input_norm, rows, hidden, eps, h);
        const apr_weight *qkv[3] = {&L->q, &L->k, &L->v};
        float *const out[3] = {q, k, v};
        status = products(qkv, 3, h, rows, out, threads);
    }
    if (!status) {
        if (L->q_norm) apr_rms_norm(q, L->q_norm, rows * L->heads, d, eps, q);
        if (L->k_norm) apr_rms_norm(k, L->k_norm, rows * L->kv_heads, d, eps, k);
        apr_rope_neox(q, rows, L->heads, d, cos, sin);
        apr_rope_neox(k, rows, L->kv_heads, d, cos, sin);
        /* Consecutive rows of one cache at consecutive positions (a prompt, a lookup step's verify rows)
         * attend together, tiled (apr_attend_run); each row gets the bits apr_attend_one gives it alone. */
        for (int64_t r = 0, n; r < rows && !status; r += n) {
            for (n = 1; r + n < rows && keys[r + n] == keys[r] && values[r + n] == values[r] &&
                        capacity[r + n] == capacity[r] && pos[r + n] == pos[r] + n;
                 n++) {
            }
            const int64_t layer = index * L->kv_heads * capacity[r] * d * (half ? 2 : 4); /* bytes */
            char *const lk = (char *)keys[r] + layer, *const lv = (char *)values[r] + layer;
            const int rc = n == 1 ? apr_attend_one(q + r * qdim, k + r * kvdim, v + r * kvdim, lk, lv, L->kv_heads,
                                                   L->heads / L->kv_heads, capacity[r], d, pos[r], L->window,
                                                   (float)L->attn_scale, a + r * qdim, half)
                                  : apr_attend_run(q + r * qdim, k + r * kvdim, v + r * kvdim, lk, lv, L->kv_heads,
                                                   L->heads / L->kv_heads, capacity[r], d, pos[r], n, L->window,
                                                   (float)L->attn_scale, a + r * qdim, half);
            status = rc == 2 ? -2 : (rc ? -1 : 0);
        }
    }
    if (!status) status = product(&L->o, a, rows, b, threads); /* b: attention output projected */
    if (!status) {
        if (L->post_attn_norm) apr_rms_norm(b, L->post_attn_norm, rows, hidden, eps, b);
        add_into(x, b, rows * hidden);
        apr_rms_norm(x, L->pre_mlp_norm, rows, hidden, eps, h);
        const apr_weight *gate_up[2] = {&L->gate, &L->up};
        float *const out[2] = {a, b};
        status = products(gate_up, 2, h, rows, out, threads);
    }
    if (!status) {
        gated(a, b, rows * L->ffn, (int)L->gelu);
        status = product(&L->down, a, rows, b, threads);
    }
    if (!status) {
        if (L->post_mlp_norm) apr_rms_norm(b, L->post_mlp_norm, rows, hidden, eps, b);
        add_into(x, b, rows * hidden);
    }
    free(h);
    free(q);
    free(k);
    free(v);
    free(a);
    free(b);
    return status;
}

/* Every decoder layer of a step: apr_decode_layer for layers[0..count) in order (layer l is layer index l
 * of the caches), with the local RoPE tables where local[l] (gemma3's sliding layers), else the global
 * ones. One call a step instead of one a layer: the Python between layers was ~0.4 ms of a ~40 ms token.
 * Returns 0 or the first failing layer's status (x then undefined). */
int apr_decode_layers(const apr_layer *const *layers, const uint8_t *local, int64_t count, float *x, int64_t rows,
                      void *const *keys, void *const *values, const int64_t *capacity, const int64_t *pos,
                      const float *cos_global, const float *sin_global, const float *cos_local,
                      const float *sin_local, int half, int threads) {
    for (int64_t l = 0; l < count; l++) {
        const int status = apr_decode_layer(layers[l], l, x, rows, keys, values, capacity, pos,
                                            local[l] ? cos_local : cos_global, local[l] ? sin_local : sin_global,
                                            half, threads);
        if (status) return status;
    }
    return 0;
}
