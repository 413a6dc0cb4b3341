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
 *       nibbles in the q4 pair layout (4.625 bits a weight against q4's 5). Activations are quantized
 *       per 32 as for q4: per 256 (ggml's q8_K) would let one outlier channel of Qwen coarsen the other
 *       255 values of its super-block.
 *
 *   q4k8: the same Q4_K values with 8 output rows interleaved (N % 8 == 0), as llama.cpp repacks for
 *       its AVX2 GEMM. Per tile of 8 rows and super-block, 1184 bytes: fp16 d of rows 0-7, fp16 dmin of
 *       rows 0-7, then sc[b][r] and m[b][r] (64 bytes each, sub-block b, row r), then per sub-block 4
 *       vectors of 32 bytes: byte 4r + i of vector v holds row r's element 4v + i in its low nibble and
 *       element 16 + 4v + i in its high nibble. One maddubs then multiplies 4 elements of 8 rows by the
 *       same 4 activations (broadcast), and 8 of them are summed in 16 bits (|sum| <= 8 * 2 * 15 * 127)
 *       before the one madd that widens the sub-block: 9 multiplies per 256 products where q4k needs 16.
 *       Prompts and batches are bound by the vector pipes, not memory: on this Zen 3 (2 maddubs a cycle) a
 *       row and sub-block (8 broadcasts, 8 maddubs, 8 adds and the float epilogue) takes ~10 cycles.
 *
 *   q6k8: Q6_K with 8 output rows interleaved (N % 8 == 0). Per tile of 8 rows and super-block, 1680
 *       bytes: fp16 d of rows 0-7, int8 sc[s][r] (128 bytes, sub-block s of 16, row r), then per block b
 *       of 32: 4 vectors of low nibbles as in q4k8 (element 4v + i low, 16 + 4v + i high), then 2 vectors
 *       h = 0, 1 whose byte 4r + i holds the 2 high bits of (low, high) of vector 2h at bits 0-1, 2-3 and
 *       of vector 2h + 1 at bits 4-5, 6-7. The kernel multiplies the stored q in [0, 63] (maddubs' unsigned
 *       operand) and subtracts 32 * sc * (the activations' sum per 16): 12 multiplies per 256 products,
 *       but fewer other operations than |q - 32| with x's sign moved over (10 multiplies), measured
 *       faster at 1, 8 and 128 rows.
 *
 * Variants: the avx512vnni build adds 512-bit versions of the q4k8 and q6k8 kernels for two activation rows
 * a vector (q4k8_tile_pairs, q6k8_tile_pairs below), bit-identical to these.
 *
 * Batch invariance: every output element is computed by the same operations in the same order
 * whatever M (rows of activations), the thread count or the row's position in the batch, because work
 * is split over output columns only and each activation row has its own accumulators.
 */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE /* syscall() under -std=c11 (the AMX build asks Linux for the tile state) */
#endif
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "apr_native.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define APR_QK 32     /* activation block */
#define APR_KGROUP 128 /* inner-loop step: 4 blocks */
#define APR_MT 4      /* activation rows sharing one unpacked weight group */
#define APR_MT_TILED 8 /* the same for the tiled layouts, whose accumulators fit better */
#ifndef APR_MT_PROMPT
/* ... and prompts: twice the rows share an unpacked sub-block (128 rows: avx2 ~1 %, avxvnni 3-7 % faster) */
#define APR_MT_PROMPT 16
#endif

int apr_qgemm_abi(void) { return 9; }

static inline float hsum128(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    return _mm_cvtss_f32(v);
}

/* One full block of 32: the scalar loop below, 8 lanes at a time, with the same results bit for bit
 * (scalar, this was ~5 % of a 128-token prompt). The block sum stays a sequential scalar sum: summed
 * pairwise in lanes, it differed in the last bits, which flipped a near-tie in smollm2-135m's greedy
 * reply ("a beautiful shade of blue" -> "a beautiful and romantic sight") and failed a certification
 * gate. A speed-up must not move the numbers. */
static inline void quantize_block32(const float *x, int8_t *q, float *d_out, float *sum_out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    __m256 a = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 a4 = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    a4 = _mm_max_ps(a4, _mm_movehl_ps(a4, a4));
    a4 = _mm_max_ss(a4, _mm_movehdup_ps(a4));
    const float amax = _mm_cvtss_f32(a4);
    float sum = 0.0f;
    for (int i = 0; i < APR_QK; i++) sum += x[i];
    *sum_out = sum;
    /* max_ps drops a NaN lane (it returns its other operand) and the clamp below turns it into -127: a NaN
     * or Inf activation would come out of the product as a finite number. The block sum sees every value;
     * a non-finite one makes the block's scale NaN, so the product is NaN as float arithmetic makes it. */
    const float d = isfinite(sum) ? amax / 127.0f : NAN;
    const __m256 id = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
#define APR_Q8LANES(v) _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps( \
        _mm256_round_ps(_mm256_mul_ps(v, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), lo), hi))
    const __m256i i01 = _mm256_packs_epi32(APR_Q8LANES(v0), APR_Q8LANES(v1));
    const __m256i i23 = _mm256_packs_epi32(APR_Q8LANES(v2), APR_Q8LANES(v3));
#undef APR_Q8LANES
    /* The packs work within 128-bit halves: bytes come out as 4-element runs in the order 0 2 4 6 1 3 5 7. */
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i01, i23),
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, bytes);
    *d_out = d;
}

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
            if (len == APR_QK) {
                quantize_block32(xr + start, q, dx + r * nb + b, sx + r * nb + b);
                continue;
            }
            float amax = 0.0f, sum = 0.0f;
            for (int64_t i = 0; i < len; i++) {
                const float v = xr[start + i];
                amax = fmaxf(amax, fabsf(v));
                sum += v;
            }
            const float d = isfinite(sum) ? amax / 127.0f : NAN; /* as in quantize_block32 */
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

/* Kernel variants (chosen at run time by native/__init__.py, each built with its own flags): with VNNI,
 * one vpdpbusd sums 4 u8 x s8 products into each int32 lane, where AVX2 needs maddubs (pairs into int16)
 * then madd (pairs of those into int32). Every product here keeps its int16 pair sums and the 16-bit sums
 * of q4k8 below the int16 limit (4-bit weights: 8 * 2 * 15 * 127; q8: 2 * 128 * 127), so maddubs never
 * saturates and both variants compute the same integers: the variants are bit-identical (tests check). */
#if defined(__AVXVNNI__)
#define APR_VARIANT 2 /* avxvnni: VEX-encoded 256-bit VNNI (Alder Lake, Sapphire Rapids, Zen 5) */
#define APR_DPBUSD(acc, w, x) _mm256_dpbusd_avx_epi32((acc), (w), (x))
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AMX_INT8__) && defined(__AMX_TILE__)
#define APR_VARIANT 3 /* amx: avx512vnni plus AMX tiles for prompts (Sapphire Rapids and later) */
#define APR_DPBUSD(acc, w, x) _mm256_dpbusd_epi32((acc), (w), (x))
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define APR_VARIANT 1 /* avx512vnni: EVEX-encoded 256-bit VNNI (Ice Lake, Zen 4) */
#define APR_DPBUSD(acc, w, x) _mm256_dpbusd_epi32((acc), (w), (x))
#else
#define APR_VARIANT 0 /* avx2 */
#endif

int apr_qgemm_variant(void) { return APR_VARIANT; }

/* Streaming the weights. A thread's units are consecutive in memory, so its share of a product reads the
 * packed weight as one sequential stream, and the first row group of each unit is the one that brings the
 * unit's bytes in from memory (later groups find them in cache). That group prefetches, at each step of
 * its loop, the bytes the step reads APR_STREAM_AHEAD further on (an eighth of a super-block tile per
 * sub-block in the tiled layouts, a k-group's weights in the others), so the prefetches cover the stream
 * without gaps; the separate scale arrays of the per-row layouts are 1/8 of it and left to the hardware.
 * The hardware prefetcher alone left one activation row's products (decode) at ~0.7 of the rate plain
 * loads of the same bytes reach: it restarts at every 4 KiB page and runs only a little ahead, so a core's
 * misses in flight ran dry while it computed. The 1.5B's products, bench_products --threads 1 --pages huge
 * (avx512vnni, 2026-12-05, interleaved runs): 1 row 137-156 ms -> 78-103 ms a token, 8 rows 191-220 ->
 * 114-131 ms, 128 rows unchanged (2.6-3.1 s either way, a noisy machine); there 4096 bytes ahead beat 1024,
 * 2048 and 8192. On the AMX Xeon of sessions 13-14 (2026-12-05, bench_products --rows 1 --pages huge) 2048
 * beat 4096 for this one-stream kernel by ~20 % (avx2 build: 2 threads 42.9-43.6 -> 35.0 ms a token, plain
 * loads of the same bytes 32.3; one thread 86-89 -> 67.5; avxvnni 42.1-42.7 -> 34.5-35.2), 1024, 1536, 3072
 * and 8192 were slower, prefetcht1 and prefetchnta too; 8 rows unchanged. With 4096 the samples piled up on
 * the prefetch instructions themselves: too many lines in flight for the core's fill buffers. In the
 * engine, qwen2.5-coder:1.5b decode (avx2 build) 21.8-22.5 -> 26.1-26.9 tok/s; the AMX build's
 * gemma3:270m 77 -> 82, smollm2:135m 166-176 -> 177-178 (its qwen decode takes the two-stream kernel below,
 * which keeps 4096 a stream). APR_STREAM_AHEAD is a build flag (apr.settings: env APR_STREAM_AHEAD) for other
 * machines. Prefetches never fault and change no result. */
#ifndef APR_STREAM_AHEAD
#define APR_STREAM_AHEAD 2048
#endif
#define PREFETCH_STREAM(stream, at, slice)                                                                   \
    do {                                                                                                     \
        if ((stream) && APR_STREAM_AHEAD > 0)                                                                \
            for (int off_ = 0; off_ < (slice); off_ += 64)                                                   \
                _mm_prefetch((const char *)(at) + APR_STREAM_AHEAD + off_, _MM_HINT_T0);                     \
    } while (0)

/* The distance this build prefetches (apr --version reports it; APR_STREAM_AHEAD may set it). */
int apr_qgemm_stream_ahead(void) { return APR_STREAM_AHEAD; }

/* 8 int32 lanes; lane j sums the products of elements 4j..4j+3 (w unsigned, x signed). */
static inline __m256i dot_u8_s8(__m256i w, __m256i x) {
#ifdef APR_DPBUSD
    return APR_DPBUSD(_mm256_setzero_si256(), w, x);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
#endif
}

