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
 * The per-element code is written once below the #else and compiled twice, by including this
 * file into itself, for each cache element type: C has no templates, and a function pointer
 * for the load would stop the compiler from vectorizing the inner loops.
 */
#ifndef KV_T

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CONCAT_(a, b) a##_##b
#define CONCAT(a, b) CONCAT_(a, b)
#define NAME(fn) CONCAT(fn, KV_SUFFIX)

/* bfloat16 is the top half of a float32: widening is a shift, exact. */
static inline float bf16_to_f32(uint16_t x) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)x << 16};
    return v.f;
}

#define KV_T float
#define KV_SUFFIX f32
#define KV_LOAD(x) (x)
#include "paged_attention.c" /* this file, once per KV_T */
#undef KV_T
#undef KV_SUFFIX
#undef KV_LOAD

#define KV_T uint16_t
#define KV_SUFFIX bf16
#define KV_LOAD(x) bf16_to_f32(x)
#include "paged_attention.c" /* this file, once per KV_T */

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
    for (int64_t g = 0; g < group; g++) {
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
        NAME(attend_one)(q + (s * num_heads + head0) * head_dim, key + h * num_slots * head_dim,
                         value + h * num_slots * head_dim, block_tables + s * max_blocks, context_lens[s], group,
                         head_dim, block_size, scale, scratch + omp_get_thread_num() * per_thread,
                         out + (s * num_heads + head0) * head_dim);
    }
    free(scratch);
    return 0;
}

#endif
