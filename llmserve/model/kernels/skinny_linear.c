/* y = x @ w.T (+ bias) for a few rows of bfloat16 x; layer_ops.py sends it one (decode at batch 1).
 *
 * There a linear layer is bound by reading its weights once, but torch's bf16 matmul reaches
 * only 10-20 GB/s of weights at 1-2 rows on this CPU. This walks the weights once, 4 output rows
 * at a time, each against up to 4 input rows with vdpbf16ps (32 products per instruction, float32
 * sums), and reaches 20-50 GB/s. From 2 rows the AMX kernel (amx_linear.c) is faster.
 *
 *   x: [m, k] bf16, w: [n, k] bf16, bias: [n] bf16 or NULL, y: [m, n] bf16
 *   k a multiple of 32, n a multiple of 4 (the caller checks, and uses torch otherwise)
 */
#include <stdint.h>

#include "bf16.h"

#ifdef __AVX512BF16__ /* otherwise the library is empty and callers use torch */
#include <immintrin.h>

#define TILE_N 4
#define TILE_M 4

/* Output rows n0 .. n0+3 for input rows m0 .. m0+rows-1 (rows <= TILE_M). */
static inline __attribute__((always_inline)) void tile(const uint16_t *x, const uint16_t *w, const uint16_t *bias,
                                                       uint16_t *y, int64_t m0, const int64_t rows, int64_t n0,
                                                       int64_t n, int64_t k) {
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
            y[(m0 + m) * n + n0 + r] = f32_to_bf16(sums[m * TILE_N + r] + b);
        }
}

void skinny_linear_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int64_t m,
                        int64_t n, int64_t k, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t n0 = 0; n0 < n; n0 += TILE_N)
        for (int64_t m0 = 0; m0 < m; m0 += TILE_M) {
            /* Constant row counts, so that the accumulators live in registers. */
            switch (m - m0 < TILE_M ? m - m0 : TILE_M) {
            case 1: tile(x, w, bias, y, m0, 1, n0, n, k); break;
            case 2: tile(x, w, bias, y, m0, 2, n0, n, k); break;
            case 3: tile(x, w, bias, y, m0, 3, n0, n, k); break;
            default: tile(x, w, bias, y, m0, 4, n0, n, k); break;
            }
        }
}
#endif
