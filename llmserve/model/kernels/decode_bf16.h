/* Decode attention over a bfloat16 cache in one pass over the keys (online softmax), included
 * by paged_attention.c, whose two-pass kernel it replaces for head dims that are multiples of 32.
 *
 * Per run of up to 16 keys: the group's scores by vdpbf16ps reduced together by hsum16, the
 * running max and sum updated, the probabilities rounded to bfloat16 (as torch's flash
 * attention rounds them before its P @ V product), and each pair of value rows interleaved
 * once so that one vdpbf16ps adds two tokens' contributions to 16 output lanes. The key and
 * value rows are read once, side by side, where the two-pass kernel walked the cache twice and
 * widened every value element to float32 for each head.
 *
 * Accumulator lanes hold the head dims in the order the interleave leaves them: lane i of the
 * low half of pair c is dim 32c + 8(i/4) + i%4, of the high half that plus 4.
 */
#if defined(__AVX512BF16__)

#define MAX_PAIRS (MAX_VEC_HEAD_DIM / 32)
#ifndef SPAN_RUNS
#define SPAN_RUNS 4
#endif
/* Keys and values PREFETCH_AHEAD positions on are requested a few cache lines at a time while a
   run's values are summed: a whole block's lines asked for at once (64 at a block boundary)
   stall the core until its fill buffers free up, and the compute then waits on memory instead
   of overlapping it. Spread out, a decode step's attention took about 25 against 29 ms. */
#define PREFETCH_AHEAD 64
#define MIN_EXPONENT (-60.0f) /* probabilities below e^-60 are 0, as in softmax_rows */

__m512 _ZGVeN16v_expf(__m512); /* libmvec's 16-lane expf */