/* [p0(0..3), p1(0..3), p2(0..3), p3(0..3) | p0(4..7), p1(4..7), p2(4..7), p3(4..7)] */
static inline __m256i hadd4(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
    return _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
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
                                                          float *y, const int stream) {
    const int64_t nb = kpad / APR_QK, ng = kpad / APR_KGROUP;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m128 acc[APR_MT], acco[APR_MT];
    for (int t = 0; t < mt; t++) acc[t] = acco[t] = _mm_setzero_ps();
    __m256 dm = _mm256_setzero_ps(); /* (d x4, -dmin x4) of the current super-block (q4k) */
    for (int64_t g = 0; g < ng; g++) {
        PREFETCH_STREAM(stream, wr + g * 64, 64);
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


static inline __attribute__((always_inline)) void q8_tile(const int8_t *qx, const float *dx, int64_t kpad,
                                                          const int8_t *wr, const uint16_t *sr, float bias,
                                                          int64_t r0, const int mt, int64_t n, int64_t j, float *y,
                                                          const int stream) {
    const int64_t nb = kpad / APR_QK, ng = kpad / APR_KGROUP;
    __m256 acc[APR_MT];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const int8_t *wg = wr + g * APR_KGROUP;
        PREFETCH_STREAM(stream, wg, APR_KGROUP);
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


static inline __attribute__((always_inline)) void q6_tile(const int8_t *qx, const float *dx, int64_t kpad,
                                                          const uint8_t *wr, const int8_t *scr, const uint16_t *dr,
                                                          float bias, int64_t r0, const int mt, int64_t n, int64_t j,
                                                          float *y, const int stream) {
    const int64_t nb = kpad / APR_QK, ng = kpad / APR_KGROUP;
    const __m256i low = _mm256_set1_epi8(0x0F), high = _mm256_set1_epi8(0x30), offset = _mm256_set1_epi8(32);
    __m256 acc[APR_MT];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *wg = wr + g * 96;
        PREFETCH_STREAM(stream, wg, 96);
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






#define APR_Q4K8_TILE 1184 /* bytes per tile of 8 rows and super-block of 256 (see the layout above) */
#define APR_Q4K8_SLICE (APR_Q4K8_TILE / 8) /* a sub-block's share of a tile's bytes */

/* Rows r0 .. r0+mt-1 of x against the 8 weight rows of one q4k8 tile; y gets 8 consecutive outputs a row. */
static inline __attribute__((always_inline)) void q4k8_tile(const int8_t *qx, const float *dx, const float *sx,
                                                            int64_t k, const uint8_t *tile, const float *bias,
                                                            int64_t r0, const int mt, int64_t n, int64_t j0,
                                                            float *y, const int stream) {
    const int64_t nb = k / APR_QK, nsb = k / 256;
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[APR_MT_PROMPT > APR_MT_TILED ? APR_MT_PROMPT : APR_MT_TILED];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *head = tile + sb * APR_Q4K8_TILE, *nib = head + 160;
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)head));
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(head + 16)));
        for (int b = 0; b < 8; b++) {
            const __m256 scale = _mm256_mul_ps(
                d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(head + 32 + 8 * b)))));
            const __m256 offset = _mm256_mul_ps(
                dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(head + 96 + 8 * b)))));
            const int64_t block = sb * 8 + b;
            /* The sub-block's 8 unpacked weight vectors are made once and stay in registers while each row
             * in turn runs its 8 maddubs against them. Interleaving the rows instead (as before) let the
             * compiler schedule all 64 products of a group at once and spill every one of them to the stack:
             * this order is ~25 % faster at 8 and 128 rows. An assembly version of this loop, with every
             * constant kept in a register, measured no faster (~10 cycles a row and sub-block either way). */
            const uint8_t *nb8 = nib + b * 128;
            PREFETCH_STREAM(stream, head + b * APR_Q4K8_SLICE, APR_Q4K8_SLICE);
            const __m256i n0 = _mm256_loadu_si256((const __m256i *)nb8), n1 = _mm256_loadu_si256((const __m256i *)(nb8 + 32));
            const __m256i n2 = _mm256_loadu_si256((const __m256i *)(nb8 + 64)), n3 = _mm256_loadu_si256((const __m256i *)(nb8 + 96));
            const __m256i wl0 = _mm256_and_si256(n0, low), wh0 = _mm256_and_si256(_mm256_srli_epi16(n0, 4), low);
            const __m256i wl1 = _mm256_and_si256(n1, low), wh1 = _mm256_and_si256(_mm256_srli_epi16(n1, 4), low);
            const __m256i wl2 = _mm256_and_si256(n2, low), wh2 = _mm256_and_si256(_mm256_srli_epi16(n2, 4), low);
            const __m256i wl3 = _mm256_and_si256(n3, low), wh3 = _mm256_and_si256(_mm256_srli_epi16(n3, 4), low);
#pragma GCC unroll 1 /* unrolled, the rows' temporaries push the weight vectors out of registers */
            for (int t = 0; t < mt; t++) {
                const int32_t *xr = (const int32_t *)(qx + (r0 + t) * k + block * APR_QK);
#ifdef APR_DPBUSD
                /* Two chains of 4, as in q4k8_tile_pairs: ~8 % faster on avxvnni at 128 rows. */
                __m256i da = APR_DPBUSD(_mm256_setzero_si256(), wl0, _mm256_set1_epi32(xr[0]));
                __m256i db = APR_DPBUSD(_mm256_setzero_si256(), wl2, _mm256_set1_epi32(xr[2]));
                da = APR_DPBUSD(da, wh0, _mm256_set1_epi32(xr[4]));
                db = APR_DPBUSD(db, wh2, _mm256_set1_epi32(xr[6]));
                da = APR_DPBUSD(da, wl1, _mm256_set1_epi32(xr[1]));
                db = APR_DPBUSD(db, wl3, _mm256_set1_epi32(xr[3]));
                da = APR_DPBUSD(da, wh1, _mm256_set1_epi32(xr[5]));
                db = APR_DPBUSD(db, wh3, _mm256_set1_epi32(xr[7]));
                const __m256 p = _mm256_cvtepi32_ps(_mm256_add_epi32(da, db));
                (void)ones;
#else
                __m256i sum = _mm256_maddubs_epi16(wl0, _mm256_set1_epi32(xr[0]));
                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wh0, _mm256_set1_epi32(xr[4])));
                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wl1, _mm256_set1_epi32(xr[1])));
                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wh1, _mm256_set1_epi32(xr[5])));
                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wl2, _mm256_set1_epi32(xr[2])));
                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wh2, _mm256_set1_epi32(xr[6])));
                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wl3, _mm256_set1_epi32(xr[3])));
                sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(wh3, _mm256_set1_epi32(xr[7])));
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum, ones));
#endif
                const int64_t bi = (r0 + t) * nb + block;
                acc[t] = _mm256_fmadd_ps(p, _mm256_mul_ps(scale, _mm256_set1_ps(dx[bi])), acc[t]);
                acc[t] = _mm256_fnmadd_ps(offset, _mm256_set1_ps(sx[bi]), acc[t]);
            }
        }
    }
    const __m256 b8 = bias ? _mm256_loadu_ps(bias + j0) : _mm256_setzero_ps();
    for (int t = 0; t < mt; t++) _mm256_storeu_ps(y + (r0 + t) * n + j0, _mm256_add_ps(acc[t], b8));
}


#define APR_Q6K8_TILE 1680 /* bytes per tile of 8 rows and super-block of 256 */
#define APR_Q6K8_SLICE (APR_Q6K8_TILE / 8)

/* q6k8 with the stored q in [0, 63] as maddubs' unsigned operand: sum (q - 32) x = sum q x - 32 sum x,
 * with the per-16 sums of the quantized activations (isx) applied through one madd with (sc0, sc1) pairs.
 * |q x| pairs reach 2 * 63 * 127, so two maddubs are summed in 16 bits before each madd by the scale. */
static inline __attribute__((always_inline)) void q6k8_tile(const int8_t *qx, const float *dx, const int16_t *isx,
                                                             int64_t k, const uint8_t *tile, const float *bias,
                                                             int64_t r0, const int mt, int64_t n, int64_t j0, float *y,
                                                             const int stream) {
    const int64_t nb = k / APR_QK, nsb = k / 256, ns = k / 16;
    const __m256i low = _mm256_set1_epi8(0x0F), high = _mm256_set1_epi8(0x30);
    const __m128i twice = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    __m256 acc[APR_MT_PROMPT > APR_MT_TILED ? APR_MT_PROMPT : APR_MT_TILED];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *head = tile + sb * APR_Q6K8_TILE, *body = head + 144;
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)head));
        for (int b = 0; b < 8; b++) {
            const uint8_t *qb = body + b * 192;
            PREFETCH_STREAM(stream, head + b * APR_Q6K8_SLICE, APR_Q6K8_SLICE);
            const __m128i sc0b = _mm_loadl_epi64((const __m128i *)(head + 16 + 16 * b));
            const __m128i sc1b = _mm_loadl_epi64((const __m128i *)(head + 24 + 16 * b));
            const __m256i sc0 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc0b, twice));
            const __m256i sc1 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc1b, twice));
            const __m256i pair = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(sc0b, sc1b)); /* (sc0[r], sc1[r]) */
            const int64_t block = sb * 8 + b;
            /* As in q4k8_tile: the block's 8 weight vectors are unpacked once, then each row in turn. */
            const __m256i hb0 = _mm256_loadu_si256((const __m256i *)(qb + 128));
            const __m256i hb1 = _mm256_loadu_si256((const __m256i *)(qb + 160));
            const __m256i n0 = _mm256_loadu_si256((const __m256i *)qb), n1 = _mm256_loadu_si256((const __m256i *)(qb + 32));
            const __m256i n2 = _mm256_loadu_si256((const __m256i *)(qb + 64)), n3 = _mm256_loadu_si256((const __m256i *)(qb + 96));
            const __m256i wl00 = _mm256_or_si256(_mm256_and_si256(n0, low), _mm256_and_si256(_mm256_slli_epi16(hb0, 4), high));
            const __m256i wh00 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n0, 4), low),
                                                 _mm256_and_si256(_mm256_slli_epi16(hb0, 2), high));
            const __m256i wl01 = _mm256_or_si256(_mm256_and_si256(n1, low), _mm256_and_si256(hb0, high));
            const __m256i wh01 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n1, 4), low),
                                                 _mm256_and_si256(_mm256_srli_epi16(hb0, 2), high));
            const __m256i wl10 = _mm256_or_si256(_mm256_and_si256(n2, low), _mm256_and_si256(_mm256_slli_epi16(hb1, 4), high));
            const __m256i wh10 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n2, 4), low),
                                                 _mm256_and_si256(_mm256_slli_epi16(hb1, 2), high));
            const __m256i wl11 = _mm256_or_si256(_mm256_and_si256(n3, low), _mm256_and_si256(hb1, high));
            const __m256i wh11 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n3, 4), low),
                                                 _mm256_and_si256(_mm256_srli_epi16(hb1, 2), high));
