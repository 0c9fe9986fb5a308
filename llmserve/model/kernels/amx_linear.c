/* y = x @ w.T (+ bias) in bfloat16 with AMX tiles, for any number of rows.
 *
 * torch's bf16 matmul (oneDNN) reaches 1.6 TFLOP/s at 512 rows here but reads the weights at
 * only 10-20 GB/s at decode sizes (1-64 rows), where a step is bound by reading them. This
 * kernel walks the weights once per call whatever the row count. A task is a group of 16-output
 * weight tiles (4 when x has one 16-row slab, else 2, multiplied by each pair of slabs): each A
 * tile of x feeds several products, a tile's weights come from DRAM once and from L1/L2 for the
 * further slab pairs, and a thread streams several weight tiles side by side, which the
 * hardware prefetchers fetch in parallel (one stream per thread reached only 13-16 GB/s).
 *
 * The weights are packed once (pack_weights) into the layout TDPBF16PS reads: for each tile of
 * 16 outputs and each 32 inputs, 16 rows of 16 bf16 pairs, pair (n, r) = w[n, 2r], w[n, 2r+1].
 *
 *   x: [m, k] bf16 contiguous (a partial last 16-row slab is copied and zero-padded);
 *   packed: [n/16][k/32][16][16][2] bf16; bias: [n] bf16 or NULL; y: [m, n] bf16 (float32 for
 *   amx_linear_bf16_f32out, the LM head's logits).
 *   k a multiple of 32 and n of 16 (the caller checks, and uses torch otherwise).
 */
#define _GNU_SOURCE /* syscall() */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AMX_BF16__) && defined(__AMX_TILE__) /* otherwise the library is empty: callers use torch */
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define SLAB 16 /* rows of x per A tile */

/* Linux hands AMX state to a process only on request; 0 when granted (torch may have asked already). */
int amx_enable(void) { return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); }

