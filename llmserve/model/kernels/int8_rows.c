/* The two elementwise ends of a w8a8 matmul, each one pass instead of a chain of torch ops.
 *
 * At decode sizes (16 rows of 576) every torch op costs more in dispatch than in arithmetic, and
 * a w8a8 linear took eleven of them around its int8 GEMM. These compute exactly what the torch
 * code computes (same operations in the same order, round-half-to-even), so either path gives
 * bit-identical results; this file is built without -ffast-math for that reason.
 *
 *   quantize_rows:  x [rows, cols] -> q int8 [rows, cols], scale [rows] = max|x_row| / 127
 *   epilogue:       out[r, c] = acc[r, c] * x_scale[r] * w_scale[c]  (+ bias[c], after rounding)
 */
#pragma GCC optimize("no-fast-math", "fp-contract=off")
#ifndef ELEM_T

#include <math.h>
#include <stdint.h>

#define PARALLEL_MIN (1 << 18) /* elements; below this the threads cost more than they save */

#define ELEM_SELF "int8_rows.c"
#include "elem_types.h"

#else

void NAME(quantize_rows)(const ELEM_T *x, int64_t rows, int64_t cols, int8_t *q, float *scale) {
#pragma omp parallel for if (rows * cols >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const ELEM_T *row = x + r * cols;
        float amax = 0.0f;
        for (int64_t c = 0; c < cols; c++) amax = fmaxf(amax, fabsf(LOAD(row[c])));
        if (amax < 1e-8f) amax = 1e-8f;
        const float inv = (1.0f / amax) * 127.0f; /* as torch computes the scalar 127 / amax */
        scale[r] = amax / 127.0f;
        int8_t *out = q + r * cols;
        for (int64_t c = 0; c < cols; c++) out[c] = (int8_t)nearbyintf(LOAD(row[c]) * inv);
    }
}

void NAME(epilogue)(const int32_t *acc, const float *x_scale, const float *w_scale, const ELEM_T *bias,
                    int64_t rows, int64_t cols, ELEM_T *out) {
#pragma omp parallel for if (rows * cols >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *a = acc + r * cols;
        ELEM_T *o = out + r * cols;
        const float xs = x_scale[r];
        for (int64_t c = 0; c < cols; c++) {
            ELEM_T v = STORE((float)a[c] * xs * w_scale[c]);
            o[c] = bias ? STORE(LOAD(v) + LOAD(bias[c])) : v;
        }
    }
}

#endif