#ifdef APR_DPBUSD
            /* VNNI: each 16-element half summed in 32 bits from -32 * its activation sum, then scaled in float
             * exactly (see q6k8_tile_pairs): the same bits as the maddubs form below. */
            const __m256 sc0f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc0b));
            const __m256 sc1f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc1b));
            (void)sc0;
            (void)sc1;
            (void)pair;
#pragma GCC unroll 1
            for (int t = 0; t < mt; t++) {
                const int32_t *xr = (const int32_t *)(qx + (r0 + t) * k + block * APR_QK);
                const int16_t *sums = isx + (r0 + t) * ns + 2 * block;
                __m256i lo = APR_DPBUSD(_mm256_set1_epi32(-32 * (int32_t)sums[0]), wl00, _mm256_set1_epi32(xr[0]));
                __m256i hi = APR_DPBUSD(_mm256_set1_epi32(-32 * (int32_t)sums[1]), wh00, _mm256_set1_epi32(xr[4]));
                lo = APR_DPBUSD(lo, wl01, _mm256_set1_epi32(xr[1]));
                hi = APR_DPBUSD(hi, wh01, _mm256_set1_epi32(xr[5]));
                lo = APR_DPBUSD(lo, wl10, _mm256_set1_epi32(xr[2]));
                hi = APR_DPBUSD(hi, wh10, _mm256_set1_epi32(xr[6]));
                lo = APR_DPBUSD(lo, wl11, _mm256_set1_epi32(xr[3]));
                hi = APR_DPBUSD(hi, wh11, _mm256_set1_epi32(xr[7]));
                const __m256 q = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), sc0f, _mm256_mul_ps(_mm256_cvtepi32_ps(hi), sc1f));
                acc[t] = _mm256_fmadd_ps(q, _mm256_mul_ps(d, _mm256_set1_ps(dx[(r0 + t) * nb + block])), acc[t]);
            }
#else
#pragma GCC unroll 1 /* unrolled (as GCC 12 did), 5 of the 8 weight vectors spilled: 106 -> 118 GMAC/s */
            for (int t = 0; t < mt; t++) {
                const int32_t *xr = (const int32_t *)(qx + (r0 + t) * k + block * APR_QK);
                const __m256i lo0 = _mm256_add_epi16(_mm256_maddubs_epi16(wl00, _mm256_set1_epi32(xr[0])),
                                                     _mm256_maddubs_epi16(wl01, _mm256_set1_epi32(xr[1])));
                const __m256i hi0 = _mm256_add_epi16(_mm256_maddubs_epi16(wh00, _mm256_set1_epi32(xr[4])),
                                                     _mm256_maddubs_epi16(wh01, _mm256_set1_epi32(xr[5])));
                const __m256i lo1 = _mm256_add_epi16(_mm256_maddubs_epi16(wl10, _mm256_set1_epi32(xr[2])),
                                                     _mm256_maddubs_epi16(wl11, _mm256_set1_epi32(xr[3])));
                const __m256i hi1 = _mm256_add_epi16(_mm256_maddubs_epi16(wh10, _mm256_set1_epi32(xr[6])),
                                                     _mm256_maddubs_epi16(wh11, _mm256_set1_epi32(xr[7])));
                const __m256i i32 = _mm256_add_epi32(_mm256_add_epi32(_mm256_madd_epi16(lo0, sc0), _mm256_madd_epi16(hi0, sc1)),
                                                     _mm256_add_epi32(_mm256_madd_epi16(lo1, sc0), _mm256_madd_epi16(hi1, sc1)));
                const __m256i sums = _mm256_set1_epi32(*(const int32_t *)(isx + (r0 + t) * ns + 2 * block));
                const __m256i q32 = _mm256_sub_epi32(i32, _mm256_slli_epi32(_mm256_madd_epi16(pair, sums), 5));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q32),
                                         _mm256_mul_ps(d, _mm256_set1_ps(dx[(r0 + t) * nb + block])), acc[t]);
            }
#endif
        }
    }
    const __m256 b8 = bias ? _mm256_loadu_ps(bias + j0) : _mm256_setzero_ps();
    for (int t = 0; t < mt; t++) _mm256_storeu_ps(y + (r0 + t) * n + j0, _mm256_add_ps(acc[t], b8));
}

/* 512-bit kernels of the tiled layouts (the avx512vnni build). A 256-bit q4k8/q6k8 vector holds one
 * sub-block's 4 elements of the tile's 8 output rows; here a 512-bit vector holds them for two activation
 * rows at once: every 32-bit lane of the weight vector is doubled (lanes 2r and 2r + 1 are output row r)
 * and the activations come as pairs (row a's 4 bytes, row b's 4 bytes) broadcast by one 64-bit load, so
 * even lanes compute row a and odd lanes row b. One vpdpbusd (or maddubs) then does the work of two
 * 256-bit ones, and the broadcasts stay plain loads (no shuffle port). Each lane goes through exactly the
 * operations of the 256-bit kernel, in the same order (the integer sums, their conversion, the scale
 * products, the fused multiply-adds), so the results are the avx2 build's bits; only which rows share a
 * vector changes, and that never reaches a row's own numbers. The activations are laid out in pairs once
 * per product (apr_pair_rows); a row without a partner (M odd) takes the 256-bit kernel. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define APR_ZMM 1
#ifndef APR_MP4
#define APR_MP4 8 /* q4k8: row pairs sharing a sub-block's unpacked weights (then half as many, then 1) */
#endif
#ifndef APR_MP6
#define APR_MP6 8 /* the same for q6k8 */
#endif

/* A 256-bit vector's 8 lanes, each doubled: lane r -> lanes 2r and 2r + 1. */
static inline __m512i double_lanes(__m256i v) {
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
                                    _mm512_castsi256_si512(v));
}

static inline __m512 double_lanes_ps(__m256 v) { return _mm512_castsi512_ps(double_lanes(_mm256_castps_si256(v))); }

/* Even lanes (row a) to y[a], odd lanes (row b) to y[b], plus the bias (8 outputs each). */
static inline void store_pair(__m512 acc, __m256 b8, float *ya, float *yb) {
    const __m512 split = _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15), acc);
    _mm256_storeu_ps(ya, _mm256_add_ps(_mm512_castps512_ps256(split), b8));
    if (yb) _mm256_storeu_ps(yb, _mm256_add_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(split), 1)), b8));
}

/* Row pairs p0 .. p0+mp-1 (rows 2p, 2p + 1) against one q4k8 tile. px [pairs][k/4] holds each pair's
 * activation dwords side by side, pd / ps [pairs][k/32] their block scales and sums likewise. */
static inline __attribute__((always_inline)) void q4k8_tile_pairs(const int64_t *px, const int64_t *pd,
                                                                  const int64_t *ps, int64_t k, const uint8_t *tile,
                                                                  const float *bias, int64_t p0, const int mp,
                                                                  int64_t n, int64_t j0, float *y, const int stream,
                                                                  int64_t m) {
    const int64_t nb = k / APR_QK, nsb = k / 256, nd = k / 4;
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 acc[APR_MP4];
    for (int t = 0; t < mp; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *head = tile + sb * APR_Q4K8_TILE, *nib = head + 160;
        const __m512 d = double_lanes_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)head)));
        const __m512 dmin = double_lanes_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(head + 16))));
        for (int b = 0; b < 8; b++) {
            const __m512 scale = _mm512_mul_ps(
                d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(
                       _mm_loadl_epi64((const __m128i *)(head + 32 + 8 * b)), _mm_loadl_epi64((const __m128i *)(head + 32 + 8 * b))))));
            const __m512 offset = _mm512_mul_ps(
                dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(
                          _mm_loadl_epi64((const __m128i *)(head + 96 + 8 * b)), _mm_loadl_epi64((const __m128i *)(head + 96 + 8 * b))))));
            const int64_t block = sb * 8 + b;
            const uint8_t *nb8 = nib + b * 128;
            PREFETCH_STREAM(stream, head + b * APR_Q4K8_SLICE, APR_Q4K8_SLICE);
            const __m512i n0 = double_lanes(_mm256_loadu_si256((const __m256i *)nb8));
            const __m512i n1 = double_lanes(_mm256_loadu_si256((const __m256i *)(nb8 + 32)));
            const __m512i n2 = double_lanes(_mm256_loadu_si256((const __m256i *)(nb8 + 64)));
            const __m512i n3 = double_lanes(_mm256_loadu_si256((const __m256i *)(nb8 + 96)));
            const __m512i wl0 = _mm512_and_si512(n0, low), wh0 = _mm512_and_si512(_mm512_srli_epi16(n0, 4), low);
            const __m512i wl1 = _mm512_and_si512(n1, low), wh1 = _mm512_and_si512(_mm512_srli_epi16(n1, 4), low);
            const __m512i wl2 = _mm512_and_si512(n2, low), wh2 = _mm512_and_si512(_mm512_srli_epi16(n2, 4), low);
            const __m512i wl3 = _mm512_and_si512(n3, low), wh3 = _mm512_and_si512(_mm512_srli_epi16(n3, 4), low);