struct tile_config {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* Tiles 0-3: C (16 x 16 float32 each); 4-7: A and B, as each multiply function assigns them. */
static void configure_tiles(void) {
    struct tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

void pack_weights(const uint16_t *w, uint16_t *packed, int64_t n, int64_t k) {
    const uint32_t *pairs = (const uint32_t *)w; /* w[nn, 2r], w[nn, 2r + 1] as one 32-bit word */
    uint32_t *out = (uint32_t *)packed;
#pragma omp parallel for schedule(static)
    for (int64_t nt = 0; nt < n / 16; nt++)
        for (int64_t kt = 0; kt < k / 32; kt++)
            for (int64_t r = 0; r < 16; r++)
                for (int64_t c = 0; c < 16; c++)
                    out[((nt * (k / 32) + kt) * 16 + r) * 16 + c] = pairs[(nt * 16 + c) * (k / 2) + kt * 16 + r];
}


static inline void zero_c_tiles(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

/* C tiles 0 .. nb-1 = the slab at `a` (16 rows of x, `k` apart) times weight tiles nt0 .. nt0+nb-1,
   nb <= 4. A alternates between tiles 4 and 7 from one k step to the next, B between 5 and 6
   from one weight tile to the next, so a load need not wait for the product reading the tile
   it replaces. The nb weight tiles are nb separate streams from memory, which the hardware
   prefetchers fetch side by side. */
static inline void multiply_one_slab(const uint16_t *a, const uint16_t *packed, int64_t nt0, int nb, int64_t k) {
    const int64_t stride = k * (int64_t)sizeof(uint16_t), steps = k / 32;
    const uint16_t *w = packed + nt0 * steps * 512;
    zero_c_tiles();
#define ONE_SLAB_STEP(A, KT)                                                       \
    do {                                                                           \
        _tile_loadd(A, a + (KT) * 32, stride);                                     \
        _tile_loadd(5, w + (KT) * 512, 64);                                        \
        _tile_dpbf16ps(0, A, 5);                                                   \
        if (nb > 1) {                                                              \
            _tile_loadd(6, w + (steps + (KT)) * 512, 64);                          \
            _tile_dpbf16ps(1, A, 6);                                               \
        }                                                                          \
        if (nb > 2) {                                                              \
            _tile_loadd(5, w + (2 * steps + (KT)) * 512, 64);                      \
            _tile_dpbf16ps(2, A, 5);                                               \
        }                                                                          \
        if (nb > 3) {                                                              \
            _tile_loadd(6, w + (3 * steps + (KT)) * 512, 64);                      \
            _tile_dpbf16ps(3, A, 6);                                               \
        }                                                                          \
    } while (0)
    int64_t kt = 0;
    for (; kt + 1 < steps; kt += 2) {
        ONE_SLAB_STEP(4, kt);
        ONE_SLAB_STEP(7, kt + 1);
    }
    if (kt < steps) ONE_SLAB_STEP(4, kt);
#undef ONE_SLAB_STEP
}

/* C tiles 2j + s = slab s (at a0, a1) times weight tile nt0 + j, for j < nb <= 2: each A tile
   (4, 5) feeds nb products and each B tile (6, 7) two. */
static inline void multiply_two_slabs(const uint16_t *a0, const uint16_t *a1, const uint16_t *packed, int64_t nt0,
                                      int nb, int64_t k) {
    const int64_t stride = k * (int64_t)sizeof(uint16_t), steps = k / 32;
    const uint16_t *w = packed + nt0 * steps * 512;
    zero_c_tiles();
    for (int64_t kt = 0; kt < steps; kt++) {
        _tile_loadd(4, a0 + kt * 32, stride);
        _tile_loadd(5, a1 + kt * 32, stride);
        _tile_loadd(6, w + kt * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 5, 6);
        if (nb > 1) {
            _tile_loadd(7, w + (steps + kt) * 512, 64);
            _tile_dpbf16ps(2, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
}

/* y rows of slab s, columns of weight tile nt, from the float32 tile at `sums`: bf16, or float32 as they
   are when f32_out. */
static inline __attribute__((always_inline)) void store_rows(const float *sums, int64_t s, int64_t nt, int64_t m,
                                                             int64_t n, const uint16_t *bias, void *y,
                                                             const int f32_out) {
    const __m512 bias_v = bias == NULL ? _mm512_setzero_ps()
                                       : _mm512_castsi512_ps(_mm512_slli_epi32(
                                             _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(bias + nt * 16))), 16));
    for (int64_t r = 0; r < SLAB && s * SLAB + r < m; r++) {
        const __m512 sum = _mm512_add_ps(_mm512_loadu_ps(sums + r * 16), bias_v);
        const int64_t at = (s * SLAB + r) * n + nt * 16;
        if (f32_out) {
            _mm512_storeu_ps((float *)y + at, sum);
        } else { /* vcvtneps2bf16 rounds to nearest even, as torch does. */
            _mm256_storeu_si256((__m256i *)((uint16_t *)y + at), (__m256i)_mm512_cvtneps_pbh(sum));
        }
    }
}

/* Returns 1 when it cannot allocate the zero-padded copy of x's last rows that a tile of 16 rows needs. */
static inline __attribute__((always_inline)) int amx_linear(const uint16_t *x, int64_t m, const uint16_t *packed,
                                                            const uint16_t *bias, void *y, int64_t n, int64_t k,
                                                            int num_threads, const int f32_out) {
    const int64_t slabs = (m + SLAB - 1) / SLAB, tiles = n / 16;
    /* Only a last partial slab is copied (and zero-padded); the others are read where they lie. */
    uint16_t *tail = NULL;
    if (m % SLAB) {
        tail = malloc(sizeof(uint16_t) * SLAB * k);
        if (tail == NULL) return 1;
        memcpy(tail, x + (slabs - 1) * SLAB * k, sizeof(uint16_t) * (m % SLAB) * k);
        memset(tail + (m % SLAB) * k, 0, sizeof(uint16_t) * (SLAB - m % SLAB) * k);
    }
    /* One slab: 4 weight tiles per task. More: 2 weight tiles per task, times each pair of slabs. */
    const int64_t per_task = slabs == 1 ? 4 : 2;
#pragma omp parallel num_threads(num_threads)
    {
        configure_tiles();
        float sums[4][SLAB * 16];
#pragma omp for schedule(static)
        for (int64_t task = 0; task < (tiles + per_task - 1) / per_task; task++) {
            const int64_t nt0 = task * per_task;
            const int nb = (int)(tiles - nt0 < per_task ? tiles - nt0 : per_task);
            for (int64_t s = 0; s < slabs; s += 2) {
                const uint16_t *a0 = s == slabs - 1 && tail != NULL ? tail : x + s * SLAB * k;
                if (s + 1 < slabs) {
                    const uint16_t *a1 = s + 1 == slabs - 1 && tail != NULL ? tail : x + (s + 1) * SLAB * k;
                    multiply_two_slabs(a0, a1, packed, nt0, nb, k);
                    for (int j = 0; j < nb; j++) {
                        if (j == 0) { _tile_stored(0, sums[0], 64); _tile_stored(1, sums[1], 64); }
                        else { _tile_stored(2, sums[2], 64); _tile_stored(3, sums[3], 64); }
                        store_rows(sums[2 * j], s, nt0 + j, m, n, bias, y, f32_out);
                        store_rows(sums[2 * j + 1], s + 1, nt0 + j, m, n, bias, y, f32_out);
                    }
                } else {
                    multiply_one_slab(a0, packed, nt0, nb, k);
                    _tile_stored(0, sums[0], 64);
                    if (nb > 1) _tile_stored(1, sums[1], 64);
                    if (nb > 2) _tile_stored(2, sums[2], 64);
                    if (nb > 3) _tile_stored(3, sums[3], 64);
                    for (int j = 0; j < nb; j++) store_rows(sums[j], s, nt0 + j, m, n, bias, y, f32_out);
                }
            }
        }
        _tile_release();
    }
    free(tail);
    return 0;
}

int amx_linear_bf16(const uint16_t *x, int64_t m, const uint16_t *packed, const uint16_t *bias, uint16_t *y,
                    int64_t n, int64_t k, int num_threads) {
    return amx_linear(x, m, packed, bias, y, n, k, num_threads, 0);
}

/* The same product with y float32: the LM head, whose logits must not be rounded to bf16. */
int amx_linear_bf16_f32out(const uint16_t *x, int64_t m, const uint16_t *packed, const uint16_t *bias, float *y,
                           int64_t n, int64_t k, int num_threads) {
    return amx_linear(x, m, packed, bias, y, n, k, num_threads, 1);
}
#endif
