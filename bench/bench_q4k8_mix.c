/* How close the 256-bit q4k8 prompt kernel (qgemm.c's q4k8_tile: the avx2 build's prefill) runs to the ceiling of its
 * own instruction mix on this core: one row and sub-block (32 elements of 8 output rows) takes 8 broadcast loads of
 * the activations, 8 vpmaddubsw, 7 vpaddw, 1 vpmaddwd and the float epilogue the numerics contract fixes (convert,
 * scale product, fused multiply-add, offset fused multiply-add, the accumulator stored), whatever the code around it.
 *
 * Build and run (from the repository root; AVX2, FMA and F16C are all it needs):
 *     cc -O3 -std=c11 -D_DEFAULT_SOURCE -mavx2 -mfma -mf16c -fopenmp bench/bench_q4k8_mix.c -o /tmp/bench_q4k8_mix -lm
 *     /tmp/bench_q4k8_mix [--rounds 5]
 *
 * Measured, single thread, best of --rounds (each ~0.3 s):
 *   clock       a chain of dependent 64-bit imul (3 cycles each on every Intel core since Core 2 and on AMD Zen 1-5):
 *               the core's clock now, to turn times into cycles (a VM's TSC says nothing about turbo);
 *   mix_int     the integer part alone, straight-line assembly, 8 rows' worth per loop iteration;
 *   mix_full    the whole mix, straight-line assembly, 8 rows with their accumulators in memory as the kernel keeps
 *               them: the fastest this work runs here, with no loop, address or unpacking overhead;
 *   kernel_l1   q4k8_tile itself (row groups of 16, as run_unit calls it), activations and weights in L1 (k = 256);
 *   kernel_l2   the same at a prompt's shape: 128 rows of k = 1536 (the activations from L2) against 64 tiles.
 * Each is reported in ns and cycles per row and sub-block; kernel / mix_full says how much the compiled kernel
 * leaves on the table. The last stdout line is one JSON document.
 */
#include "../src/apr/engine/native/qgemm.c"

#if APR_VARIANT != 0
#error "bench_q4k8_mix measures the avx2 build's maddubs kernel: build it without the VNNI/AVX-512 flags"
#endif

#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int rounds = 5;

static double clock_ghz(void) {
    const long iterations = 20000000; /* 10 imul each: 600 M cycles */
    double best = 1e30;
    for (int r = 0; r < rounds; r++) {
        long x = 3;
        const double start = now();
        for (long i = 0; i < iterations; i++)
            __asm__ volatile("imul %0, %0\n imul %0, %0\n imul %0, %0\n imul %0, %0\n imul %0, %0\n"
                             "imul %0, %0\n imul %0, %0\n imul %0, %0\n imul %0, %0\n imul %0, %0\n"
                             : "+r"(x));
        const double s = now() - start;
        if (s < best) best = s;
    }
    return 3.0 * 10 * iterations / best / 1e9;
}

/* ymm8-15 hold a sub-block's 8 weight vectors, ymm0-7 the temporaries; %0 points at 64 KiB of scratch: activations at
 * 0, the float factors at 8192, 8 accumulators at 16384. */
#define MIX_BROADCASTS                                                                                               \
    "vpbroadcastd (%0),%%ymm0\n vpbroadcastd 4(%0),%%ymm1\n vpbroadcastd 8(%0),%%ymm2\n vpbroadcastd 12(%0),%%ymm3\n" \
    "vpbroadcastd 16(%0),%%ymm4\n vpbroadcastd 20(%0),%%ymm5\n vpbroadcastd 24(%0),%%ymm6\n vpbroadcastd 28(%0),%%ymm7\n"
#define MIX_PRODUCTS                                                                                               \
    "vpmaddubsw %%ymm0,%%ymm8,%%ymm0\n vpmaddubsw %%ymm1,%%ymm9,%%ymm1\n vpmaddubsw %%ymm2,%%ymm10,%%ymm2\n"      \
    "vpmaddubsw %%ymm3,%%ymm11,%%ymm3\n vpmaddubsw %%ymm4,%%ymm12,%%ymm4\n vpmaddubsw %%ymm5,%%ymm13,%%ymm5\n"    \
    "vpmaddubsw %%ymm6,%%ymm14,%%ymm6\n vpmaddubsw %%ymm7,%%ymm15,%%ymm7\n"