#pragma GCC unroll 8 /* unlike the 256-bit kernels: 32 vector registers hold the weights and accumulators */
            for (int t = 0; t < mp; t++) {
                const int64_t *xr = px + (p0 + t) * nd + block * 8;
                /* Two chains of 4 (integer sums: any order gives the same int32) halve the dependent latency,
                 * so more row pairs' products are in flight: ~8 % faster at 128 rows. */
                __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl0, _mm512_set1_epi64(xr[0]));
                __m512i db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl2, _mm512_set1_epi64(xr[2]));
                da = _mm512_dpbusd_epi32(da, wh0, _mm512_set1_epi64(xr[4]));
                db = _mm512_dpbusd_epi32(db, wh2, _mm512_set1_epi64(xr[6]));
                da = _mm512_dpbusd_epi32(da, wl1, _mm512_set1_epi64(xr[1]));
                db = _mm512_dpbusd_epi32(db, wl3, _mm512_set1_epi64(xr[3]));
                da = _mm512_dpbusd_epi32(da, wh1, _mm512_set1_epi64(xr[5]));
                db = _mm512_dpbusd_epi32(db, wh3, _mm512_set1_epi64(xr[7]));
                const __m512i dot = _mm512_add_epi32(da, db);
                const int64_t bi = (p0 + t) * nb + block;
                const __m512 dx2 = _mm512_castsi512_ps(_mm512_set1_epi64(pd[bi]));
                const __m512 sx2 = _mm512_castsi512_ps(_mm512_set1_epi64(ps[bi]));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scale, dx2), acc[t]);
                acc[t] = _mm512_fnmadd_ps(offset, sx2, acc[t]);
            }
        }
    }
    const __m256 b8 = bias ? _mm256_loadu_ps(bias + j0) : _mm256_setzero_ps();
    for (int t = 0; t < mp; t++)
        store_pair(acc[t], b8, y + 2 * (p0 + t) * n + j0, 2 * (p0 + t) + 1 < m ? y + (2 * (p0 + t) + 1) * n + j0 : NULL);
}

/* One q6k8 block's 6-bit weights from its 4 low-nibble vectors and 2 high-bit vectors (512-bit: two rows' or two
 * tiles' lanes side by side), in k-group order: w[0..3] the block's first 16 elements (q6k8_tile's wl00, wl01,
 * wl10, wl11), w[4..7] its second 16 (wh00 .. wh11); values q in [0, 63]. */
static inline __attribute__((always_inline)) void q6k8_unpack512(__m512i n0, __m512i n1, __m512i n2, __m512i n3,
                                                                 __m512i hb0, __m512i hb1, __m512i w[8]) {
    const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8(0x30);
    w[0] = _mm512_or_si512(_mm512_and_si512(n0, low), _mm512_and_si512(_mm512_slli_epi16(hb0, 4), high));
    w[1] = _mm512_or_si512(_mm512_and_si512(n1, low), _mm512_and_si512(hb0, high));
    w[2] = _mm512_or_si512(_mm512_and_si512(n2, low), _mm512_and_si512(_mm512_slli_epi16(hb1, 4), high));
    w[3] = _mm512_or_si512(_mm512_and_si512(n3, low), _mm512_and_si512(hb1, high));
    w[4] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(n0, 4), low), _mm512_and_si512(_mm512_slli_epi16(hb0, 2), high));
    w[5] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(n1, 4), low), _mm512_and_si512(_mm512_srli_epi16(hb0, 2), high));
    w[6] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(n2, 4), low), _mm512_and_si512(_mm512_slli_epi16(hb1, 2), high));
    w[7] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(n3, 4), low), _mm512_and_si512(_mm512_srli_epi16(hb1, 2), high));
}

/* q6k8 for row pairs with vpdpbusd. Each block's 16-element halves are summed in 32 bits by a chain of 4
 * vpdpbusd started from -32 * (the half's activation sum), which gives sum (q - 32) x over the half exactly
 * (|.| <= 16 * 32 * 127); the two halves are then scaled in float: sc0 * lo + sc1 * hi is an integer of
 * magnitude <= 2 * 65024 * 128 < 2^24, so cvt(hi) * sc1 and the fused multiply-add with cvt(lo) * sc0 are
 * exact and equal the 256-bit kernel's cvt of its int32 sum bit for bit. 8 vpdpbusd and 4 float operations
 * a row pair and block, where the maddubs form took 8 maddubs, 5 madd and 9 other integer operations.
 * po [pairs][k/32][2] holds each pair's (-32 * sum) of the block's first and second 16 activations, as
 * (row a, row b) int32 pairs. */
static inline __attribute__((always_inline)) void q6k8_tile_pairs(const int64_t *px, const int64_t *pd,
                                                                  const int64_t *po, int64_t k, const uint8_t *tile,
                                                                  const float *bias, int64_t p0, const int mp,
                                                                  int64_t n, int64_t j0, float *y, const int stream,
                                                                  int64_t m) {
    const int64_t nb = k / APR_QK, nsb = k / 256, nd = k / 4;
    __m512 acc[APR_MP6];
    for (int t = 0; t < mp; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *head = tile + sb * APR_Q6K8_TILE, *body = head + 144;
        const __m512 d = double_lanes_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)head)));
        for (int b = 0; b < 8; b++) {
            const uint8_t *qb = body + b * 192;
            PREFETCH_STREAM(stream, head + b * APR_Q6K8_SLICE, APR_Q6K8_SLICE);
            const __m512 sc0 = double_lanes_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(head + 16 + 16 * b)))));
            const __m512 sc1 = double_lanes_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(head + 24 + 16 * b)))));
            const int64_t block = sb * 8 + b;
            const __m512i hb0 = double_lanes(_mm256_loadu_si256((const __m256i *)(qb + 128)));
            const __m512i hb1 = double_lanes(_mm256_loadu_si256((const __m256i *)(qb + 160)));
            const __m512i n0 = double_lanes(_mm256_loadu_si256((const __m256i *)qb));
            const __m512i n1 = double_lanes(_mm256_loadu_si256((const __m256i *)(qb + 32)));
            const __m512i n2 = double_lanes(_mm256_loadu_si256((const __m256i *)(qb + 64)));
            const __m512i n3 = double_lanes(_mm256_loadu_si256((const __m256i *)(qb + 96)));
            __m512i w[8];
            q6k8_unpack512(n0, n1, n2, n3, hb0, hb1, w);
#pragma GCC unroll 8 /* unlike the 256-bit kernels: 32 vector registers hold the weights and accumulators */
            for (int t = 0; t < mp; t++) {
                const int64_t *xr = px + (p0 + t) * nd + block * 8;
                const int64_t bi = (p0 + t) * nb + block;
                __m512i lo = _mm512_dpbusd_epi32(_mm512_set1_epi64(po[2 * bi]), w[0], _mm512_set1_epi64(xr[0]));
                __m512i hi = _mm512_dpbusd_epi32(_mm512_set1_epi64(po[2 * bi + 1]), w[4], _mm512_set1_epi64(xr[4]));
                lo = _mm512_dpbusd_epi32(lo, w[1], _mm512_set1_epi64(xr[1]));
                hi = _mm512_dpbusd_epi32(hi, w[5], _mm512_set1_epi64(xr[5]));
                lo = _mm512_dpbusd_epi32(lo, w[2], _mm512_set1_epi64(xr[2]));
                hi = _mm512_dpbusd_epi32(hi, w[6], _mm512_set1_epi64(xr[6]));
                lo = _mm512_dpbusd_epi32(lo, w[3], _mm512_set1_epi64(xr[3]));
                hi = _mm512_dpbusd_epi32(hi, w[7], _mm512_set1_epi64(xr[7]));
                const __m512 q = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), sc0, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), sc1));
                const __m512 dx2 = _mm512_castsi512_ps(_mm512_set1_epi64(pd[bi]));
                acc[t] = _mm512_fmadd_ps(q, _mm512_mul_ps(d, dx2), acc[t]);
            }
        }
    }
    const __m256 b8 = bias ? _mm256_loadu_ps(bias + j0) : _mm256_setzero_ps();
    for (int t = 0; t < mp; t++)
        store_pair(acc[t], b8, y + 2 * (p0 + t) * n + j0, 2 * (p0 + t) + 1 < m ? y + (2 * (p0 + t) + 1) * n + j0 : NULL);
}

/* po for q6k8_tile_pairs: per row pair and block, (-32 * row a's sum, -32 * row b's sum) of the block's first
 * 16 quantized activations, then the same of its second 16 (isx [m][k/16]). */
static void pair_offsets(const int16_t *isx, int64_t m, int64_t nb, int64_t *out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (m * nb >= 16384)
    for (int64_t p = 0; p < (m + 1) / 2; p++) { /* an odd last row with itself */
        const int16_t *a = isx + 2 * p * (2 * nb), *b = 2 * p + 1 < m ? a + 2 * nb : a;
        int64_t *o = out + p * (2 * nb);
        for (int64_t i = 0; i < 2 * nb; i++)
            o[i] = (int64_t)((uint64_t)(uint32_t)(-32 * (int32_t)a[i]) | ((uint64_t)(uint32_t)(-32 * (int32_t)b[i]) << 32));
    }
}

/* One activation row (decode) against two tiles at once: the 256-bit kernels' operations (q4k8_tile and
 * q6k8_tile at one row, VNNI form) on 512-bit vectors whose lower half is tile a's 8 outputs and upper half
 * tile b's, lane for lane and in the same order, so the bits are the avx2 build's. At one row the 256-bit
 * kernels were bound by the core, not the memory, on a Sapphire Rapids-class VM (the 1.5B's products
 * 90 ms a token against 55 ms for plain loads of the same bytes, one thread): here a vector op serves 16
 * outputs instead of 8, and the two tiles' weight streams are prefetched as one thread's two streams. */
static inline __m512i two_halves(const uint8_t *a, const uint8_t *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

/* 8 bytes of each tile (at a and b) as 16 int32 lanes: unsigned (q4k8's sc and m) or signed (q6k8's sc). */
static inline __m512 two_byte_rows_ps(const uint8_t *a, const uint8_t *b, int is_signed) {
    const __m128i bytes = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)a), _mm_loadl_epi64((const __m128i *)b));
    return _mm512_cvtepi32_ps(is_signed ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes));
}

static inline __m512 two_halves_ph(const uint8_t *a, const uint8_t *b) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                                   _mm_loadu_si128((const __m128i *)b), 1));
}

/* How far ahead each of decode's two weight streams is prefetched: 4096 and 2048 measured the same there
 * (33.4-33.5 vs 33.5-33.8 ms a token, bench_products --rows 1, amx build), 4096 slightly faster in the engine. */
#ifndef APR_TWO_STREAMS_AHEAD
#define APR_TWO_STREAMS_AHEAD 4096
#endif

/* The two streams of a unit, each prefetched APR_TWO_STREAMS_AHEAD ahead in the order the thread reads them: past the
 * end of its tile a stream's prefetch continues in the same tile of the thread's next unit (two tiles on, under
 * the static schedule) instead of running into the partner tile, which the other stream reads already. With
 * K = 1536 (7 KiB a tile) the plain 4 KiB ahead left every unit to start on misses. */
