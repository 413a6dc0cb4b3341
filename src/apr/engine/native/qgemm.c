/* Quantized-weight matrix products for x86-64 CPUs with AVX2, FMA and F16C (apr's CPU decode path).
 *
 * Why this exists: on AVX2-only CPUs PyTorch's weight-only kernels (_weight_int4pack_mm_for_cpu,
 * _weight_int8pack_mm) run at a fraction of memory bandwidth, and decode of a quantized model is
 * bandwidth-bound. Here, as in ggml's q4/q8 dot products, activations are quantized per block of 32 to
 * int8 (scale = max|x| / 127) and multiplied with the stored integer weights by _mm256_maddubs_epi16.
 *
 * Weight layouts (built by apr/engine/native/__init__.py; K is padded to a multiple of 128 with zero
 * weights and zero scales, so no loop has a tail):
 *   q4: w = scale * q + offset, q in [0, 15], one fp16 (scale, offset) per block of 32 along K.
 *       Row bytes: per group of 4 blocks, 64 bytes; byte i of the first 32 holds block 0 element i in
 *       its low nibble and block 1 element i in its high nibble; the next 32 hold blocks 2 and 3.
 *   q8: w = scale * q, q in [-128, 127], one fp16 scale per 16 along K, stored per group of 4 blocks
 *       in the order (b0 first half, b1 first, b2 first, b3 first, b0 second half, ..., b3 second),
 *       the lane order that the horizontal adds below produce.
 *
 *   q6: Q6_K as stored: w = d * sc * (q - 32), q in [0, 63], int8 sc per 16 and fp16 d per 128 along K
 *       (Q6_K's d is per 256, so each is stored twice). Row bytes per group of 4 blocks: 64 bytes of
 *       low nibbles in the q4 pair layout, then 32 bytes whose byte i holds element i's two high bits of
 *       blocks 0, 1, 2, 3 at bits 0-1, 2-3, 4-5, 6-7. The 8 scales of a group are in q8's lane order.
 *
 *   q4k: Q4_K as stored: w = d * sc * q - dmin * m, q in [0, 15], 6-bit sc and m per block of 32 (one
 *       byte each, per group of 4 blocks the 4 sc then the 4 m), fp16 (d, dmin) per super-block of 256;
 *       nibbles in the q4 pair layout (4.625 bits a weight against q4's 5). Activations are quantized per 32 as for q4: per 256 (ggml's q8_K) would
 *       let one outlier channel of Qwen coarsen the other 255 values of its super-block.
 *
 * Batch invariance: every output element is computed by the same operations in the same order
 * whatever M (rows of activations), the thread count or the row's position in the batch, because work
 * is split over output columns only and each activation row has its own accumulators.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define APR_QK 32     /* activation block */
#define APR_KGROUP 128 /* inner-loop step: 4 blocks */
#define APR_MT 4      /* activation rows sharing one unpacked weight group */

int apr_qgemm_abi(void) { return 6; }

/* x [m][k] float -> qx [m][kpad] int8, dx [m][kpad/32] block scales, sx [m][kpad/32] exact block sums. */
void apr_quantize_rows(const float *x, int64_t m, int64_t k, int64_t kpad, int8_t *qx, float *dx, float *sx) {
    const int64_t nb = kpad / APR_QK;
#pragma omp parallel for schedule(static) if (m * k >= 65536)
    for (int64_t r = 0; r < m; r++) {
        const float *xr = x + r * k;
        for (int64_t b = 0; b < nb; b++) {
            int8_t *q = qx + r * kpad + b * APR_QK;
            const int64_t start = b * APR_QK;
            int64_t len = k - start;
            len = len < 0 ? 0 : (len > APR_QK ? APR_QK : len);
            float amax = 0.0f, sum = 0.0f;
            for (int64_t i = 0; i < len; i++) {
                const float v = xr[start + i];
                amax = fmaxf(amax, fabsf(v));
                sum += v;
            }
            const float d = amax / 127.0f;
            const float id = d > 0.0f ? 1.0f / d : 0.0f;
            for (int64_t i = 0; i < len; i++) {
                const float v = rintf(xr[start + i] * id);
                q[i] = (int8_t)(v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v));
            }
            for (int64_t i = len; i < APR_QK; i++) q[i] = 0;
            dx[r * nb + b] = d;
            sx[r * nb + b] = sum;
        }
    }
}

/* 8 int32 lanes; lane j sums the products of elements 4j..4j+3 (w unsigned, x signed). */
static inline __m256i dot_u8_s8(__m256i w, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
}

/* [p0(0..3), p1(0..3), p2(0..3), p3(0..3) | p0(4..7), p1(4..7), p2(4..7), p3(4..7)] */
static inline __m256i hadd4(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
    return _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
}