#define MIX_SUMS                                                                                                   \
    "vpaddw %%ymm0,%%ymm1,%%ymm0\n vpaddw %%ymm2,%%ymm3,%%ymm2\n vpaddw %%ymm4,%%ymm5,%%ymm4\n"                    \
    "vpaddw %%ymm6,%%ymm7,%%ymm6\n vpaddw %%ymm0,%%ymm2,%%ymm0\n vpaddw %%ymm4,%%ymm6,%%ymm4\n"                    \
    "vpaddw %%ymm0,%%ymm4,%%ymm0\n"
#define MIX_INT MIX_BROADCASTS MIX_PRODUCTS MIX_SUMS
#define MIX_FLOAT(acc)                                                                                             \
    "vpmaddwd 8192(%0),%%ymm0,%%ymm0\n vcvtdq2ps %%ymm0,%%ymm0\n vbroadcastss 8256(%0),%%ymm1\n"                   \
    "vmulps 8288(%0),%%ymm1,%%ymm1\n vfmadd213ps " acc "(%0),%%ymm1,%%ymm0\n vbroadcastss 8260(%0),%%ymm2\n"       \
    "vfnmadd231ps 8320(%0),%%ymm2,%%ymm0\n vmovaps %%ymm0," acc "(%0)\n"
#define MIX_ROWS_8                                                                                                 \
    MIX_INT MIX_FLOAT("16384") MIX_INT MIX_FLOAT("16416") MIX_INT MIX_FLOAT("16448") MIX_INT MIX_FLOAT("16480")    \
    MIX_INT MIX_FLOAT("16512") MIX_INT MIX_FLOAT("16544") MIX_INT MIX_FLOAT("16576") MIX_INT MIX_FLOAT("16608")
#define MIX_CLOBBERS "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7"