static inline __attribute__((always_inline)) void attend_one_bf16_online(
    const float *q, const uint16_t *key, const uint16_t *value, const int64_t *table, int64_t len,
    int64_t block_size, float scale, float *out, const int64_t group, const int64_t pairs) {
    const int64_t head_dim = 32 * pairs;
    __m512bh qb[MAX_VEC_GROUP][MAX_PAIRS];
    __m512 acc[MAX_VEC_GROUP][2 * MAX_PAIRS];
    float run_max[MAX_VEC_GROUP], run_sum[MAX_VEC_GROUP];
    for (int64_t g = 0; g < group; g++) {
        for (int64_t c = 0; c < pairs; c++) {
            /* The queries are bfloat16 values widened by the caller: narrowing them back is exact. */
            const float *qc = q + g * head_dim + 32 * c;
            qb[g][c] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(qc + 16), _mm512_loadu_ps(qc));
            acc[g][2 * c] = acc[g][2 * c + 1] = _mm512_setzero_ps();
        }
        run_max[g] = -1e30f; /* finite: the library is built with -ffinite-math-only */
        run_sum[g] = 0.0f;
    }
    const __m512 scale_v = _mm512_set1_ps(scale), floor_v = _mm512_set1_ps(MIN_EXPONENT);
    for (int64_t b = 0; b * block_size < PREFETCH_AHEAD; b++) {
        prefetch_block_bf16(key, table, b * block_size, len, block_size, head_dim);
        prefetch_block_bf16(value, table, b * block_size, len, block_size, head_dim);
    }
    /* SPAN_RUNS runs of up to 16 keys (a run never crosses a block) share one softmax update: the
       chain of reductions, expf and rescaling that each update waits on is paid once per span, and
       the runs' independent dot products and reductions overlap. */
    for (int64_t start = 0; start < len;) {
        const uint16_t *kr[SPAN_RUNS], *vr[SPAN_RUNS], *kf[SPAN_RUNS], *vf[SPAN_RUNS];
        int64_t nr[SPAN_RUNS], nf[SPAN_RUNS];
        for (int r = 0; r < SPAN_RUNS; r++) {
            const int64_t in_block = start % block_size;
            const int64_t n = start < len ? MIN3(16, len - start, block_size - in_block) : 0;
            const int64_t slot = n > 0 ? table[start / block_size] * block_size + in_block : 0;
            kr[r] = key + slot * head_dim;
            vr[r] = value + slot * head_dim;
            nr[r] = n;
            /* The rows PREFETCH_AHEAD keys on, fetched while this run's values are summed. */
            const int64_t ahead = start + PREFETCH_AHEAD, ahead_in_block = ahead % block_size;
            nf[r] = n > 0 && ahead < len ? MIN3(n, len - ahead, block_size - ahead_in_block) : 0;
            const int64_t ahead_slot = nf[r] > 0 ? table[ahead / block_size] * block_size + ahead_in_block : 0;
            kf[r] = key + ahead_slot * head_dim;
            vf[r] = value + ahead_slot * head_dim;
            start += n;
        }
        uint32_t prob_pairs[MAX_VEC_GROUP][SPAN_RUNS][8]; /* word j: the bf16 probabilities of keys 2j, 2j + 1 */
        for (int64_t g = 0; g < group; g++) {
            __m512 s[SPAN_RUNS];
            __m512 span_max = _mm512_set1_ps(-1e30f);
            for (int r = 0; r < SPAN_RUNS; r++) {
                __m512 dots[16];
                dots_bf16_bf16(qb[g], kr[r], nr[r], head_dim, dots, pairs);
                const __mmask16 live = (__mmask16)((1u << nr[r]) - 1);
                s[r] = _mm512_mask_blend_ps(live, _mm512_set1_ps(-1e30f), _mm512_mul_ps(hsum16(dots), scale_v));
                span_max = _mm512_max_ps(span_max, s[r]);
            }
            const float new_max = fmaxf(run_max[g], _mm512_reduce_max_ps(span_max));
            const float rescale = expf(run_max[g] - new_max);
            const __m512 new_max_v = _mm512_set1_ps(new_max);
            __m512 sum = _mm512_setzero_ps();
            for (int r = 0; r < SPAN_RUNS; r++) {
                const __mmask16 live = (__mmask16)((1u << nr[r]) - 1);
                const __m512 x = _mm512_sub_ps(s[r], new_max_v);
                const __mmask16 kept = _mm512_mask_cmp_ps_mask(live, x, floor_v, _CMP_GE_OQ);
                const __m512 p = _mm512_maskz_mov_ps(kept, _ZGVeN16v_expf(_mm512_max_ps(x, floor_v)));
                sum = _mm512_add_ps(sum, p);
                _mm256_storeu_si256((__m256i *)prob_pairs[g][r], (__m256i)_mm512_cvtneps_pbh(p));
            }
            run_sum[g] = run_sum[g] * rescale + _mm512_reduce_add_ps(sum);
            run_max[g] = new_max;
            if (rescale != 1.0f)
                for (int64_t c = 0; c < 2 * pairs; c++) acc[g][c] = _mm512_mul_ps(acc[g][c], _mm512_set1_ps(rescale));
        }
        for (int r = 0; r < SPAN_RUNS; r++) {
            for (int64_t j = 0; 2 * j < nr[r]; j++) {
                for (int64_t row = 2 * j; row < 2 * j + 2 && row < nf[r]; row++)
                    for (int64_t line = 0; line < head_dim; line += 32) {
                        __builtin_prefetch(kf[r] + row * head_dim + line, 0, 3);
                        __builtin_prefetch(vf[r] + row * head_dim + line, 0, 3);
                    }
                /* An odd last key pairs with itself, its partner's probability being 0. */
                const uint16_t *v0 = vr[r] + 2 * j * head_dim, *v1 = 2 * j + 1 < nr[r] ? v0 + head_dim : v0;
                for (int64_t c = 0; c < pairs; c++) {
                    const __m512i a = _mm512_loadu_si512((const void *)(v0 + 32 * c));
                    const __m512i b = _mm512_loadu_si512((const void *)(v1 + 32 * c));
                    const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(a, b), hi = (__m512bh)_mm512_unpackhi_epi16(a, b);
                    for (int64_t g = 0; g < group; g++) {
                        const __m512bh w = (__m512bh)_mm512_set1_epi32((int)prob_pairs[g][r][j]);
                        acc[g][2 * c] = _mm512_dpbf16_ps(acc[g][2 * c], w, lo);
                        acc[g][2 * c + 1] = _mm512_dpbf16_ps(acc[g][2 * c + 1], w, hi);
                    }
                }
            }
        }
    }
    for (int64_t g = 0; g < group; g++) {
        const float inv = 1.0f / run_sum[g];
        for (int64_t c = 0; c < pairs; c++) {
            float lanes[32];
            _mm512_storeu_ps(lanes, acc[g][2 * c]);
            _mm512_storeu_ps(lanes + 16, acc[g][2 * c + 1]);
            for (int i = 0; i < 16; i++) {
                const int64_t dim = 32 * c + 8 * (i / 4) + i % 4;
                out[g * head_dim + dim] = lanes[i] * inv;
                out[g * head_dim + dim + 4] = lanes[16 + i] * inv;
            }
        }
    }
}

/* Constant group and pair counts for the shapes models use, so the loops over them unroll and
   the accumulators stay in registers; 0 when the shape has no instance here (the caller then
   takes the two-pass kernel). */
static int attend_bf16_online(const float *q, const uint16_t *key, const uint16_t *value, const int64_t *table,
                              int64_t len, int64_t group, int64_t head_dim, int64_t block_size, float scale,
                              float *out) {
#define ONLINE_CASE(G, P)                                                                                  \
    if (group == G && head_dim == 32 * P) {                                                                \
        attend_one_bf16_online(q, key, value, table, len, block_size, scale, out, G, P);                  \
        return 1;                                                                                          \
    }
    ONLINE_CASE(1, 2) ONLINE_CASE(2, 2) ONLINE_CASE(3, 2) ONLINE_CASE(4, 2) ONLINE_CASE(5, 2)
    ONLINE_CASE(6, 2) ONLINE_CASE(7, 2) ONLINE_CASE(8, 2)
    ONLINE_CASE(1, 4) ONLINE_CASE(2, 4) ONLINE_CASE(3, 4) ONLINE_CASE(4, 4) ONLINE_CASE(5, 4)
    ONLINE_CASE(6, 4) ONLINE_CASE(7, 4) ONLINE_CASE(8, 4)
#undef ONLINE_CASE
    return 0;
}
#endif