static inline float hsum128(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    return _mm_cvtss_f32(v);
}

/* Rows r0 .. r0+mt-1 of x against weight row j; mt is a compile-time constant at each call site, so
 * the accumulators stay in registers. Every row goes through the same operations whatever mt is.
 * Block scales and offsets come as fp16 per block (q4: sr, orow) or, when kq is set, as Q4_K's 6-bit
 * sc and m bytes (sr: 4 sc then 4 m per group) with fp16 (d, dmin) pairs per 256 (kdm). One 8-lane
 * multiply then makes a group's 4 scales and 4 offsets: at one activation row this float work is a
 * large part of the kernel, which is otherwise bound by memory. */
static inline __attribute__((always_inline)) void q4_tile(const int8_t *qx, const float *dx, const float *sx,
                                                          int64_t kpad, const uint8_t *wr, const void *sr,
                                                          const void *orow, const uint16_t *kdm, const int kq,
                                                          float bias, int64_t r0, const int mt, int64_t n, int64_t j,
                                                          float *y) {
    const int64_t nb = kpad / APR_QK, ng = kpad / APR_KGROUP;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m128 acc[APR_MT], acco[APR_MT];
    for (int t = 0; t < mt; t++) acc[t] = acco[t] = _mm_setzero_ps();
    __m256 dm = _mm256_setzero_ps(); /* (d x4, -dmin x4) of the current super-block (q4k) */
    for (int64_t g = 0; g < ng; g++) {
        const __m256i v01 = _mm256_loadu_si256((const __m256i *)(wr + g * 64));
        const __m256i v23 = _mm256_loadu_si256((const __m256i *)(wr + g * 64 + 32));
        const __m256i w0 = _mm256_and_si256(v01, low), w1 = _mm256_and_si256(_mm256_srli_epi16(v01, 4), low);
        const __m256i w2 = _mm256_and_si256(v23, low), w3 = _mm256_and_si256(_mm256_srli_epi16(v23, 4), low);
        __m128 s, o;
        if (kq) {
            if (g % 2 == 0)
                dm = _mm256_set_m128(_mm_set1_ps(-_cvtsh_ss(kdm[g + 1])), _mm_set1_ps(_cvtsh_ss(kdm[g])));
            const __m256 sm = _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)sr + g * 8)))),
                dm);
            s = _mm256_castps256_ps128(sm);
            o = _mm256_extractf128_ps(sm, 1);
        } else {
            s = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)((const uint16_t *)sr + g * 4)));
            o = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)((const uint16_t *)orow + g * 4)));
        }
        for (int t = 0; t < mt; t++) {
            const int8_t *xr = qx + (r0 + t) * kpad + g * APR_KGROUP;
            const __m256i h = hadd4(dot_u8_s8(w0, _mm256_loadu_si256((const __m256i *)xr)),
                                    dot_u8_s8(w1, _mm256_loadu_si256((const __m256i *)(xr + 32))),
                                    dot_u8_s8(w2, _mm256_loadu_si256((const __m256i *)(xr + 64))),
                                    dot_u8_s8(w3, _mm256_loadu_si256((const __m256i *)(xr + 96))));
            const __m128i d4 = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            const int64_t bi = (r0 + t) * nb + g * 4;
            acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(d4), _mm_mul_ps(s, _mm_loadu_ps(dx + bi)), acc[t]);
            acco[t] = _mm_fmadd_ps(o, _mm_loadu_ps(sx + bi), acco[t]);
        }
    }
    for (int t = 0; t < mt; t++) y[(r0 + t) * n + j] = hsum128(_mm_add_ps(acc[t], acco[t])) + bias;
}

void apr_q4_matmul(const int8_t *qx, const float *dx, const float *sx, int64_t m, int64_t kpad,
                   const uint8_t *qw, const uint16_t *scale, const uint16_t *offset, const float *bias,
                   int64_t n, float *y, int threads) {
    const int64_t nb = kpad / APR_QK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *wr = qw + j * (kpad / 2);
        const uint16_t *sr = scale + j * nb, *orow = offset + j * nb;
        const float b = bias ? bias[j] : 0.0f;
        int64_t r0 = 0;
        for (; r0 + APR_MT <= m; r0 += APR_MT)
            q4_tile(qx, dx, sx, kpad, wr, sr, orow, NULL, 0, b, r0, APR_MT, n, j, y);
        for (; r0 < m; r0++) q4_tile(qx, dx, sx, kpad, wr, sr, orow, NULL, 0, b, r0, 1, n, j, y);
    }
}

