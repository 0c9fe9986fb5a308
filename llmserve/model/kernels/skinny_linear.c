/* y = x @ w.T (+ bias) for a few rows of x (decode batches), bf16 or float32, reading the weights
 * as they lie.
 *
 * There a linear layer is bound by reading its weights once, but torch's matmuls reach only
 * 10-20 GB/s of weights at a few rows on this CPU. This walks the weights once, 4 output rows at
 * a time, each against up to 4 input rows, the 16 dot products reduced together by hsum16.
 *   bf16: vdpbf16ps (32 products per instruction, float32 sums), 20-50 GB/s. backends/cpu_ops.py sends
 *         it one row: from 2 rows the AMX kernel (amx_linear.c) is faster.
 *   float32: FMAs, 16 products per instruction. The model's 120 linears against MKL's sgemm:
 *         1 row 18.1 against 19.6 ms, 35 rows 45.7 against 64.6, 64 rows 67.6 against 73.1.
 *
 *   x: [m, k], w: [n, k], bias: [n] or NULL, y: [m, n], all of one type (but skinny_linear_bf16_f32out's
 *   y, float32); k a multiple of 32 (bf16) or 16 (float32), n a multiple of 4 (the caller checks, and
 *   uses torch otherwise)
 */
#include <stdint.h>

#include "bf16.h"

#ifdef __AVX512F__ /* otherwise the library is empty and callers use torch */
#include <immintrin.h>

#define TILE_N 4
#define TILE_M 4

/* Input rows m0 .. m0+rows-1 (rows <= TILE_M) times output rows n0 .. n0+3, float32. */
static inline __attribute__((always_inline)) void tile_f32(const float *x, const float *w, const float *bias, float *y,
                                                           int64_t m0, const int64_t rows, int64_t n0, int64_t n,
                                                           int64_t k) {
    __m512 acc[TILE_M * TILE_N];
    for (int i = 0; i < TILE_M * TILE_N; i++) acc[i] = _mm512_setzero_ps();
    const float *wt = w + n0 * k;
    for (int64_t c = 0; c < k; c += 16) {
        __m512 wv[TILE_N];
        for (int r = 0; r < TILE_N; r++) wv[r] = _mm512_loadu_ps(wt + r * k + c);
        for (int m = 0; m < rows; m++) {
            const __m512 xv = _mm512_loadu_ps(x + (m0 + m) * k + c);
            for (int r = 0; r < TILE_N; r++) acc[m * TILE_N + r] = _mm512_fmadd_ps(xv, wv[r], acc[m * TILE_N + r]);
        }
    }
    float sums[TILE_M * TILE_N];
    _mm512_storeu_ps(sums, hsum16(acc));
    for (int64_t m = 0; m < rows; m++)
        for (int r = 0; r < TILE_N; r++)
            y[(m0 + m) * n + n0 + r] = sums[m * TILE_N + r] + (bias == NULL ? 0.0f : bias[n0 + r]);
}

void skinny_linear_f32(const float *x, const float *w, const float *bias, float *y, int64_t m, int64_t n, int64_t k,
                       int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t n0 = 0; n0 < n; n0 += TILE_N)
        for (int64_t m0 = 0; m0 < m; m0 += TILE_M) {
            /* Constant row counts, so that the accumulators live in registers. */
            switch (m - m0 < TILE_M ? m - m0 : TILE_M) {
            case 1: tile_f32(x, w, bias, y, m0, 1, n0, n, k); break;
            case 2: tile_f32(x, w, bias, y, m0, 2, n0, n, k); break;
            case 3: tile_f32(x, w, bias, y, m0, 3, n0, n, k); break;
            default: tile_f32(x, w, bias, y, m0, 4, n0, n, k); break;
            }
        }
}

#ifdef __AVX512BF16__
/* Output rows n0 .. n0+3 for input rows m0 .. m0+rows-1 (rows <= TILE_M), written to y as bf16, or as
   float32 when f32_out (the sums as they are, unrounded: the LM head's logits). */
static inline __attribute__((always_inline)) void tile(const uint16_t *x, const uint16_t *w, const uint16_t *bias,
                                                       void *y, int64_t m0, const int64_t rows, int64_t n0,
                                                       int64_t n, int64_t k, const int f32_out) {
    __m512 acc[TILE_M * TILE_N];
    for (int i = 0; i < TILE_M * TILE_N; i++) acc[i] = _mm512_setzero_ps();
    const uint16_t *wt = w + n0 * k;
    for (int64_t c = 0; c < k; c += 32) {
        __m512bh wv[TILE_N];
        for (int r = 0; r < TILE_N; r++) wv[r] = (__m512bh)_mm512_loadu_si512((const void *)(wt + r * k + c));
        for (int m = 0; m < rows; m++) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x + (m0 + m) * k + c));
            for (int r = 0; r < TILE_N; r++) acc[m * TILE_N + r] = _mm512_dpbf16_ps(acc[m * TILE_N + r], xv, wv[r]);
        }
    }
    float sums[TILE_M * TILE_N];
    _mm512_storeu_ps(sums, hsum16(acc));
    for (int64_t m = 0; m < rows; m++)
        for (int r = 0; r < TILE_N; r++) {
            const float b = bias == NULL ? 0.0f : bf16_to_f32(bias[n0 + r]);
            if (f32_out) ((float *)y)[(m0 + m) * n + n0 + r] = sums[m * TILE_N + r] + b;
            else ((uint16_t *)y)[(m0 + m) * n + n0 + r] = f32_to_bf16(sums[m * TILE_N + r] + b);
        }
}

static inline __attribute__((always_inline)) void skinny_bf16(const uint16_t *x, const uint16_t *w,
                                                              const uint16_t *bias, void *y, int64_t m, int64_t n,
                                                              int64_t k, int num_threads, const int f32_out) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t n0 = 0; n0 < n; n0 += TILE_N)
        for (int64_t m0 = 0; m0 < m; m0 += TILE_M) {
            /* Constant row counts, so that the accumulators live in registers. */
            switch (m - m0 < TILE_M ? m - m0 : TILE_M) {
            case 1: tile(x, w, bias, y, m0, 1, n0, n, k, f32_out); break;
            case 2: tile(x, w, bias, y, m0, 2, n0, n, k, f32_out); break;
            case 3: tile(x, w, bias, y, m0, 3, n0, n, k, f32_out); break;
            default: tile(x, w, bias, y, m0, 4, n0, n, k, f32_out); break;
            }
        }
}

void skinny_linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int64_t m,
                        int64_t n, int64_t k, int num_threads) {
    skinny_bf16(x, w, bias, y, m, n, k, num_threads, 0);
}

/* The same product with y float32: the LM head, whose logits must not be rounded to bf16. */
void skinny_linear_bf16_f32out(const uint16_t *x, const uint16_t *w, const uint16_t *bias, float *y, int64_t m,
                               int64_t n, int64_t k, int num_threads) {
    skinny_bf16(x, w, bias, y, m, n, k, num_threads, 1);
}
#endif /* __AVX512BF16__ */
#endif /* __AVX512F__ */
