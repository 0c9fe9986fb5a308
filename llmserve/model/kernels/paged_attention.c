/* Decode attention over a paged KV cache, reading the blocks where they lie.
 *
 * The pure-torch path must first copy every sequence's history out of the block pool
 * (index_select) before SDPA can read it again: three passes over the KV bytes where one
 * suffices, and decode on CPU is bound by exactly those bytes. This kernel walks each
 * sequence's block table directly, one work item per (sequence, kv head) so the query heads
 * that share a kv head read its keys and values once.
 *
 * Layouts (contiguous; q and out float32, the cache float32 or bfloat16):
 *   q, out:        [num_seqs, num_heads, head_dim]        one query token per sequence
 *   key, value:    [num_kv_heads, num_slots, head_dim]     slot = block * block_size + offset
 *   block_tables:  [num_seqs, max_blocks] int64
 *   context_lens:  [num_seqs] int64                        keys 0 .. len-1 are attended
 *
 * Three paths, the first the machine and shape allow: over a bf16 cache with AVX512-BF16 and a
 * head dim of 64 or 128, one pass with online softmax (decode_bf16.h); with AVX-512 and a head
 * dim that is a multiple of 16, two passes taking 16 keys at a time; otherwise plain loops the
 * compiler vectorizes.
 *
 * The per-element code is written once below the #else and compiled twice, by including this
 * file into itself, for each cache element type: C has no templates, and a function pointer
 * for the load would stop the compiler from vectorizing the inner loops.
 */
#ifndef KV_T

#include <math.h>
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CONCAT_(a, b) a##_##b
#define CONCAT(a, b) CONCAT_(a, b)
#define NAME(fn) CONCAT(fn, KV_SUFFIX)
#define MIN3(a, b, c) ((a) < (b) ? ((a) < (c) ? (a) : (c)) : ((b) < (c) ? (b) : (c)))
#define MAX_VEC_HEAD_DIM 256
#define MAX_VEC_GROUP 16
#ifndef PREFETCH_BLOCKS
#define PREFETCH_BLOCKS 2
#endif

#include "bf16.h"

/* Each of `rows` rows of `len` scores becomes its softmax, in place. */
static void softmax_rows(float *scores, int64_t rows, int64_t len) {
    for (int64_t g = 0; g < rows; g++) {
        float *s = scores + g * len;
        float max = s[0];
        for (int64_t t = 1; t < len; t++) max = s[t] > max ? s[t] : max;
        /* Separate simple loops so the compiler vectorizes expf (libmvec): scalar expf alone
           cost as much as reading the whole KV history. */
        /* Weights below e^-60 become exactly 0: a real model's attention is peaked enough that
           the rest would be denormal, and every FMA on a denormal takes a slow microcode path
           (-ffast-math's flush-to-zero is not set up for a shared library). */
#pragma omp simd
        for (int64_t t = 0; t < len; t++) {
            const float x = s[t] - max;
            s[t] = x < -60.0f ? 0.0f : expf(x);
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < len; t++) sum += s[t];
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t t = 0; t < len; t++) s[t] *= inv;
    }
}

#define KV_T float
#define KV_SUFFIX f32
#define KV_LOAD(x) (x)
#define KV_IS_F32 1
#include "paged_attention.c" /* this file, once per KV_T */
#undef KV_T
#undef KV_SUFFIX
#undef KV_LOAD
#undef KV_IS_F32

#if defined(__AVX512BF16__)
static int attend_bf16_online(const float *q, const uint16_t *key, const uint16_t *value, const int64_t *table,
                              int64_t len, int64_t group, int64_t head_dim, int64_t block_size, float scale,
                              float *out);
#endif

#define KV_T uint16_t
#define KV_SUFFIX bf16
#define KV_LOAD(x) bf16_to_f32(x)
#define KV_IS_F32 0
#include "paged_attention.c" /* this file, once per KV_T */

#include "decode_bf16.h"

#else /* the per-element code, once per KV_T */


static float NAME(dot)(const float *a, const KV_T *b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) acc += a[i] * KV_LOAD(b[i]);
    return acc;
}

static void NAME(axpy)(float *y, float alpha, const KV_T *x, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] += alpha * KV_LOAD(x[i]);
}