static inline __attribute__((always_inline)) void q8_tile(const int8_t *qx, const float *dx, int64_t kpad,
                                                          const int8_t *wr, const uint16_t *sr, float bias,
                                                          int64_t r0, const int mt, int64_t n, int64_t j, float *y) {
    const int64_t nb = kpad / APR_QK, ng = kpad / APR_KGROUP;
    __m256 acc[APR_MT];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const int8_t *wg = wr + g * APR_KGROUP;
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)wg);
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wg + 32));
        const __m256i w2 = _mm256_loadu_si256((const __m256i *)(wg + 64));
        const __m256i w3 = _mm256_loadu_si256((const __m256i *)(wg + 96));
        /* maddubs wants an unsigned operand: |w| times x carrying w's sign (|-128| reads as 128). */
        const __m256i a0 = _mm256_sign_epi8(w0, w0), a1 = _mm256_sign_epi8(w1, w1);
        const __m256i a2 = _mm256_sign_epi8(w2, w2), a3 = _mm256_sign_epi8(w3, w3);
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sr + g * 8)));
        for (int t = 0; t < mt; t++) {
            const int8_t *xr = qx + (r0 + t) * kpad + g * APR_KGROUP;
            const __m256i h = hadd4(
                dot_u8_s8(a0, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)xr), w0)),
                dot_u8_s8(a1, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xr + 32)), w1)),
                dot_u8_s8(a2, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xr + 64)), w2)),
                dot_u8_s8(a3, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xr + 96)), w3)));
            const __m128 d = _mm_loadu_ps(dx + (r0 + t) * nb + g * 4);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_mul_ps(s, _mm256_set_m128(d, d)), acc[t]);
        }
    }
    for (int t = 0; t < mt; t++) {
        const __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        y[(r0 + t) * n + j] = hsum128(v) + bias;
    }
}

void apr_q8_matmul(const int8_t *qx, const float *dx, int64_t m, int64_t kpad,
                   const int8_t *qw, const uint16_t *scale, const float *bias,
                   int64_t n, float *y, int threads) {
    const int64_t ns = kpad / 16;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t j = 0; j < n; j++) {
        const int8_t *wr = qw + j * kpad;
        const uint16_t *sr = scale + j * ns;
        const float b = bias ? bias[j] : 0.0f;
        int64_t r0 = 0;
        for (; r0 + APR_MT <= m; r0 += APR_MT) q8_tile(qx, dx, kpad, wr, sr, b, r0, APR_MT, n, j, y);
        for (; r0 < m; r0++) q8_tile(qx, dx, kpad, wr, sr, b, r0, 1, n, j, y);
    }
}

static inline __attribute__((always_inline)) void q6_tile(const int8_t *qx, const float *dx, int64_t kpad,
                                                          const uint8_t *wr, const int8_t *scr, const uint16_t *dr,
                                                          float bias, int64_t r0, const int mt, int64_t n, int64_t j,
                                                          float *y) {
    const int64_t nb = kpad / APR_QK, ng = kpad / APR_KGROUP;
    const __m256i low = _mm256_set1_epi8(0x0F), high = _mm256_set1_epi8(0x30), offset = _mm256_set1_epi8(32);
    __m256 acc[APR_MT];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *wg = wr + g * 96;
        const __m256i v01 = _mm256_loadu_si256((const __m256i *)wg);
        const __m256i v23 = _mm256_loadu_si256((const __m256i *)(wg + 32));
        const __m256i hb = _mm256_loadu_si256((const __m256i *)(wg + 64));
        /* q - 32 in [-32, 31]; maddubs wants an unsigned operand: |q - 32| times x carrying its sign. */
        const __m256i w0 = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(v01, low),
                                                           _mm256_and_si256(_mm256_slli_epi16(hb, 4), high)), offset);
        const __m256i w1 = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v01, 4), low),
                                                           _mm256_and_si256(_mm256_slli_epi16(hb, 2), high)), offset);
        const __m256i w2 = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(v23, low), _mm256_and_si256(hb, high)),
                                           offset);
        const __m256i w3 = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v23, 4), low),
                                                           _mm256_and_si256(_mm256_srli_epi16(hb, 2), high)), offset);
        const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
        const __m256i a2 = _mm256_abs_epi8(w2), a3 = _mm256_abs_epi8(w3);
        const __m256 s = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(scr + g * 8)))),
            _mm256_set1_ps(_cvtsh_ss(dr[g])));
        for (int t = 0; t < mt; t++) {
            const int8_t *xr = qx + (r0 + t) * kpad + g * APR_KGROUP;
            const __m256i h = hadd4(
                dot_u8_s8(a0, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)xr), w0)),
                dot_u8_s8(a1, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xr + 32)), w1)),
                dot_u8_s8(a2, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xr + 64)), w2)),
                dot_u8_s8(a3, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xr + 96)), w3)));
            const __m128 d = _mm_loadu_ps(dx + (r0 + t) * nb + g * 4);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_mul_ps(s, _mm256_set_m128(d, d)), acc[t]);
        }
    }
    for (int t = 0; t < mt; t++) {
        const __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        y[(r0 + t) * n + j] = hsum128(v) + bias;
    }
}

