/* Helpers the kernels share: bfloat16 <-> float32 exactly as torch converts, and the transposing
 * sum that reduces 16 vectors of partial dot products at once. */
#ifndef LLMSERVE_KERNELS_BF16_H
#define LLMSERVE_KERNELS_BF16_H

#include <stdint.h>

/* bfloat16 is the top half of a float32: widening is a shift, exact. */
static inline float bf16_to_f32(uint16_t x) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)x << 16};
    return v.f;
}

/* Round to nearest even, as torch's float -> bfloat16 conversion does (inputs are finite). */
static inline uint16_t f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);
}

#ifdef __AVX512F__
#include <immintrin.h>

/* Lane t of the result is the sum of the 16 lanes of v[t]: a transposing reduction tree of 45
   instructions for 16 dot products, where 16 separate horizontal sums take about 130. */
static inline __m512 hsum16(const __m512 *v) {
    __m512 pairs[8], quads[4], halves[2];
    for (int i = 0; i < 8; i++) /* per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] */
        pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                                 _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) { /* per 128-bit lane: the lane sums of 4 consecutive v */
        const __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
        quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    for (int i = 0; i < 2; i++) /* lanes 0-1 and 2-3 each halve their sums */
        halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x88),
                                  _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], 0x88),
                         _mm512_shuffle_f32x4(halves[0], halves[1], 0xDD));
}
#endif

#endif