/* Seconds per row and sub-block of the straight-line mix: `full` with the float epilogue, else the integer part. */
static double mix_seconds(int full) {
    uint8_t *scratch = aligned_alloc(64, 1 << 16);
    for (int i = 0; i < (1 << 16); i++) scratch[i] = (uint8_t)(i & 63);
    float *floats = (float *)(scratch + 8192);
    for (int i = 0; i < 64; i++) floats[i] = 1.0f / (float)(i + 1);
    memset(scratch + 16384, 0, 256);
    __asm__ volatile("vpxor %%ymm8,%%ymm8,%%ymm8\n vpxor %%ymm9,%%ymm9,%%ymm9\n vpxor %%ymm10,%%ymm10,%%ymm10\n"
                     "vpxor %%ymm11,%%ymm11,%%ymm11\n vpxor %%ymm12,%%ymm12,%%ymm12\n vpxor %%ymm13,%%ymm13,%%ymm13\n"
                     "vpxor %%ymm14,%%ymm14,%%ymm14\n vpxor %%ymm15,%%ymm15,%%ymm15\n" ::
                         : "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    const long iterations = 4000000; /* 8 rows each */
    double best = 1e30;
    for (int r = 0; r < rounds; r++) {
        const double start = now();
        if (full)
            for (long i = 0; i < iterations; i++) __asm__ volatile(MIX_ROWS_8 ::"r"(scratch) : MIX_CLOBBERS);
        else
            for (long i = 0; i < iterations; i++)
                __asm__ volatile(MIX_INT MIX_INT MIX_INT MIX_INT MIX_INT MIX_INT MIX_INT MIX_INT ::"r"(scratch)
                                 : MIX_CLOBBERS);
        const double s = now() - start;
        if (s < best) best = s;
    }
    free(scratch);
    return best / (8.0 * iterations);
}

/* Seconds per row and sub-block of q4k8_tile: `rows` activation rows of k against `tiles` tiles, row groups of 16. */
static double kernel_seconds(int64_t k, int64_t rows, int64_t tiles, int reps) {
    const int64_t nb = k / APR_QK, nsb = k / 256, tile_bytes = nsb * APR_Q4K8_TILE;
    int8_t *qx = aligned_alloc(64, (size_t)(rows * k));
    float *dx = aligned_alloc(64, (size_t)(rows * nb) * sizeof(float)), *sx = aligned_alloc(64, (size_t)(rows * nb) * sizeof(float));
    uint8_t *w = aligned_alloc(64, (size_t)(tile_bytes * tiles));
    float *y = aligned_alloc(64, (size_t)(rows * tiles * 8) * sizeof(float));
    if (!qx || !dx || !sx || !w || !y) {
        fprintf(stderr, "bench_q4k8_mix: out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < rows * k; i++) qx[i] = (int8_t)(i * 7);
    for (int64_t i = 0; i < rows * nb; i++) {
        dx[i] = 0.01f * (float)(i % 7 + 1);
        sx[i] = (float)(i % 3);
    }
    for (int64_t i = 0; i < tile_bytes * tiles; i++) w[i] = (uint8_t)((i * 2654435761u) >> 13);
    for (int64_t t = 0; t < nsb * tiles; t++) { /* finite fp16 scales at the head of every tile */
        uint16_t *scales = (uint16_t *)(w + t * APR_Q4K8_TILE);
        for (int i = 0; i < 16; i++) scales[i] = 0x2000;
    }
    double best = 1e30;
    for (int r = 0; r < rounds; r++) {
        const double start = now();
        for (int rep = 0; rep < reps; rep++)
            for (int64_t u = 0; u < tiles; u++)
                for (int64_t r0 = 0; r0 + APR_MT_PROMPT <= rows; r0 += APR_MT_PROMPT)
                    q4k8_tile(qx, dx, sx, k, w + u * tile_bytes, NULL, r0, APR_MT_PROMPT, tiles * 8, u * 8, y, 0);
        const double s = now() - start;
        if (s < best) best = s;
    }
    free(qx);
    free(dx);
    free(sx);
    free(w);
    free(y);
    return best / ((double)reps * (double)tiles * (double)(rows / APR_MT_PROMPT * APR_MT_PROMPT) * (double)(k / APR_QK));
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc && atoi(argv[i + 1]) > 0)
            rounds = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_q4k8_mix [--rounds N]\n");
            return 2;
        }
    }
    const double ghz = clock_ghz();
    const char *names[] = {"mix_int", "mix_full", "kernel_l1", "kernel_l2"};
    double seconds[4];
    seconds[0] = mix_seconds(0);
    seconds[1] = mix_seconds(1);
    seconds[2] = kernel_seconds(256, 16, 1, 20000);
    seconds[3] = kernel_seconds(1536, 128, 64, 3);
    printf("clock %.2f GHz (dependent imul), variant %d, one thread; per row and sub-block (256 multiply-adds):\n", ghz,
           APR_VARIANT);
    for (int i = 0; i < 4; i++)
        printf("  %-10s %6.3f ns = %5.2f cycles (%5.1f GMAC/s)\n", names[i], seconds[i] * 1e9, seconds[i] * ghz * 1e9,
               256.0 / seconds[i] / 1e9);
    printf("  kernel / full mix: %.2f (L1), %.2f (prompt shape)\n", seconds[2] / seconds[1], seconds[3] / seconds[1]);
    printf("{\"bench\": \"bench_q4k8_mix\", \"variant\": %d, \"clock_ghz\": %.3f, \"rounds\": %d", APR_VARIANT, ghz, rounds);
    for (int i = 0; i < 4; i++)
        printf(", \"%s\": {\"ns\": %.4f, \"cycles\": %.3f}", names[i], seconds[i] * 1e9, seconds[i] * ghz * 1e9);
    printf(", \"kernel_l1_over_mix\": %.3f, \"kernel_l2_over_mix\": %.3f}\n", seconds[2] / seconds[1], seconds[3] / seconds[1]);
    return 0;
}
