/* Rows of a GGML-block matrix to float32: the embedding lookup of apr's CPU decode (weights.BlockRows).
 *
 * Why this exists: a decode step looks up one embedding row per sequence, and doing it with ~20 PyTorch
 * operators on a row of blocks cost ~0.2-0.5 ms a token, all of it dispatch. Here a row is a few thousand
 * scalar operations. Every value is computed with exactly the float32 operations, in the same order, of
 * quant.dequantize_raw (the reference the packed weights and the tests use): (q - 8) * scale + zero for the
 * int4 types, (q - 32) * (d * sc) for Q6_K, q * d for Q8_0. GCC keeps them unfused under -std=c11
 * (-ffp-contract=off), so the results are bit-identical, which test_engine_embedding checks.
 */
#include <immintrin.h>
#include <stdint.h>

int apr_dequant_abi(void) { return 1; }

/* GGML type numbers (ggml.h) and their block sizes. */
enum { GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q8_0 = 8, GGML_Q4_K = 12, GGML_Q6_K = 14 };

static inline float f16(const uint8_t *p) { return _cvtsh_ss((unsigned short)(p[0] | p[1] << 8)); }

/* 32 values of a Q4_0/Q4_1 block: element l is the low nibble of byte l, l + 16 the high one. */
static void q4_block(const uint8_t *qs, float scale, float zero, float *out) {
    for (int l = 0; l < 16; l++) {
        out[l] = (float)((qs[l] & 0xF) - 8) * scale + zero;
        out[l + 16] = (float)((qs[l] >> 4) - 8) * scale + zero;
    }
}

static void q4_k_superblock(const uint8_t *b, float *out) {
    const float d = f16(b), dmin = f16(b + 2);
    const uint8_t *packed = b + 4, *qs = b + 16;
    for (int j = 0; j < 8; j++) {
        const int sc = j < 4 ? packed[j] & 63 : (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
        const int mn = j < 4 ? packed[j + 4] & 63 : (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        const float scale = d * (float)sc, minimum = dmin * (float)mn;
        const float zero = 8.0f * scale - minimum;
        /* 64-value chunk c holds sub-block 2c in its low nibbles, 2c + 1 in its high ones */
        const uint8_t *chunk = qs + 32 * (j / 2);
        const int shift = (j % 2) * 4;
        for (int l = 0; l < 32; l++) out[32 * j + l] = (float)(((chunk[l] >> shift) & 0xF) - 8) * scale + zero;
    }
}

static void q6_k_superblock(const uint8_t *b, float *out) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = f16(b + 208);
    for (int half = 0; half < 2; half++) {
        for (int g = 0; g < 4; g++) {
            for (int l = 0; l < 32; l++) {
                const int low = g % 2 ? ql[64 * half + 32 + l] : ql[64 * half + l];
                const int q = ((g < 2 ? low & 0xF : low >> 4) | (((qh[32 * half + l] >> (2 * g)) & 3) << 4)) - 32;
                const int index = 128 * half + 32 * g + l;
                out[index] = (float)q * (d * (float)sc[index / 16]);
            }
        }
    }
}

/* out [count][k] <- rows ids[0..count) of the matrix whose row r is the row_bytes bytes at raw + r * row_bytes.
 * 0, -1 (a type this file does not know or k not a multiple of its block) or -2 (an id outside 0..rows). */
int apr_dequantize_rows(const uint8_t *raw, int64_t rows, int64_t row_bytes, int64_t type, int64_t k,
                        const int64_t *ids, int64_t count, float *out) {
    const int64_t block = (type == GGML_Q4_K || type == GGML_Q6_K) ? 256 : 32;
    const int64_t block_bytes = type == GGML_Q4_0 ? 18 : type == GGML_Q4_1 ? 20 : type == GGML_Q8_0 ? 34
                              : type == GGML_Q4_K ? 144 : type == GGML_Q6_K ? 210 : 0;
    if (!block_bytes || k % block || k / block * block_bytes != row_bytes) return -1;
    for (int64_t i = 0; i < count; i++)
        if (ids[i] < 0 || ids[i] >= rows) return -2;
    for (int64_t i = 0; i < count; i++) {
        const uint8_t *row = raw + ids[i] * row_bytes;
        float *y = out + i * k;
        for (int64_t c = 0; c < k / block; c++) {
            const uint8_t *b = row + c * block_bytes;
            float *o = y + c * block;
            switch (type) {
            case GGML_Q4_0:
                q4_block(b + 2, f16(b), 0.0f, o);
                break;
            case GGML_Q4_1: {
                const float d = f16(b), m = f16(b + 2);
                q4_block(b + 4, d, m + 8.0f * d, o);
                break;
            }
            case GGML_Q8_0: {
                const float d = f16(b);
                for (int l = 0; l < 32; l++) o[l] = (float)(int8_t)b[2 + l] * d;
                break;
            }
            case GGML_Q4_K:
                q4_k_superblock(b, o);
                break;
            case GGML_Q6_K:
                q6_k_superblock(b, o);
                break;
            }
        }
    }
    return 0;
}