void apr_q6_matmul(const int8_t *qx, const float *dx, int64_t m, int64_t kpad, const uint8_t *qw, const int8_t *sc,
                   const uint16_t *d, const float *bias, int64_t n, float *y, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *wr = qw + j * (kpad / 4 * 3);
        const int8_t *scr = sc + j * (kpad / 16);
        const uint16_t *dr = d + j * (kpad / APR_KGROUP);
        const float b = bias ? bias[j] : 0.0f;
        int64_t r0 = 0;
        for (; r0 + APR_MT <= m; r0 += APR_MT) q6_tile(qx, dx, kpad, wr, scr, dr, b, r0, APR_MT, n, j, y);
        for (; r0 < m; r0++) q6_tile(qx, dx, kpad, wr, scr, dr, b, r0, 1, n, j, y);
    }
}

void apr_q4k_matmul(const int8_t *qx, const float *dx, const float *sx, int64_t m, int64_t k, const uint8_t *qw,
                    const uint8_t *scmin, const uint16_t *dm, const float *bias, int64_t n, float *y, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *wr = qw + j * (k / 2), *smr = scmin + j * (k / 16);
        const uint16_t *dmr = dm + j * (k / 128);
        const float b = bias ? bias[j] : 0.0f;
        int64_t r0 = 0;
        for (; r0 + APR_MT <= m; r0 += APR_MT) q4_tile(qx, dx, sx, k, wr, smr, NULL, dmr, 1, b, r0, APR_MT, n, j, y);
        for (; r0 < m; r0++) q4_tile(qx, dx, sx, k, wr, smr, NULL, dmr, 1, b, r0, 1, n, j, y);
    }
}

/* apr_linear for the q4k layout (k % 256 == 0): w = {nibbles, sc+m, d+dmin}. Returns 0 or -1 (no memory). */
int apr_linear_q4k(const float *x, int64_t m, int64_t k, const uint8_t *qw, const uint8_t *scmin, const uint16_t *dm,
                   const float *bias, int64_t n, float *y, int threads) {
    const int64_t nb = k / APR_QK;
    int8_t *qx = malloc((size_t)(m * k));
    float *dx = malloc((size_t)(m * nb) * sizeof(float));
    float *sx = malloc((size_t)(m * nb) * sizeof(float));
    int status = -1;
    if (qx && dx && sx) {
        apr_quantize_rows(x, m, k, k, qx, dx, sx);
        apr_q4k_matmul(qx, dx, sx, m, k, qw, scmin, dm, bias, n, y, threads);
        status = 0;
    }
    free(qx);
    free(dx);
    free(sx);
    return status;
}

/* One call per linear layer: quantize x [m][k] into scratch memory, then y = x W^T (+ bias).
 * kind 4: w, scale, offset as in apr_q4_matmul; kind 8: w, scale as in apr_q8_matmul (offset unused);
 * kind 6: w, sc, d as in apr_q6_matmul (passed as scale and offset).
 * Returns 0, or -1 when the scratch memory cannot be allocated (y is then left untouched). */
int apr_linear(int kind, const float *x, int64_t m, int64_t k, int64_t kpad, const void *w, const uint16_t *scale,
               const uint16_t *offset, const float *bias, int64_t n, float *y, int threads) {
    const int64_t nb = kpad / APR_QK;
    int8_t *qx = malloc((size_t)(m * kpad));
    float *dx = malloc((size_t)(m * nb) * sizeof(float));
    float *sx = malloc((size_t)(m * nb) * sizeof(float));
    int status = -1;
    if (qx && dx && sx) {
        apr_quantize_rows(x, m, k, kpad, qx, dx, sx);
        if (kind == 4)
            apr_q4_matmul(qx, dx, sx, m, kpad, (const uint8_t *)w, scale, offset, bias, n, y, threads);
        else if (kind == 6)
            apr_q6_matmul(qx, dx, m, kpad, (const uint8_t *)w, (const int8_t *)scale, offset, bias, n, y, threads);
        else
            apr_q8_matmul(qx, dx, m, kpad, (const int8_t *)w, scale, bias, n, y, threads);
        status = 0;
    }
    free(qx);
    free(dx);
    free(sx);
    return status;
}
