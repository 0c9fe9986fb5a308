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
#ifdef __AVX512F__
#include <immintrin.h>
__m512 _ZGVeN16v_expf(__m512); /* libmvec's 16-lane expf */
#endif

#define PARALLEL_MIN (1 << 16) /* elements; below this the threads cost more than they save */

#define ELEM_SELF "layer_ops.c"
#include "elem_types.h"

#else /* the per-element code, once per ELEM_T */

/* The value a float32 result has once stored in ELEM_T and read back. */
#define ROUND(x) LOAD(STORE(x))

#if ELEM_IS_BF16 && defined(__AVX512BF16__)
/* 16 bf16 elements as float32 lanes (exact), the lanes past n zero. */
static inline __m512 widen16(const uint16_t *x, __mmask16 live) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, x)), 16));
}

/* One row of silu_mul, 16 lanes at a time: the compiler's own vectorization of the loop below
   took 1 ns an element (256-bit lanes, bf16 rounding in integer ops). vcvtneps2bf16 rounds to
   nearest even as f32_to_bf16 does. */
static void silu_mul_row_bf16(const uint16_t *gate, const uint16_t *up, uint16_t *out, int64_t cols) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t c = 0; c < cols; c += 16) {
        const __mmask16 live = cols - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - c)) - 1);
        const __m512 g = widen16(gate + c, live);
        const __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, _ZGVeN16v_expf(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        const __m512 s_rounded = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(s)), 16));
        const __m256bh result = _mm512_cvtneps_pbh(_mm512_mul_ps(s_rounded, widen16(up + c, live)));
        _mm256_mask_storeu_epi16(out + c, live, (__m256i)result);
    }
}

/* One row of rms_norm, 16 lanes at a time, rounding where the scalar code below rounds. */
static void rms_norm_row_bf16(const uint16_t *x, uint16_t *residual, const uint16_t *weight, uint16_t *out,
                              int64_t cols, float eps) {
    __m512 squares = _mm512_setzero_ps();
    const uint16_t *h = residual != NULL ? residual : x;
    for (int64_t c = 0; c < cols; c += 16) {
        const __mmask16 live = cols - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - c)) - 1);
        __m512 v = widen16(x + c, live);
        if (residual != NULL) {
            const __m256bh sum = _mm512_cvtneps_pbh(_mm512_add_ps(v, widen16(residual + c, live)));
            _mm256_mask_storeu_epi16(residual + c, live, (__m256i)sum);
            v = widen16(residual + c, live);
        }
        squares = _mm512_fmadd_ps(v, v, squares);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / (float)cols + eps));
    for (int64_t c = 0; c < cols; c += 16) {
        const __mmask16 live = cols - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - c)) - 1);
        const __m512 normed = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(widen16(h + c, live), inv))), 16));
        const __m256bh result = _mm512_cvtneps_pbh(_mm512_mul_ps(widen16(weight + c, live), normed));
        _mm256_mask_storeu_epi16(out + c, live, (__m256i)result);
    }
}
#endif

/* residual may be NULL (no add). out must not alias x or residual. */
void NAME(rms_norm)(const ELEM_T *x, ELEM_T *residual, const ELEM_T *weight, ELEM_T *out, int64_t rows,
                    int64_t cols, float eps) {
#pragma omp parallel for if (rows * cols >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const ELEM_T *xr = x + r * cols;
        ELEM_T *hr = residual == NULL ? NULL : residual + r * cols;
        ELEM_T *outr = out + r * cols;
#if ELEM_IS_BF16 && defined(__AVX512BF16__)
        rms_norm_row_bf16(xr, hr, weight, outr, cols, eps);
#else
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
#endif
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


/* gate_up: [rows, 2 * cols], gate first; out: [rows, cols]. expf makes each element dear, so
   the threads split smaller inputs than the other kernels'. */
void NAME(silu_mul)(const ELEM_T *gate_up, int64_t rows, int64_t cols, ELEM_T *out) {
#pragma omp parallel for if (rows * cols >= PARALLEL_MIN / 4)
    for (int64_t r = 0; r < rows; r++) {
        const ELEM_T *gate = gate_up + r * 2 * cols, *up = gate + cols;
        ELEM_T *outr = out + r * cols;
#if ELEM_IS_BF16 && defined(__AVX512BF16__)
        silu_mul_row_bf16(gate, up, outr, cols);
#else
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) {
            const float g = LOAD(gate[c]);
            outr[c] = STORE(ROUND(g / (1.0f + expf(-g))) * LOAD(up[c]));
        }
#endif
    }
}

#undef ROUND
#endif
