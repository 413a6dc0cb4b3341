/* Types shared by apr's native kernels (qgemm.c products, layer.c decode layers). */
#ifndef APR_NATIVE_H
#define APR_NATIVE_H
#include <immintrin.h>
#include <stdint.h>

/* Weight layouts (see qgemm.c); the numbers are part of the Python binding (native/__init__.py). */
enum { APR_Q4 = 4, APR_Q6 = 6, APR_Q8 = 8, APR_Q4K = 40, APR_Q4K8 = 41, APR_Q6K8 = 61 };

/* One packed weight: y = x W^T (+ bias), W [n][k] stored in `layout` with K padded to kpad. */
typedef struct {
    int64_t layout;
    const void *w, *scale, *offset; /* the layout's parts in native.LAYOUTS order (unused ones NULL) */
    const float *bias;              /* NULL: none */
    int64_t n, k, kpad;
} apr_weight;

/* ys[i] [m][ws[i]->n] = x [m][k] ws[i]^T for `count` weights sharing the input (same k and kpad): x is
 * quantized once and all the products run in one parallel region. 0, -1 (no memory), -3 (unknown
 * layout) or -4 (the weights disagree on k). */
int apr_products(const apr_weight *const *ws, int count, const float *x, int64_t m, float *const *ys, int threads);

/* e^x for x <= 0 (softmax after subtracting the maximum), 8 at a time: Cephes' expf polynomial on
 * x - n ln2, times 2^n; relative error ~2e-7. Inputs below -87.3 give ~1e-38 instead of 0. */
static inline __m256 apr_exp_nonpositive(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.33654f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

#if defined(__AVX512F__)
/* apr_exp_nonpositive 16 at a time: the same operations on every lane (the same bits). */
static inline __m512 apr_exp_nonpositive16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.33654f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201E-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
}
#endif

#endif