static inline void prefetch_two_streams(const uint8_t *ta, const uint8_t *tb, int64_t at, int64_t slice, int64_t tile_bytes) {
    const int64_t ahead = at + APR_TWO_STREAMS_AHEAD + (at + APR_TWO_STREAMS_AHEAD >= tile_bytes ? tile_bytes : 0);
    for (int64_t off = 0; off < slice; off += 64) {
        _mm_prefetch((const char *)ta + ahead + off, _MM_HINT_T0);
        _mm_prefetch((const char *)tb + ahead + off, _MM_HINT_T0);
    }
}

static void q4k8_two_tiles_row(const int8_t *qx, const float *dx, const float *sx, int64_t k, const uint8_t *ta,
                               const uint8_t *tb, const float *bias, int64_t j0, float *y) {
    const int64_t nsb = k / 256;
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *ha = ta + sb * APR_Q4K8_TILE, *hb = tb + sb * APR_Q4K8_TILE;
        const __m512 d = two_halves_ph(ha, hb), dmin = two_halves_ph(ha + 16, hb + 16);
        for (int b = 0; b < 8; b++) {
            prefetch_two_streams(ta, tb, sb * APR_Q4K8_TILE + b * APR_Q4K8_SLICE, APR_Q4K8_SLICE, nsb * APR_Q4K8_TILE);
            const __m512 scale = _mm512_mul_ps(d, two_byte_rows_ps(ha + 32 + 8 * b, hb + 32 + 8 * b, 0));
            const __m512 offset = _mm512_mul_ps(dmin, two_byte_rows_ps(ha + 96 + 8 * b, hb + 96 + 8 * b, 0));
            const int64_t block = sb * 8 + b;
            const uint8_t *na = ha + 160 + b * 128, *nbb = hb + 160 + b * 128;
            const __m512i n0 = two_halves(na, nbb), n1 = two_halves(na + 32, nbb + 32);
            const __m512i n2 = two_halves(na + 64, nbb + 64), n3 = two_halves(na + 96, nbb + 96);
            const __m512i wl0 = _mm512_and_si512(n0, low), wh0 = _mm512_and_si512(_mm512_srli_epi16(n0, 4), low);
            const __m512i wl1 = _mm512_and_si512(n1, low), wh1 = _mm512_and_si512(_mm512_srli_epi16(n1, 4), low);
            const __m512i wl2 = _mm512_and_si512(n2, low), wh2 = _mm512_and_si512(_mm512_srli_epi16(n2, 4), low);
            const __m512i wl3 = _mm512_and_si512(n3, low), wh3 = _mm512_and_si512(_mm512_srli_epi16(n3, 4), low);
            const int32_t *xr = (const int32_t *)(qx + block * APR_QK);
            __m512i da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl0, _mm512_set1_epi32(xr[0]));
            __m512i db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl2, _mm512_set1_epi32(xr[2]));
            da = _mm512_dpbusd_epi32(da, wh0, _mm512_set1_epi32(xr[4]));
            db = _mm512_dpbusd_epi32(db, wh2, _mm512_set1_epi32(xr[6]));
            da = _mm512_dpbusd_epi32(da, wl1, _mm512_set1_epi32(xr[1]));
            db = _mm512_dpbusd_epi32(db, wl3, _mm512_set1_epi32(xr[3]));
            da = _mm512_dpbusd_epi32(da, wh1, _mm512_set1_epi32(xr[5]));
            db = _mm512_dpbusd_epi32(db, wh3, _mm512_set1_epi32(xr[7]));
            const __m512 p = _mm512_cvtepi32_ps(_mm512_add_epi32(da, db));
            acc = _mm512_fmadd_ps(p, _mm512_mul_ps(scale, _mm512_set1_ps(dx[block])), acc);
            acc = _mm512_fnmadd_ps(offset, _mm512_set1_ps(sx[block]), acc);
        }
    }
    _mm512_storeu_ps(y + j0, _mm512_add_ps(acc, bias ? _mm512_loadu_ps(bias + j0) : _mm512_setzero_ps()));
}

static void q6k8_two_tiles_row(const int8_t *qx, const float *dx, const int16_t *isx, int64_t k, const uint8_t *ta,
                               const uint8_t *tb, const float *bias, int64_t j0, float *y) {
    const int64_t nsb = k / 256;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *ha = ta + sb * APR_Q6K8_TILE, *hb = tb + sb * APR_Q6K8_TILE;
        const __m512 d = two_halves_ph(ha, hb);
        for (int b = 0; b < 8; b++) {
            prefetch_two_streams(ta, tb, sb * APR_Q6K8_TILE + b * APR_Q6K8_SLICE, APR_Q6K8_SLICE, nsb * APR_Q6K8_TILE);
            const uint8_t *qa = ha + 144 + b * 192, *qb = hb + 144 + b * 192;
            const __m512 sc0f = two_byte_rows_ps(ha + 16 + 16 * b, hb + 16 + 16 * b, 1);
            const __m512 sc1f = two_byte_rows_ps(ha + 24 + 16 * b, hb + 24 + 16 * b, 1);
            const int64_t block = sb * 8 + b;
            const __m512i hb0 = two_halves(qa + 128, qb + 128), hb1 = two_halves(qa + 160, qb + 160);
            const __m512i n0 = two_halves(qa, qb), n1 = two_halves(qa + 32, qb + 32);
            const __m512i n2 = two_halves(qa + 64, qb + 64), n3 = two_halves(qa + 96, qb + 96);
            __m512i w[8];
            q6k8_unpack512(n0, n1, n2, n3, hb0, hb1, w);
            const int32_t *xr = (const int32_t *)(qx + block * APR_QK);
            const int16_t *sums = isx + 2 * block;
            __m512i lo = _mm512_dpbusd_epi32(_mm512_set1_epi32(-32 * (int32_t)sums[0]), w[0], _mm512_set1_epi32(xr[0]));
            __m512i hi = _mm512_dpbusd_epi32(_mm512_set1_epi32(-32 * (int32_t)sums[1]), w[4], _mm512_set1_epi32(xr[4]));
            lo = _mm512_dpbusd_epi32(lo, w[1], _mm512_set1_epi32(xr[1]));
            hi = _mm512_dpbusd_epi32(hi, w[5], _mm512_set1_epi32(xr[5]));
            lo = _mm512_dpbusd_epi32(lo, w[2], _mm512_set1_epi32(xr[2]));
            hi = _mm512_dpbusd_epi32(hi, w[6], _mm512_set1_epi32(xr[6]));
            lo = _mm512_dpbusd_epi32(lo, w[3], _mm512_set1_epi32(xr[3]));
            hi = _mm512_dpbusd_epi32(hi, w[7], _mm512_set1_epi32(xr[7]));
            const __m512 q = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), sc0f, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), sc1f));
            acc = _mm512_fmadd_ps(q, _mm512_mul_ps(d, _mm512_set1_ps(dx[block])), acc);
        }
    }
    _mm512_storeu_ps(y + j0, _mm512_add_ps(acc, bias ? _mm512_loadu_ps(bias + j0) : _mm512_setzero_ps()));
}

/* Interleaves rows 2p and 2p + 1 of a [m][count] array of 32-bit values: out [(m + 1) / 2][count] 64-bit pairs (an odd
 * last row paired with itself). */
static void pair_rows(const void *in, int64_t m, int64_t count, int64_t *out, int threads) {
    const uint32_t *src = in;
#pragma omp parallel for schedule(static) num_threads(threads) if (m * count >= 65536) /* a prompt's pairs over the threads */
    for (int64_t p = 0; p < (m + 1) / 2; p++) { /* an odd last row with itself */
        const uint32_t *a = src + 2 * p * count, *b = 2 * p + 1 < m ? a + count : a;
        int64_t *o = out + p * count;
        for (int64_t i = 0; i < count; i++) o[i] = (int64_t)((uint64_t)a[i] | ((uint64_t)b[i] << 32));
    }
}

/* AMX (the amx build: Sapphire Rapids and later). A prompt's products against the tiled layouts run on the
 * tile unit, 16 activation rows by 16 output rows (two tiles of 8) by one block of 32 per TDPBSSD, which
 * does in one instruction the integer work of 64 vpdpbusd of the pairs kernels. TDPBSSD multiplies signed
 * by signed bytes: A is the activations as quantized (16 rows of 32 bytes, read in place from qx), B the
 * weights, unpacked once per pair of tiles into bytes (q4k8: q in [0, 15]; q6k8: q - 32 in [-32, 31]) in
 * the tile unit's B order (row i holds k-group i, elements 4i .. 4i + 3, of each output), which is exactly
 * the order of the nibble vectors of the packed layouts: unpacking is two masks and a shift a vector.
 * Each block's int32 sums then go through the float operations of the kernels above, lane for lane and in
 * the same order (a lane is one output row, a vector one activation row), so the results are the avx2
 * build's bits. q6k8's two 16-element halves need their own sums (their scales differ): two TDPBSSD of
 * K = 16 into two accumulator tiles. Rows past the last multiple of 16 take the pairs kernels. */
#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
#define APR_AMX 1
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

#define APR_AMX_ROWS 16                 /* activation rows a tile holds */
/* Fewer rows take the pairs kernels: unpacking a pair of tiles is paid once per product, and at 16 rows it
 * outweighed the gain (bench_products --rows 16: 217 ms against the pairs' 170; 32 rows: 328 against 345). */
#define APR_AMX_MIN_ROWS 32
#define APR_AMX_BLOCK_BYTES (8 * 64)    /* one block of 32 of 16 output rows in B order */
#define APR_AMX_BLOCK_FLOATS (3 * 16)   /* one block's per-output float factors (see amx_pack_*) */

/* Linux hands out the tile state only to a process that asked for it (arch_prctl, Linux 5.16+): 0, or
 * the errno (EINVAL: a kernel without it; the caller then runs another build). */
int apr_amx_enable(void) {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0) return 0;
    return errno ? errno : -1;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} apr_tile_config;

/* Tile shapes, one configuration per layout. q4k8: 0 / 1 the int32 sums (16 activation rows x 16 outputs) of
 * even / odd blocks, 2 the activations (16 x 32 bytes), 3 the weights (8 k-groups x 16 outputs x 4).
 * q6k8: 0 / 1 the sums of an even block's first / second 16 elements and 2 / 3 an odd block's, 4 / 5 the
 * activations' first / second 16 of a block, 6 / 7 the weights of each half (4 k-groups each). Sums of
 * consecutive blocks go to different tiles so that the tile unit works ahead while the vector unit scales.
 * ldtilecfg zeroes the tiles, so a thread loads a configuration only when the layout changes. */
static _Thread_local int amx_loaded = -1; /* the layout whose configuration this thread has loaded, or -1 */