/* Blocks lie anywhere in the pool, so the hardware prefetcher stops at every block boundary;
   asking for the next block while working on this one hides most of the DRAM latency. */
static void NAME(prefetch_block)(const KV_T *base, const int64_t *table, int64_t next_start, int64_t len,
                                 int64_t block_size, int64_t head_dim) {
    if (next_start >= len) return;
    const KV_T *row = base + table[next_start / block_size] * block_size * head_dim;
    const int64_t n = len - next_start < block_size ? len - next_start : block_size;
    const int64_t per_line = 64 / (int64_t)sizeof(KV_T);
    for (int64_t i = 0; i < n * head_dim; i += per_line) __builtin_prefetch(row + i, 0, 1);
}

static void NAME(attend_one)(const float *q, const KV_T *key, const KV_T *value, const int64_t *table,
                             int64_t len, int64_t group, int64_t head_dim, int64_t block_size, float scale,
                             float *scores, float *out) {
    /* scores: [group, len] scratch; q and out: [group, head_dim] */
    for (int64_t start = 0; start < len; start += block_size) {
        const int64_t n = len - start < block_size ? len - start : block_size;
        const int64_t slot = table[start / block_size] * block_size;
        NAME(prefetch_block)(key, table, start + block_size, len, block_size, head_dim);
        for (int64_t t = 0; t < n; t++) {
            const KV_T *k = key + (slot + t) * head_dim;
            for (int64_t g = 0; g < group; g++) scores[g * len + start + t] = NAME(dot)(q + g * head_dim, k, head_dim) * scale;
        }
    }
    softmax_rows(scores, group, len);
    memset(out, 0, sizeof(float) * group * head_dim);
    for (int64_t start = 0; start < len; start += block_size) {
        const int64_t n = len - start < block_size ? len - start : block_size;
        const int64_t slot = table[start / block_size] * block_size;
        NAME(prefetch_block)(value, table, start + block_size, len, block_size, head_dim);
        for (int64_t t = 0; t < n; t++) {
            const KV_T *v = value + (slot + t) * head_dim;
            for (int64_t g = 0; g < group; g++) NAME(axpy)(out + g * head_dim, scores[g * len + start + t], v, head_dim);
        }
    }
}

#ifdef __AVX512F__
/* 16 cache elements as float32 lanes (widening bfloat16 is a shift, exact). */
static inline __m512 NAME(load16)(const KV_T *x) {
#if KV_IS_F32
    return _mm512_loadu_ps(x);
#else
    const __m256i raw = _mm256_loadu_si256((const __m256i *)x);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
#endif
}

#if !KV_IS_F32 && defined(__AVX512BF16__)
/* dots[t] = lanes of q . k_t for the n <= 16 keys at `k` (zero past n), q as `pairs` vectors of
   32 bfloat16. Inlined with constant `pairs` the loop over the head dim unrolls. */
static inline __attribute__((always_inline)) void NAME(dots_bf16)(const __m512bh *q, const KV_T *k, int64_t n,
                                                                  int64_t head_dim, __m512 *dots,
                                                                  const int64_t pairs) {
    for (int64_t t = 0; t < 16; t++) {
        __m512 acc = _mm512_setzero_ps();
        if (t < n)
            for (int64_t c = 0; c < pairs; c++)
                acc = _mm512_dpbf16_ps(acc, q[c], (__m512bh)_mm512_loadu_si512((const void *)(k + t * head_dim + 32 * c)));
        dots[t] = acc;
    }
}
#endif

/* The same for float32 queries, `chunks` vectors of 16. */
static inline __attribute__((always_inline)) void NAME(dots_f32)(const float *q, const KV_T *k, int64_t n,
                                                                 int64_t head_dim, __m512 *dots,
                                                                 const int64_t chunks) {
    for (int64_t t = 0; t < 16; t++) {
        __m512 acc = _mm512_setzero_ps();
        if (t < n)
            for (int64_t c = 0; c < chunks; c++)
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c), NAME(load16)(k + t * head_dim + 16 * c), acc);
        dots[t] = acc;
    }
}

/* Row g of `scores` (stride len) gets scale * q_g . k_t for the n <= 16 keys at `k`, the 16 dot
   products reduced together by hsum16. */
