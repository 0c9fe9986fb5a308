/* The elementwise steps of a decoder layer, each one pass over its rows instead of a chain of
 * torch ops (a bf16 RMSNorm alone was seven, each allocating and converting a whole tensor).
 *
 *   rms_norm:    h = x + residual (stored back into residual), out = weight * (h / rms(h))
 *   rope_store:  rotate q and k (HF's rotate-half layout), write q out, k and v into the KV cache
 *   silu_mul:    out = silu(gate) * up, from the fused gate_up projection
 *
 * Each rounds where the torch code it replaces rounds (every bf16 op computes in float32 and
 * rounds to nearest even), so the results differ from torch's only by the order of the
 * sum of squares in rms_norm and by expf's last bit in silu. Each row is computed alone, so a
 * token gets the same result whatever else is in the batch.
 */
#pragma GCC optimize("fp-contract=off")
#ifndef ELEM_T

#include <math.h>
#include <stdint.h>
#include <string.h>

#define PARALLEL_MIN (1 << 16) /* elements; below this the threads cost more than they save */

#define ELEM_SELF "layer_ops.c"
#include "elem_types.h"

#else /* the per-element code, once per ELEM_T */

/* The value a float32 result has once stored in ELEM_T and read back. */
#define ROUND(x) LOAD(STORE(x))

/* residual may be NULL (no add). out must not alias x or residual. */
void NAME(rms_norm)(const ELEM_T *x, ELEM_T *residual, const ELEM_T *weight, ELEM_T *out, int64_t rows,
                    int64_t cols, float eps) {
#pragma omp parallel for if (rows * cols >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const ELEM_T *xr = x + r * cols;
        ELEM_T *hr = residual == NULL ? NULL : residual + r * cols;
        ELEM_T *outr = out + r * cols;
        float squares = 0.0f;
        if (hr != NULL) {
#pragma omp simd reduction(+ : squares)
            for (int64_t c = 0; c < cols; c++) {
                const float h = ROUND(LOAD(xr[c]) + LOAD(hr[c]));
                hr[c] = STORE(h);
                squares += h * h;
            }
        } else {
#pragma omp simd reduction(+ : squares)
            for (int64_t c = 0; c < cols; c++) squares += LOAD(xr[c]) * LOAD(xr[c]);
        }
        const float inv = 1.0f / sqrtf(squares / (float)cols + eps);
        const ELEM_T *h = hr != NULL ? hr : xr;
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) outr[c] = STORE(LOAD(weight[c]) * ROUND(LOAD(h[c]) * inv));
    }
}

/* qk: [tokens, q_heads + kv_heads, head_dim] with rows `qk_stride` elements apart; v likewise
   with kv_heads heads. cos, sin: [tokens, head_dim / 2] float32. The caches are
   [kv_heads, num_slots, head_dim]; token t's k and v go to slot slots[t]. q_out: [tokens, q_heads, head_dim]. */
void NAME(rope_store)(const ELEM_T *qk, int64_t qk_stride, const ELEM_T *v, int64_t v_stride, const float *cos,
                      const float *sin, int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                      const int64_t *slots, ELEM_T *key_cache, ELEM_T *value_cache, int64_t num_slots,
                      ELEM_T *q_out) {
    const int64_t half = head_dim / 2;
#pragma omp parallel for if (tokens * (q_heads + 2 * kv_heads) * head_dim >= PARALLEL_MIN)
    for (int64_t t = 0; t < tokens; t++) {
        const float *ct = cos + t * half, *st = sin + t * half;
        for (int64_t h = 0; h < q_heads + kv_heads; h++) {
            const ELEM_T *src = qk + t * qk_stride + h * head_dim;
            ELEM_T *dst = h < q_heads ? q_out + (t * q_heads + h) * head_dim
                                      : key_cache + ((h - q_heads) * num_slots + slots[t]) * head_dim;
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                const float x1 = LOAD(src[i]), x2 = LOAD(src[i + half]);
                dst[i] = STORE(x1 * ct[i] - x2 * st[i]);
                dst[i + half] = STORE(x2 * ct[i] + x1 * st[i]);
            }
        }
        for (int64_t h = 0; h < kv_heads; h++)
            memcpy(value_cache + (h * num_slots + slots[t]) * head_dim, v + t * v_stride + h * head_dim,
                   sizeof(ELEM_T) * head_dim);
    }
}

/* gate_up: [rows, 2 * cols], gate first; out: [rows, cols]. */
void NAME(silu_mul)(const ELEM_T *gate_up, int64_t rows, int64_t cols, ELEM_T *out) {
#pragma omp parallel for if (rows * cols >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const ELEM_T *gate = gate_up + r * 2 * cols, *up = gate + cols;
        ELEM_T *outr = out + r * cols;
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) {
            const float g = LOAD(gate[c]);
            outr[c] = STORE(ROUND(g / (1.0f + expf(-g))) * LOAD(up[c]));
        }
    }
}

#undef ROUND
#endif