static void amx_configure(int q6) {
    if (amx_loaded == q6) return;
    apr_tile_config c = {0};
    c.palette = 1;
    const uint8_t rows[2][8] = {{16, 16, 16, 8, 0, 0, 0, 0}, {16, 16, 16, 16, 16, 16, 4, 4}};
    const uint16_t colsb[2][8] = {{64, 64, 32, 64, 0, 0, 0, 0}, {64, 64, 64, 64, 16, 16, 64, 64}};
    for (int t = 0; t < 8; t++) {
        c.rows[t] = rows[q6][t];
        c.colsb[t] = colsb[q6][t];
    }
    /* Not _tile_loadconfig: GCC 12's declares its operand as the first 8 bytes of the configuration only, so at -O3
     * the stores to rows and colsb can be dropped as dead and ldtilecfg faults on the garbage (seen with this
     * function inlined into a benchmark's main). The whole 64-byte structure is the operand here. */
    __asm__ volatile("ldtilecfg %0" ::"m"(c));
    amx_loaded = q6;
}

/* Gives the tile state back at the end of a product (a thread holding it costs every context switch 8 KiB). */
static void amx_release(void) {
    if (amx_loaded < 0) return;
    _tile_release();
    amx_loaded = -1;
}

/* Tiles t[0], t[1] of a q4k8 weight in B order, nb blocks: bt [nb][8][64] bytes (row i: k-group i of tile 0's 8
 * outputs, then tile 1's), and per block f [nb][3][16]: scale d * sc and offset dmin * m of each output (the
 * third row unused). A weight's last, unpaired tile comes as t[1] == t[0]: its second 8 outputs are computed
 * and never stored. */
static void amx_pack_q4k8(const uint8_t *const t[2], int64_t nb, uint8_t *bt, float *f) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t block = 0; block < nb; block++) {
        const int64_t sb = block / 8, b = block % 8;
        const uint8_t *ha = t[0] + sb * APR_Q4K8_TILE, *hb = t[1] + sb * APR_Q4K8_TILE;
        uint8_t *out = bt + block * APR_AMX_BLOCK_BYTES;
        float *fb = f + block * APR_AMX_BLOCK_FLOATS;
        for (int v = 0; v < 4; v++) {
            const __m512i n4 = two_halves(ha + 160 + b * 128 + 32 * v, hb + 160 + b * 128 + 32 * v);
            _mm512_storeu_si512(out + v * 64, _mm512_and_si512(n4, low));                             /* 4v .. */
            _mm512_storeu_si512(out + (4 + v) * 64, _mm512_and_si512(_mm512_srli_epi16(n4, 4), low)); /* 16 + 4v */
        }
        _mm512_storeu_ps(fb, _mm512_mul_ps(two_halves_ph(ha, hb), two_byte_rows_ps(ha + 32 + 8 * b, hb + 32 + 8 * b, 0)));
        _mm512_storeu_ps(fb + 16, _mm512_mul_ps(two_halves_ph(ha + 16, hb + 16), two_byte_rows_ps(ha + 96 + 8 * b, hb + 96 + 8 * b, 0)));
    }
}

/* The same for q6k8: bt [nb][2][4][64] (the block's first 16 elements, then its second 16), values q - 32,
 * and f [nb][3][16]: sc of the first 16, sc of the second 16, d. */
static void amx_pack_q6k8(const uint8_t *const t[2], int64_t nb, uint8_t *bt, float *f) {
    const __m512i bias = _mm512_set1_epi8(32);
    for (int64_t block = 0; block < nb; block++) {
        const int64_t sb = block / 8, b = block % 8;
        const uint8_t *ha = t[0] + sb * APR_Q6K8_TILE, *hb = t[1] + sb * APR_Q6K8_TILE;
        const uint8_t *qa = ha + 144 + b * 192, *qb = hb + 144 + b * 192;
        __m512i w[8];
        q6k8_unpack512(two_halves(qa, qb), two_halves(qa + 32, qb + 32), two_halves(qa + 64, qb + 64),
                       two_halves(qa + 96, qb + 96), two_halves(qa + 128, qb + 128), two_halves(qa + 160, qb + 160), w);
        uint8_t *out = bt + block * APR_AMX_BLOCK_BYTES;
        for (int v = 0; v < 8; v++) _mm512_storeu_si512(out + v * 64, _mm512_sub_epi8(w[v], bias));
        float *fb = f + block * APR_AMX_BLOCK_FLOATS;
        _mm512_storeu_ps(fb, two_byte_rows_ps(ha + 16 + 16 * b, hb + 16 + 16 * b, 1));
        _mm512_storeu_ps(fb + 16, two_byte_rows_ps(ha + 24 + 16 * b, hb + 24 + 16 * b, 1));
        _mm512_storeu_ps(fb + 32, two_halves_ph(ha, hb));
    }
}

/* q4k8: the tile unit's sums of one block of 16 activation rows (a, a row every kpad bytes) against the 16
 * outputs of w into sums tile 0 or 1 (`odd`), and their store to sums [16][16]. Tile numbers must be
 * constants, hence the branches. */
static inline void amx_q4_start(int odd, const int8_t *a, int64_t kpad, const uint8_t *w) {
    _tile_loadd(2, a, kpad);
    _tile_loadd(3, w, 64);
    if (odd) {
        _tile_zero(1);
        _tile_dpbssd(1, 2, 3);
    } else {
        _tile_zero(0);
        _tile_dpbssd(0, 2, 3);
    }
}

static inline void amx_q4_store(int odd, int32_t (*sums)[16]) {
    if (odd)
        _tile_stored(1, sums, 64);
    else
        _tile_stored(0, sums, 64);
}

/* q6k8: the same for a block's two halves (tiles 0 / 1 when `odd` is 0, else 2 / 3), stored to sums [2][16][16]. */
static inline void amx_q6_start(int odd, const int8_t *a, int64_t kpad, const uint8_t *w) {
    _tile_loadd(4, a, kpad);
    _tile_loadd(5, a + 16, kpad);
    _tile_loadd(6, w, 64);
    _tile_loadd(7, w + 256, 64);
    if (odd) {
        _tile_zero(2);
        _tile_zero(3);
        _tile_dpbssd(2, 4, 6);
        _tile_dpbssd(3, 5, 7);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_dpbssd(0, 4, 6);
        _tile_dpbssd(1, 5, 7);
    }
}

static inline void amx_q6_store(int odd, int32_t (*sums)[16][16]) {
    if (odd) {
        _tile_stored(2, sums[0], 64);
        _tile_stored(3, sums[1], 64);
    } else {
        _tile_stored(0, sums[0], 64);
        _tile_stored(1, sums[1], 64);
    }
}

/* Activation rows [0, m16) (m16 a multiple of 16) against output rows j0 .. j0 + width - 1 (width 16, or 8
 * for a weight's last, unpaired tile) of a tiled weight packed by amx_pack_*: the tile unit's sums of each
 * block, then the float operations of q4k8_tile_pairs / q6k8_tile_pairs on each (activation row, output),
 * block after block. dxt / sxt are the activations' block scales and sums by group of 16 rows, block and row
 * (amx_transpose), so that a block's 16 rows read one cache line of each. Software-pipelined, because a tile
 * store waits for its multiply and the vector loads wait for the store: block b + 1 is multiplied before
 * block b is scaled and stored after it. Measured on a Sapphire Rapids-class VM, one thread, 128 rows
 * (bench_products --by-product, 2026-12-05): gate/up 145 GMAC/s with the pairs kernels; here 150 one block at
 * a time, 224-250 with the transposed scales and this pipeline; two blocks ahead (three sums tiles) was slower
 * (158-190). The packing of a unit's pair of tiles reads its weight bytes from memory while the tile unit waits
 * (~7 % of a 128-token prompt); prefetching the next unit's pair during this unit's first 16 rows (into L1, L2 or
 * L3) made the products ~20 % slower (bench_products --rows 128, 2 threads: 505-540 -> 610-660 ms a step,
 * session 14): the prefetches compete with the A tile loads, whose 16 rows are kpad bytes apart. Laying the
 * activations out tile by tile (each A tile 512 contiguous bytes) measured no different (502-547 ms against
 * 518-538 at 2 threads, 931-968 against 969-1019 at one). Session 15, this function alone on one unit's packed
 * weights (q4k8, k = 1536, 128 rows, one thread): ~105 cycles a block step of 16 rows; its float work alone
 * (tile instructions removed) ~50, its tile work alone (float work removed) ~60: the two barely overlap, and any
 * single kind of tile instruction added to the float work (only the A loads, only the stores, only the products)
 * costs 40-65 cycles a step. Four blocks' tile work issued back to back (four sums tiles, A and B alternating)
 * before their float work measured slower (115-118), so the sums tiles stay two. */
