/* One decode token's quantized products of Qwen2.5-1.5B (28 layers and the head) through apr's qgemm.c,
 * on random packed weights of the real shapes and layouts: how fast the kernels stream 1.0 GB at one
 * activation row, apart from everything else a decode step does.
 *
 * Build and run (from the repository root):
 *     cc -O3 -std=c11 -D_DEFAULT_SOURCE -mavx2 -mfma -mf16c -fopenmp bench/bench_products.c -o /tmp/bench_products -lm
 *     /tmp/bench_products [--reps 20] [--threads 2] [--pages 4k|huge] [--loads-only] [--rows M] [--by-product]
 * (a kernel variant: add its flags from apr/cpu.py, e.g. -mavx512f -mavx512vl -mavx512bw -mavx512vnni for
 * avx512vnni, the same plus -mamx-tile -mamx-int8 for amx, -mavxvnni for avxvnni; the output names the
 * variant that ran)
 *
 * --pages huge asks for transparent huge pages (madvise before first touch), as apr's loader does;
 * --loads-only replaces the products by plain vector loads of the same bytes in the same order (the
 * memory-side ceiling of this access pattern). Warmup 2 tokens, then --reps tokens; median and p90; the
 * last line is one JSON document. The layouts follow Q4_K_M: Q4_K everywhere except Q6_K for the head
 * and for V and down in every other layer (q4k8/q6k8 tiles, see qgemm.c). --rows M multiplies M activation
 * rows at once (a batched decode step of M sequences; M = 128 is a prompt's products, head included).
 * --by-product adds each kind of product's share of a step (q/k/v together, o, gate/up together, down as
 * q4k8 and as q6k8, the head): median wall and CPU ms a step, and GMAC/s, one line each and in the JSON.
 */
#include "../src/apr/engine/native/qgemm.c"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int huge_pages, loads_only, by_product;
static int64_t rows = 1; /* activation rows a product takes (batched decode, prefill) */
static size_t total_bytes;
static double total_macs; /* multiply-adds of one activation row through every weight */

static apr_weight make_weight(int64_t layout, int64_t n, int64_t k) {
    const size_t tile = layout == APR_Q4K8 ? APR_Q4K8_TILE : APR_Q6K8_TILE;
    const size_t bytes = (size_t)(n / 8) * (size_t)(k / 256) * tile, page = (size_t)1 << 21;
    const size_t rounded = (bytes + page - 1) / page * page;
    uint8_t *p = aligned_alloc(page, rounded);
    if (!p) {
        fprintf(stderr, "bench_products: out of memory\n");
        exit(1);
    }
    if (huge_pages) madvise(p, rounded, MADV_HUGEPAGE);
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)((i * 2654435761u) >> 13);
    for (size_t t = 0; t < bytes / tile; t++) { /* finite fp16 scales at the head of every tile */
        uint16_t *scales = (uint16_t *)(p + t * tile);
        for (int i = 0; i < (layout == APR_Q4K8 ? 16 : 8); i++) scales[i] = 0x2000;
    }
    total_bytes += bytes;
    total_macs += (double)n * (double)k;
    return (apr_weight){layout, p, NULL, NULL, NULL, n, k, k};
}

static size_t bytes_of(const apr_weight *w) {
    return (size_t)(w->n / 8) * (size_t)(w->kpad / 256) * (w->layout == APR_Q4K8 ? APR_Q4K8_TILE : APR_Q6K8_TILE);
}

/* The same bytes in the same order as the products' threads read them, with no arithmetic. */
static void stream(const apr_weight *const *ws, int count, int threads, float *sink) {
    __m256i acc = _mm256_setzero_si256();
#pragma omp parallel num_threads(threads)
    {
        __m256i mine = _mm256_setzero_si256();
        for (int i = 0; i < count; i++) {
            const uint8_t *p = ws[i]->w;
            const int64_t chunks = (int64_t)(bytes_of(ws[i]) / 32);
#pragma omp for schedule(static) nowait
            for (int64_t c = 0; c < chunks; c++) mine = _mm256_xor_si256(mine, _mm256_loadu_si256((const __m256i *)(p + 32 * c)));
        }
#pragma omp critical
        acc = _mm256_xor_si256(acc, mine);
    }
    _mm256_storeu_ps(sink, _mm256_castsi256_ps(acc));
}