static inline void NAME(key_scores)(const float *q, const KV_T *k, int64_t n, int64_t group, int64_t head_dim,
                                    __m512 scale, float *scores, int64_t len) {
    const __mmask16 live = (__mmask16)((1u << n) - 1);
    __m512 dots[16];
#if !KV_IS_F32 && defined(__AVX512BF16__)
    if (head_dim % 32 == 0) {
        /* The queries are bfloat16 values widened by the caller, so narrowing them back is exact,
           and vdpbf16ps then multiplies 32 cached elements per instruction without widening them. */
        __m512bh qb[MAX_VEC_GROUP * MAX_VEC_HEAD_DIM / 32];
        const int64_t pairs = head_dim / 32;
        for (int64_t i = 0; i < group * pairs; i++)
            qb[i] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(q + 32 * i + 16), _mm512_loadu_ps(q + 32 * i));
        for (int64_t g = 0; g < group; g++) {
            const __m512bh *qg = qb + g * pairs;
            if (pairs == 2) NAME(dots_bf16)(qg, k, n, head_dim, dots, 2);
            else if (pairs == 4) NAME(dots_bf16)(qg, k, n, head_dim, dots, 4);
            else NAME(dots_bf16)(qg, k, n, head_dim, dots, pairs);
            _mm512_mask_storeu_ps(scores + g * len, live, _mm512_mul_ps(hsum16(dots), scale));
        }
        return;
    }
#endif
    const int64_t chunks = head_dim / 16;
    for (int64_t g = 0; g < group; g++) {
        const float *qg = q + g * head_dim;
        if (chunks == 4) NAME(dots_f32)(qg, k, n, head_dim, dots, 4);
        else if (chunks == 8) NAME(dots_f32)(qg, k, n, head_dim, dots, 8);
        else NAME(dots_f32)(qg, k, n, head_dim, dots, chunks);
        _mm512_mask_storeu_ps(scores + g * len, live, _mm512_mul_ps(hsum16(dots), scale));
    }
}

/* out[g] += sum_t p[g * len + t] * v_t for `heads` heads and the n keys at `v`. Inlined with
   constant `heads` and `chunks` the accumulators stay in registers, and each value row is
   widened once for all the heads. */
static inline __attribute__((always_inline)) void NAME(value_tile)(const float *p, int64_t len, const KV_T *v,
                                                                   int64_t n, int64_t head_dim, float *out,
                                                                   const int64_t heads, const int64_t chunks) {
    __m512 acc[16];
    for (int64_t g = 0; g < heads; g++)
        for (int64_t c = 0; c < chunks; c++) acc[g * chunks + c] = _mm512_loadu_ps(out + g * head_dim + 16 * c);
    for (int64_t t = 0; t < n; t++) {
        for (int64_t c = 0; c < chunks; c++) {
            const __m512 row = NAME(load16)(v + t * head_dim + 16 * c);
            for (int64_t g = 0; g < heads; g++)
                acc[g * chunks + c] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * len + t]), row, acc[g * chunks + c]);
        }
    }
    for (int64_t g = 0; g < heads; g++)
        for (int64_t c = 0; c < chunks; c++) _mm512_storeu_ps(out + g * head_dim + 16 * c, acc[g * chunks + c]);
}

static void NAME(value_rows)(const float *p, int64_t len, const KV_T *v, int64_t n, int64_t group,
                             int64_t head_dim, float *out) {
    const int64_t chunks = head_dim / 16, tile = 16 / chunks;
    for (int64_t g0 = 0; g0 < group; g0 += tile) {
        const int64_t heads = group - g0 < tile ? group - g0 : tile;
        const float *pg = p + g0 * len;
        float *og = out + g0 * head_dim;
#define VALUE_TILE(H, C) NAME(value_tile)(pg, len, v, n, head_dim, og, H, C)
        if (chunks == 4 && heads == 4) VALUE_TILE(4, 4);
        else if (chunks == 4 && heads == 3) VALUE_TILE(3, 4);
        else if (chunks == 4 && heads == 2) VALUE_TILE(2, 4);
        else if (chunks == 4 && heads == 1) VALUE_TILE(1, 4);
        else if (chunks == 8 && heads == 2) VALUE_TILE(2, 8);
        else if (chunks == 8 && heads == 1) VALUE_TILE(1, 8);
        else VALUE_TILE(heads, chunks);
#undef VALUE_TILE
    }
}