static void amx_rows(int q6, const int8_t *qx, const float *dxt, const float *sxt, int64_t kpad, const uint8_t *bt,
                     const float *f, const float *bias, int64_t m16, int64_t n, int64_t j0, int width, float *y) {
    const int64_t nb = kpad / APR_QK;
    int32_t sums[2][2][APR_AMX_ROWS][16] __attribute__((aligned(64))); /* [parity][half][row][output] */
    const __mmask16 lanes = width == 16 ? 0xFFFF : 0x00FF;
    const __m512 b16 = bias ? _mm512_maskz_loadu_ps(lanes, bias + j0) : _mm512_setzero_ps();
    amx_configure(q6);
    for (int64_t r0 = 0; r0 < m16; r0 += APR_AMX_ROWS) {
        __m512 acc[APR_AMX_ROWS];
        for (int t = 0; t < APR_AMX_ROWS; t++) acc[t] = _mm512_setzero_ps();
        const int8_t *a = qx + r0 * kpad;
        if (!q6) {
            amx_q4_start(0, a, kpad, bt);
            amx_q4_store(0, sums[0][0]);
            for (int64_t block = 0; block < nb; block++) {
                const int next = (int)((block + 1) & 1);
                if (block + 1 < nb) amx_q4_start(next, a + (block + 1) * APR_QK, kpad, bt + (block + 1) * APR_AMX_BLOCK_BYTES);
                int32_t(*s)[16] = sums[block & 1][0];
                const float *fb = f + block * APR_AMX_BLOCK_FLOATS;
                const float *dxr = dxt + (r0 * nb + block * APR_AMX_ROWS), *sxr = sxt + (r0 * nb + block * APR_AMX_ROWS);
                const __m512 scale = _mm512_loadu_ps(fb), offset = _mm512_loadu_ps(fb + 16);
                for (int t = 0; t < APR_AMX_ROWS; t++) {
                    const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(s[t]));
                    acc[t] = _mm512_fmadd_ps(dot, _mm512_mul_ps(scale, _mm512_set1_ps(dxr[t])), acc[t]);
                    acc[t] = _mm512_fnmadd_ps(offset, _mm512_set1_ps(sxr[t]), acc[t]);
                }
                if (block + 1 < nb) amx_q4_store(next, sums[next][0]);
            }
        } else {
            amx_q6_start(0, a, kpad, bt);
            amx_q6_store(0, sums[0]);
            for (int64_t block = 0; block < nb; block++) {
                const int next = (int)((block + 1) & 1);
                if (block + 1 < nb) amx_q6_start(next, a + (block + 1) * APR_QK, kpad, bt + (block + 1) * APR_AMX_BLOCK_BYTES);
                int32_t(*s)[16][16] = sums[block & 1];
                const float *fb = f + block * APR_AMX_BLOCK_FLOATS, *dxr = dxt + (r0 * nb + block * APR_AMX_ROWS);
                const __m512 sc0 = _mm512_loadu_ps(fb), sc1 = _mm512_loadu_ps(fb + 16), d = _mm512_loadu_ps(fb + 32);
                for (int t = 0; t < APR_AMX_ROWS; t++) {
                    const __m512 lo = _mm512_cvtepi32_ps(_mm512_load_si512(s[0][t]));
                    const __m512 hi = _mm512_cvtepi32_ps(_mm512_load_si512(s[1][t]));
                    const __m512 q = _mm512_fmadd_ps(lo, sc0, _mm512_mul_ps(hi, sc1));
                    acc[t] = _mm512_fmadd_ps(q, _mm512_mul_ps(d, _mm512_set1_ps(dxr[t])), acc[t]);
                }
                if (block + 1 < nb) amx_q6_store(next, sums[next]);
            }
        }
        for (int t = 0; t < APR_AMX_ROWS; t++) _mm512_mask_storeu_ps(y + (r0 + t) * n + j0, lanes, _mm512_add_ps(acc[t], b16));
    }
}

/* [m16][nb] per-row block values -> [m16 / 16][nb][16]: each group of 16 rows' values of a block together. */
static void amx_transpose(const float *in, int64_t m16, int64_t nb, float *out) {
    for (int64_t g = 0; g < m16 / APR_AMX_ROWS; g++)
        for (int64_t t = 0; t < APR_AMX_ROWS; t++)
            for (int64_t b = 0; b < nb; b++) out[(g * nb + b) * APR_AMX_ROWS + t] = in[(g * APR_AMX_ROWS + t) * nb + b];
}

/* Bytes of one thread's scratch for a weight of kpad: the B bytes and float factors of a pair of tiles. */
static size_t amx_scratch_bytes(int64_t kpad) {
    return (size_t)(kpad / APR_QK) * (APR_AMX_BLOCK_BYTES + APR_AMX_BLOCK_FLOATS * sizeof(float));
}
#else
#define APR_AMX 0
int apr_amx_enable(void) { return 0; } /* no tiles in this build: nothing to ask for */
#endif
#else
#define APR_ZMM 0
#endif
#if !APR_ZMM
#define APR_AMX 0
int apr_amx_enable(void) { return 0; }
#endif

static int tiled_layout(int64_t layout) { return layout == APR_Q4K8 || layout == APR_Q6K8; }

/* Bytes of one tile of 8 output rows of a tiled weight (all its super-blocks). */
static int64_t tile_bytes_of(const apr_weight *w) {
    return w->kpad / 256 * (w->layout == APR_Q6K8 ? APR_Q6K8_TILE : APR_Q4K8_TILE);
}

/* Output rows (per-row layouts) or tiles of 8 of them (tiled layouts): the units that threads share. */
static int64_t units_of(const apr_weight *w) { return tiled_layout(w->layout) ? w->n / 8 : w->n; }

/* One product's quantized activations: per row (qx, dx, sx, isx) and, for the 512-bit kernels, the same
 * in row pairs (px, pd, ps, pi: NULL when not made). */
typedef struct {
    const int8_t *qx;
    const float *dx, *sx;
    const int16_t *isx;
    const int64_t *px, *pd, *ps, *pi;
} apr_acts;

#if APR_ZMM
/* One group of `mp` row pairs from pair p of one unit's tiled weight (q6: q6k8, else q4k8). */
static inline __attribute__((always_inline)) void tile_pairs(const int q6, const apr_acts *a, int64_t kpad,
                                                             const uint8_t *wt, const float *bias, int64_t p,
                                                             const int mp, int64_t n, int64_t j0, float *y,
                                                             const int stream, int64_t m) {
    if (q6)
        q6k8_tile_pairs(a->px, a->pd, a->pi, kpad, wt, bias, p, mp, n, j0, y, stream, m);
    else
        q4k8_tile_pairs(a->px, a->pd, a->ps, kpad, wt, bias, p, mp, n, j0, y, stream, m);
}

/* The row pairs of one unit of a tiled weight, from row r_start (even): groups of APR_MP4 (q4k8) or APR_MP6 (q6k8)
 * pairs, then half that, then 2 (a lookup step's 4-5 rows: ~25 % of its work was unpacking the weights once per
 * pair), then 1. An odd last row is paired with itself (and stored once) where that completes a group of 2 pairs
 * (m % 4 == 3), so that it shares the group's unpacked weights; a self pair alone measured slower than the
 * 256-bit kernel (bench_products, amx build, one thread: 3 rows 114-119 -> 98-103 ms a step, 11 rows 183 -> 170;
 * 5 rows with a lone self pair 124 -> 138-144). Returns the first row left to the 256-bit kernels. */
static inline __attribute__((always_inline)) int64_t tile_pairs_of_unit(const int q6, const apr_acts *a, int64_t kpad,
                                                                        const uint8_t *wt, const float *bias, int64_t m,
                                                                        int64_t r_start, int64_t n, int64_t j0, float *y) {
    const int mp = q6 ? APR_MP6 : APR_MP4;
    const int64_t p_start = r_start / 2, pairs = m % 4 == 3 ? (m + 1) / 2 : m / 2;
    int64_t p = p_start;
    for (; p + mp <= pairs; p += mp) tile_pairs(q6, a, kpad, wt, bias, p, mp, n, j0, y, p == p_start, m);
    for (; p + mp / 2 <= pairs; p += mp / 2) tile_pairs(q6, a, kpad, wt, bias, p, mp / 2, n, j0, y, p == p_start, m);
    for (; p + 2 <= pairs; p += 2) tile_pairs(q6, a, kpad, wt, bias, p, 2, n, j0, y, p == p_start, m);
    for (; p < pairs; p++) tile_pairs(q6, a, kpad, wt, bias, p, 1, n, j0, y, p == p_start, m);
    return 2 * p < m ? 2 * p : m;
}
#endif

/* One group of `mt` activation rows from row r0 against one unit of a tiled weight, with the 256-bit kernels
 * (q6: q6k8, else q4k8). */
static inline __attribute__((always_inline)) void tile_rows(const int q6, const apr_acts *a, int64_t kpad,
                                                            const uint8_t *wt, const float *bias, int64_t r0,
                                                            const int mt, int64_t n, int64_t j0, float *y,
                                                            const int stream) {
    if (q6)
        q6k8_tile(a->qx, a->dx, a->isx, kpad, wt, bias, r0, mt, n, j0, y, stream);
    else
        q4k8_tile(a->qx, a->dx, a->sx, kpad, wt, bias, r0, mt, n, j0, y, stream);
}

/* run_unit for the tiled layouts (q6 a constant at each call, so each copy holds one layout's kernels): the
 * 512-bit row pairs where this build has them, then groups of APR_MT_PROMPT, APR_MT_TILED, APR_MT and 1 rows. */
static inline __attribute__((always_inline)) void tiled_unit(const int q6, const apr_weight *w, const apr_acts *a,
                                                             int64_t m, int64_t u, float *y, int64_t r_start) {
    const int64_t kpad = w->kpad, n = w->n, j0 = u * 8;
    const uint8_t *wt = (const uint8_t *)w->w + u * tile_bytes_of(w);
    int64_t r0 = r_start;
#if APR_ZMM
    if (a->px) r0 = tile_pairs_of_unit(q6, a, kpad, wt, w->bias, m, r_start, n, j0, y);
#endif
    for (; r0 + APR_MT_PROMPT <= m; r0 += APR_MT_PROMPT)
        tile_rows(q6, a, kpad, wt, w->bias, r0, APR_MT_PROMPT, n, j0, y, r0 == r_start);
    for (; r0 + APR_MT_TILED <= m; r0 += APR_MT_TILED)
        tile_rows(q6, a, kpad, wt, w->bias, r0, APR_MT_TILED, n, j0, y, r0 == r_start);
    for (; r0 + APR_MT <= m; r0 += APR_MT) tile_rows(q6, a, kpad, wt, w->bias, r0, APR_MT, n, j0, y, r0 == r_start);
    for (; r0 < m; r0++) tile_rows(q6, a, kpad, wt, w->bias, r0, 1, n, j0, y, r0 == r_start);
}

/* Activation rows [r_start, m) against unit u of w (r_start is 0, or for the tiled layouts the even row
 * where the AMX kernels stopped). The row groups (APR_MT_PROMPT, APR_MT_TILED, APR_MT, then 1) change only how
 * many rows share a weight load, never a row's own operations: see "Batch invariance" above. */