static void run(const apr_weight *const *ws, int count, const float *x, float *const *ys, int threads) {
    if (loads_only)
        stream(ws, count, threads, ys[0]);
    else if (apr_products(ws, count, x, rows, ys, threads))
        exit(2);
}

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* --by-product: the kinds of product a step makes, and per repetition the wall and CPU seconds each took. */
enum { KIND_QKV, KIND_O, KIND_GATE_UP, KIND_DOWN_Q4K8, KIND_DOWN_Q6K8, KIND_HEAD, KINDS };
static const char *const kind_names[KINDS] = {"qkv", "o", "gate_up", "down_q4k8", "down_q6k8", "head"};
static double kind_macs[KINDS]; /* multiply-adds of one activation row */
static double *kind_wall[KINDS], *kind_cpu[KINDS];

static void run_kind(int kind, int rep, const apr_weight *const *ws, int count, const float *x, float *const *ys,
                     int threads) {
    const double start = now(), cpu_start = cpu_now();
    run(ws, count, x, ys, threads);
    if (rep >= 0 && by_product) kind_wall[kind][rep] += now() - start, kind_cpu[kind][rep] += cpu_now() - cpu_start;
}

int main(int argc, char **argv) {
    int reps = 20, threads = 2;
    if (apr_amx_enable() != 0) { /* the amx build: Linux hands out the tile state on request */
        fprintf(stderr, "bench_products: this kernel cannot use the AMX tiles (build without -mamx-*)\n");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pages") && i + 1 < argc) huge_pages = !strcmp(argv[++i], "huge");
        else if (!strcmp(argv[i], "--loads-only")) loads_only = 1;
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--by-product")) by_product = 1;
        else {
            fprintf(stderr, "usage: %s [--reps N] [--threads N] [--pages 4k|huge] [--loads-only] [--rows M] [--by-product]\n",
                    argv[0]);
            return 1;
        }
    }
    if (reps < 1 || reps > 1000 || threads < 1 || rows < 1 || rows > 256) {
        fprintf(stderr, "bench_products: --reps must be 1..1000, --threads >= 1 and --rows 1..256\n");
        return 1;
    }
    enum { LAYERS = 28 };
    apr_weight q[LAYERS], k[LAYERS], v[LAYERS], o[LAYERS], gate[LAYERS], up[LAYERS], down[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
        const int64_t six = l % 2 ? APR_Q4K8 : APR_Q6K8;
        q[l] = make_weight(APR_Q4K8, 1536, 1536), k[l] = make_weight(APR_Q4K8, 256, 1536);
        v[l] = make_weight(six, 256, 1536), o[l] = make_weight(APR_Q4K8, 1536, 1536);
        gate[l] = make_weight(APR_Q4K8, 8960, 1536), up[l] = make_weight(APR_Q4K8, 8960, 1536);
        down[l] = make_weight(six, 1536, 8960);
    }
    apr_weight head = make_weight(APR_Q6K8, 151936, 1536);
    float *x = malloc((size_t)rows * 8960 * sizeof(float)), *a = malloc((size_t)rows * 151936 * sizeof(float));
    float *b = malloc((size_t)rows * 8960 * sizeof(float)), *c = malloc((size_t)rows * 8960 * sizeof(float));
    for (int64_t i = 0; i < rows * 8960; i++) x[i] = (float)((i * 7919) % 200 - 100) / 50.0f;
    double *times = malloc((size_t)reps * sizeof(double)), *cpu = malloc((size_t)reps * sizeof(double));
    for (int kind = 0; kind < KINDS; kind++) {
        kind_wall[kind] = calloc((size_t)reps, sizeof(double));
        kind_cpu[kind] = calloc((size_t)reps, sizeof(double));
    }
    for (int l = 0; l < LAYERS; l++) {
        kind_macs[KIND_QKV] += (double)(1536 + 256 + 256) * 1536, kind_macs[KIND_O] += 1536.0 * 1536;
        kind_macs[KIND_GATE_UP] += 2.0 * 8960 * 1536;
        kind_macs[down[l].layout == APR_Q6K8 ? KIND_DOWN_Q6K8 : KIND_DOWN_Q4K8] += 1536.0 * 8960;
    }
    kind_macs[KIND_HEAD] = 151936.0 * 1536;
    for (int r = -2; r < reps; r++) {
        const double start = now(), cpu_start = cpu_now();
        for (int l = 0; l < LAYERS; l++) {
            /* as layer.c calls them: q/k/v together, o, gate/up together, down */
            const apr_weight *qkv[3] = {&q[l], &k[l], &v[l]}, *gu[2] = {&gate[l], &up[l]};
            const apr_weight *ow = &o[l], *dw = &down[l];
            float *qkv_out[3] = {a, b, c}, *gu_out[2] = {a, b};
            run_kind(KIND_QKV, r, qkv, 3, x, qkv_out, threads);
            run_kind(KIND_O, r, &ow, 1, x, &a, threads);
            run_kind(KIND_GATE_UP, r, gu, 2, x, gu_out, threads);
            run_kind(dw->layout == APR_Q6K8 ? KIND_DOWN_Q6K8 : KIND_DOWN_Q4K8, r, &dw, 1, x, &c, threads);
        }
        const apr_weight *hw = &head;
        run_kind(KIND_HEAD, r, &hw, 1, x, &a, threads);
        if (r >= 0) times[r] = now() - start, cpu[r] = cpu_now() - cpu_start;
    }
    qsort(times, (size_t)reps, sizeof(double), by_value);
    qsort(cpu, (size_t)reps, sizeof(double), by_value);
    /* CPU seconds of all threads a step: on a shared machine, what the work costs apart from waiting for a core */
    const double median = times[reps / 2], p90 = times[(int)(0.9 * (reps - 1) + 0.5)], cpu_median = cpu[reps / 2];
    const double gmacs = total_macs * (double)rows / median / 1e9;
    printf("step of %lld rows: %.2f ms median, %.2f ms p90, CPU %.2f ms, %.1f GB/s, %.1f GMAC/s (%.3f GB a step, %s, %s pages, %d threads, "
           "variant %d)\n", (long long)rows, median * 1e3, p90 * 1e3, cpu_median * 1e3, total_bytes / median / 1e9, gmacs, total_bytes / 1e9,
           loads_only ? "loads only" : "products", huge_pages ? "huge" : "4 KiB", threads, apr_qgemm_variant());
    char kinds_json[1024] = "";
    for (int kind = 0; by_product && kind < KINDS; kind++) {
        qsort(kind_wall[kind], (size_t)reps, sizeof(double), by_value);
        qsort(kind_cpu[kind], (size_t)reps, sizeof(double), by_value);
        const double wall = kind_wall[kind][reps / 2], kcpu = kind_cpu[kind][reps / 2];
        printf("  %-10s %8.2f ms, CPU %8.2f ms, %6.1f GMAC/s (wall), %4.1f %% of the step's CPU\n", kind_names[kind], wall * 1e3,
               kcpu * 1e3, kind_macs[kind] * (double)rows / wall / 1e9, 100.0 * kcpu / cpu_median);
        const size_t used = strlen(kinds_json);
        snprintf(kinds_json + used, sizeof kinds_json - used, "%s\"%s\": {\"ms\": %.3f, \"cpu_ms\": %.3f, \"gmac_s\": %.1f}",
                 kind ? ", " : "", kind_names[kind], wall * 1e3, kcpu * 1e3, kind_macs[kind] * (double)rows / wall / 1e9);
    }
    printf("{\"rows\": %lld, \"by_product\": {%s}, \"median_ms\": %.3f, \"p90_ms\": %.3f, \"cpu_ms\": %.3f, \"gb_s\": %.2f, \"gmac_s\": %.1f, \"bytes\": %zu, "
           "\"loads_only\": %s, \"huge_pages\": %s, \"threads\": %d, \"reps\": %d, \"variant\": %d}\n", (long long)rows, kinds_json,
           median * 1e3, p90 * 1e3, cpu_median * 1e3, total_bytes / median / 1e9, gmacs, total_bytes, loads_only ? "true" : "false",
           huge_pages ? "true" : "false", threads, reps, apr_qgemm_variant());
    return 0;
}