/* attend_one for head_dim a multiple of 16, 16 keys at a time. A run of keys never crosses a
   block, whatever the block size. */
static void NAME(attend_one_avx512)(const float *q, const KV_T *key, const KV_T *value, const int64_t *table,
                                    int64_t len, int64_t group, int64_t head_dim, int64_t block_size,
                                    float scale, float *scores, float *out) {
    const __m512 scale_v = _mm512_set1_ps(scale);
    for (int64_t b = 0; b < PREFETCH_BLOCKS; b++) NAME(prefetch_block)(key, table, b * block_size, len, block_size, head_dim);
    for (int64_t start = 0, n; start < len; start += n) {
        const int64_t in_block = start % block_size;
        n = MIN3(16, len - start, block_size - in_block);
        if (in_block == 0) {
            NAME(prefetch_block)(key, table, start + PREFETCH_BLOCKS * block_size, len, block_size, head_dim);
            NAME(prefetch_block)(value, table, start, len, block_size, head_dim);
        }
        const int64_t slot = table[start / block_size] * block_size + in_block;
        NAME(key_scores)(q, key + slot * head_dim, n, group, head_dim, scale_v, scores + start, len);
    }
    softmax_rows(scores, group, len);
    memset(out, 0, sizeof(float) * group * head_dim);
    for (int64_t start = 0, n; start < len; start += n) {
        const int64_t in_block = start % block_size;
        n = MIN3(16, len - start, block_size - in_block);
        const int64_t slot = table[start / block_size] * block_size + in_block;
        NAME(value_rows)(scores + start, len, value + slot * head_dim, n, group, head_dim, out);
    }
}
#endif

int NAME(paged_decode_attention)(const float *q, const KV_T *key, const KV_T *value,
                                 const int64_t *block_tables, const int64_t *context_lens, float *out,
                                 int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                 int64_t num_slots, int64_t block_size, int64_t max_blocks, float scale,
                                 int num_threads) {
    const int64_t group = num_heads / num_kv_heads;
    int64_t max_len = 0;
    for (int64_t s = 0; s < num_seqs; s++) max_len = context_lens[s] > max_len ? context_lens[s] : max_len;
    if (num_threads < 1) num_threads = 1;
    /* One scratch row per thread, allocated before the parallel region so that a failure
       cannot leave some threads outside the work-sharing loop. */
    const int64_t per_thread = group * (max_len > 0 ? max_len : 1);
    float *scratch = malloc(sizeof(float) * per_thread * num_threads);
    if (scratch == NULL) return 1;
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
    for (int64_t item = 0; item < num_seqs * num_kv_heads; item++) {
        const int64_t s = item / num_kv_heads, h = item % num_kv_heads;
        const int64_t head0 = h * group;
        if (context_lens[s] < 1) continue;
        const float *q_item = q + (s * num_heads + head0) * head_dim;
        const KV_T *k_item = key + h * num_slots * head_dim, *v_item = value + h * num_slots * head_dim;
        float *scores = scratch + omp_get_thread_num() * per_thread, *out_item = out + (s * num_heads + head0) * head_dim;
#if !KV_IS_F32 && defined(__AVX512BF16__)
        if (attend_bf16_online(q_item, k_item, v_item, block_tables + s * max_blocks, context_lens[s], group,
                               head_dim, block_size, scale, out_item))
            continue;
#endif
#ifdef __AVX512F__
        if (head_dim % 16 == 0 && head_dim <= MAX_VEC_HEAD_DIM && group <= MAX_VEC_GROUP) {
            NAME(attend_one_avx512)(q_item, k_item, v_item, block_tables + s * max_blocks, context_lens[s], group,
                                    head_dim, block_size, scale, scores, out_item);
            continue;
        }
#endif
        NAME(attend_one)(q_item, k_item, v_item, block_tables + s * max_blocks, context_lens[s], group, head_dim,
                         block_size, scale, scores, out_item);
    }
    free(scratch);
    return 0;
}

#endif