static void run_unit(const apr_weight *w, const apr_acts *a, int64_t m, int64_t u, float *y, int64_t r_start) {
    const int8_t *qx = a->qx;
    const float *dx = a->dx, *sx = a->sx;
    const int64_t kpad = w->kpad, n = w->n, nb = kpad / APR_QK;
    const float b = (w->bias && !tiled_layout(w->layout)) ? w->bias[u] : 0.0f;
    int64_t r0 = r_start;
    switch (w->layout) {
    case APR_Q4: {
        const uint8_t *wr = (const uint8_t *)w->w + u * (kpad / 2);
        const uint16_t *sr = (const uint16_t *)w->scale + u * nb, *orow = (const uint16_t *)w->offset + u * nb;
        for (; r0 + APR_MT <= m; r0 += APR_MT) q4_tile(qx, dx, sx, kpad, wr, sr, orow, NULL, 0, b, r0, APR_MT, n, u, y, r0 == r_start);
        for (; r0 < m; r0++) q4_tile(qx, dx, sx, kpad, wr, sr, orow, NULL, 0, b, r0, 1, n, u, y, r0 == r_start);
        break;
    }
    case APR_Q4K: {
        const uint8_t *wr = (const uint8_t *)w->w + u * (kpad / 2), *smr = (const uint8_t *)w->scale + u * (kpad / 16);
        const uint16_t *dmr = (const uint16_t *)w->offset + u * (kpad / 128);
        for (; r0 + APR_MT <= m; r0 += APR_MT) q4_tile(qx, dx, sx, kpad, wr, smr, NULL, dmr, 1, b, r0, APR_MT, n, u, y, r0 == r_start);
        for (; r0 < m; r0++) q4_tile(qx, dx, sx, kpad, wr, smr, NULL, dmr, 1, b, r0, 1, n, u, y, r0 == r_start);
        break;
    }
    case APR_Q8: {
        const int8_t *wr = (const int8_t *)w->w + u * kpad;
        const uint16_t *sr = (const uint16_t *)w->scale + u * (kpad / 16);
        for (; r0 + APR_MT <= m; r0 += APR_MT) q8_tile(qx, dx, kpad, wr, sr, b, r0, APR_MT, n, u, y, r0 == r_start);
        for (; r0 < m; r0++) q8_tile(qx, dx, kpad, wr, sr, b, r0, 1, n, u, y, r0 == r_start);
        break;
    }
    case APR_Q6: {
        const uint8_t *wr = (const uint8_t *)w->w + u * (kpad / 4 * 3);
        const int8_t *scr = (const int8_t *)w->scale + u * (kpad / 16);
        const uint16_t *dr = (const uint16_t *)w->offset + u * (kpad / APR_KGROUP);
        for (; r0 + APR_MT <= m; r0 += APR_MT) q6_tile(qx, dx, kpad, wr, scr, dr, b, r0, APR_MT, n, u, y, r0 == r_start);
        for (; r0 < m; r0++) q6_tile(qx, dx, kpad, wr, scr, dr, b, r0, 1, n, u, y, r0 == r_start);
        break;
    }
    case APR_Q4K8:
        tiled_unit(0, w, a, m, u, y, r_start);
        break;
    case APR_Q6K8:
        tiled_unit(1, w, a, m, u, y, r_start);
        break;
    }
}

static int known_layout(int64_t layout) {
    return layout == APR_Q4 || layout == APR_Q6 || layout == APR_Q8 || layout == APR_Q4K || layout == APR_Q4K8 ||
           layout == APR_Q6K8;
}

int apr_products(const apr_weight *const *ws, int count, const float *x, int64_t m, float *const *ys, int threads) {
    if (count < 1) return 0;
    const int64_t k = ws[0]->k, kpad = ws[0]->kpad, nb = kpad / APR_QK;
    for (int i = 0; i < count; i++) {
        if (!known_layout(ws[i]->layout)) return -3;
        if (ws[i]->k != k || ws[i]->kpad != kpad) return -4;
    }
    int8_t *qx = malloc((size_t)(m * kpad));
    float *dx = malloc((size_t)(m * nb) * sizeof(float));
    float *sx = malloc((size_t)(m * nb) * sizeof(float));
    int16_t *isx = malloc((size_t)(m * (kpad / 16)) * sizeof(int16_t));
    int64_t *px = NULL, *pd = NULL, *ps = NULL, *pi = NULL; /* row pairs for the 512-bit kernels */
    int status = -1;
    if (qx && dx && sx && isx) {
        apr_quantize_rows(x, m, k, kpad, qx, dx, sx);
        int need_isx = 0, tiled = 0;
        for (int i = 0; i < count; i++) {
            need_isx |= ws[i]->layout == APR_Q6K8;
            tiled |= tiled_layout(ws[i]->layout);
        }
#if APR_AMX
        /* A prompt (APR_AMX_MIN_ROWS rows or more) takes the tile unit for the tiled layouts, 16 rows at a time:
         * rows [0, m16). Only the rows after those need q6k8's per-16 sums and the row pairs below. */
        const int64_t m16 = tiled && m >= APR_AMX_MIN_ROWS ? m / APR_AMX_ROWS * APR_AMX_ROWS : 0;
#else
        const int64_t m16 = 0;
#endif
        /* Sums of the quantized activations per 16 (|sum| <= 2032), for q6k8's offset of 32: the bytes
         * biased to unsigned (+128 each) and summed by psadbw, 8 at a time. */
        const int64_t sums_from = need_isx ? m16 * (kpad / 16) : 0, sums16 = need_isx ? m * (kpad / 16) : 0;
#pragma omp parallel for schedule(static) num_threads(threads) if (sums16 - sums_from >= 16384)
        for (int64_t i = sums_from; i < sums16; i++) {
            const __m128i biased = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(qx + i * 16)), _mm_set1_epi8((char)0x80));
            const __m128i sad = _mm_sad_epu8(biased, _mm_setzero_si128());
            isx[i] = (int16_t)(_mm_cvtsi128_si32(sad) + _mm_extract_epi16(sad, 4) - 16 * 128);
        }
        apr_acts acts = {qx, dx, sx, isx, NULL, NULL, NULL, NULL};
#if APR_ZMM
        if (tiled && m - m16 >= 2) {
            /* Pairs of rows m16 + 2j, m16 + 2j + 1 at pair index m16 / 2 + j (m16 is even). */
            const int64_t pairs = (m + 1) / 2, p0 = m16 / 2, rows = m - m16;
            px = malloc((size_t)(pairs * (kpad / 4)) * sizeof(int64_t));
            pd = malloc((size_t)(pairs * nb) * sizeof(int64_t));
            ps = malloc((size_t)(pairs * nb) * sizeof(int64_t));
            pi = need_isx ? malloc((size_t)(pairs * nb * 2) * sizeof(int64_t)) : NULL;
            if (!px || !pd || !ps || (need_isx && !pi)) {
                status = -1;
                goto done;
            }
            pair_rows(qx + m16 * kpad, rows, kpad / 4, px + p0 * (kpad / 4), threads);
            pair_rows(dx + m16 * nb, rows, nb, pd + p0 * nb, threads);
            pair_rows(sx + m16 * nb, rows, nb, ps + p0 * nb, threads);
            if (need_isx) pair_offsets(isx + m16 * (kpad / 16), rows, nb, pi + p0 * nb * 2, threads);
            acts = (apr_acts){qx, dx, sx, isx, px, pd, ps, pi};
        }
#endif
#if APR_AMX
        /* Each thread unpacks a pair of tiles at a time into its own scratch. */
        const size_t scratch_bytes = amx_scratch_bytes(kpad);
        uint8_t *scratch = NULL;
        float *dxt = NULL, *sxt = NULL;
        if (m16 > 0) {
            scratch = aligned_alloc(64, (size_t)threads * scratch_bytes);
            dxt = malloc((size_t)(m16 * nb) * sizeof(float));
            sxt = malloc((size_t)(m16 * nb) * sizeof(float));
            if (!scratch || !dxt || !sxt) {
                free(scratch);
                free(dxt);
                free(sxt);
                status = -1;
                goto done;
            }
            amx_transpose(dx, m16, nb, dxt);
            amx_transpose(sx, m16, nb, sxt);
        }
#endif
        /* One region for all the weights; nowait lets a thread start on the next weight's units while
         * the other finishes this one's (each output element is still computed by one thread alone). */
#pragma omp parallel num_threads(threads)
        {
#if APR_AMX
            uint8_t *mine = scratch ? scratch + (size_t)omp_get_thread_num() * scratch_bytes : NULL;
#endif
            for (int i = 0; i < count; i++) {
                const apr_weight *w = ws[i];
#if APR_AMX
                if (mine && tiled_layout(w->layout)) {
                    const int q6 = w->layout == APR_Q6K8;
                    const int64_t tiles = w->n / 8, tile_bytes = tile_bytes_of(w);
                    float *f = (float *)(mine + (size_t)nb * APR_AMX_BLOCK_BYTES);
#pragma omp for schedule(static) nowait
                    for (int64_t u = 0; u < (tiles + 1) / 2; u++) {
                        const int64_t t0 = 2 * u;
                        const int paired = t0 + 1 < tiles; /* the last tile alone: twice, half stored */
                        const uint8_t *pair[2] = {(const uint8_t *)w->w + t0 * tile_bytes,
                                                  (const uint8_t *)w->w + (t0 + paired) * tile_bytes};
                        if (q6)
                            amx_pack_q6k8(pair, nb, mine, f);
                        else
                            amx_pack_q4k8(pair, nb, mine, f);
                        amx_rows(q6, qx, dxt, sxt, kpad, mine, f, w->bias, m16, w->n, t0 * 8, paired ? 16 : 8, ys[i]);
                        if (m16 < m)
                            for (int64_t t = t0; t < t0 + 2 && t < tiles; t++) run_unit(w, &acts, m, t, ys[i], m16);
                    }
                    continue;
                }
#endif
#if APR_ZMM
                if (m == 1 && tiled_layout(w->layout)) { /* decode: two tiles a unit */
                    const int q6 = w->layout == APR_Q6K8;
                    const int64_t tiles = w->n / 8, tile_bytes = tile_bytes_of(w);
                    const uint8_t *base = w->w;
#pragma omp for schedule(static) nowait
                    for (int64_t u = 0; u < (tiles + 1) / 2; u++) {
                        const int64_t t0 = 2 * u;
                        if (t0 + 1 == tiles)
                            run_unit(w, &acts, m, t0, ys[i], 0);
                        else if (q6)
                            q6k8_two_tiles_row(qx, dx, isx, kpad, base + t0 * tile_bytes, base + (t0 + 1) * tile_bytes,
                                               w->bias, t0 * 8, ys[i]);
                        else
                            q4k8_two_tiles_row(qx, dx, sx, kpad, base + t0 * tile_bytes, base + (t0 + 1) * tile_bytes,
                                               w->bias, t0 * 8, ys[i]);
                    }
                    continue;
                }
#endif
                const int64_t units = units_of(w);
#pragma omp for schedule(static) nowait
                for (int64_t u = 0; u < units; u++) run_unit(w, &acts, m, u, ys[i], 0);
            }
#if APR_AMX
            if (mine) amx_release();
#endif
        }
#if APR_AMX
        free(scratch);
        free(dxt);
        free(sxt);
#endif
        status = 0;
    }
#if APR_ZMM
done:
#endif
    free(px);
    free(pd);
    free(ps);
    free(pi);
    free(qx);
    free(dx);
    free(sx);
    free(isx);
    return status;
}

