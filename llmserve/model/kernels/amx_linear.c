/* y = x @ w.T (+ bias) in bfloat16 with AMX tiles, for any number of rows.
 *
 * torch's bf16 matmul (oneDNN) reaches 1.5 TFLOP/s at 512 rows here but reads the weights at
 * only 10-20 GB/s at decode sizes (1-64 rows), where a step is bound by reading them. This
 * kernel walks the weights once per call whatever the row count: each thread takes a slice of
 * 16-output tiles, and for each tile multiplies every 16-row slab of x by it, so the tile's
 * weights come from DRAM once and from L1/L2 for the further slabs, while x stays in L2.
 *
 * The weights are packed once (pack_weights) into the layout TDPBF16PS reads: for each tile of
 * 16 outputs and each 32 inputs, 16 rows of 16 bf16 pairs, pair (n, r) = w[n, 2r], w[n, 2r+1].
 *
 *   x: [m, k] bf16 contiguous (copied into whole 16-row tiles when m is not a multiple of 16); packed: [n/16][k/32][16][16][2] bf16; bias: [n] bf16 or NULL;
 *   y: [m, n] bf16. k a multiple of 32 and n of 16 (the caller checks, and uses torch otherwise).
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
#define SLABS 4 /* A tiles (and C tiles) per pass */

/* Linux hands AMX state to a process only on request; 0 when granted (torch may have asked already). */
int amx_enable(void) { return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); }

struct tile_config {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* Tiles 0-3: C (16 x 16 float32 each), 4 and 7: B (weights), 5 and 6: A (16 rows x 32 bf16 of x). */
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

/* C tiles 0 .. slabs-1 += x[m0 .. m0 + 16 * slabs) times the weight tile nt, over all of k.
   Two B tiles (4, 7) and two A tiles (5, 6) alternate, so that loading the next tile need not
   wait for the multiplication still reading the previous one. No software prefetch: the weights
   of a thread's slice are contiguous, the hardware prefetcher streams them, and prefetching
   ahead as well (to L1 or L2, 4 to 64 tiles ahead) made 120 linears 5-20% slower. */
static inline void multiply_slabs(const uint16_t *x, const uint16_t *packed, int64_t nt, int64_t m0, int slabs,
                                  int64_t k) {
    const int64_t stride = k * (int64_t)sizeof(uint16_t);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
#define MULTIPLY(B, KT)                                                  \
    do {                                                                 \
        _tile_loadd(B, packed + (nt * (k / 32) + (KT)) * 512, 64);       \
        const uint16_t *a = x + m0 * k + (KT) * 32;                      \
        _tile_loadd(5, a, stride);                                       \
        _tile_dpbf16ps(0, 5, B);                                         \
        if (slabs > 1) {                                                 \
            _tile_loadd(6, a + SLAB * k, stride);                        \
            _tile_dpbf16ps(1, 6, B);                                     \
        }                                                                \
        if (slabs > 2) {                                                 \
            _tile_loadd(5, a + 2 * SLAB * k, stride);                    \
            _tile_dpbf16ps(2, 5, B);                                     \
        }                                                                \
        if (slabs > 3) {                                                 \
            _tile_loadd(6, a + 3 * SLAB * k, stride);                    \
            _tile_dpbf16ps(3, 6, B);                                     \
        }                                                                \
    } while (0)
    int64_t kt = 0;
    for (; kt + 1 < k / 32; kt += 2) {
        MULTIPLY(4, kt);
        MULTIPLY(7, kt + 1);
    }
    if (kt < k / 32) MULTIPLY(4, kt);
#undef MULTIPLY
}

/* Returns 1 when it cannot allocate the zero-padded copy of x that tiles of 16 rows need. */
int amx_linear_bf16(const uint16_t *x, int64_t m, const uint16_t *packed, const uint16_t *bias, uint16_t *y,
                    int64_t n, int64_t k, int num_threads) {
    const int64_t slabs_total = (m + SLAB - 1) / SLAB;
    uint16_t *padded = NULL;
    if (m % SLAB) {
        padded = malloc(sizeof(uint16_t) * slabs_total * SLAB * k);
        if (padded == NULL) return 1;
        memcpy(padded, x, sizeof(uint16_t) * m * k);
        memset(padded + m * k, 0, sizeof(uint16_t) * (slabs_total * SLAB - m) * k);
        x = padded;
    }
#pragma omp parallel num_threads(num_threads)
    {
        configure_tiles();
        float sums[SLABS][SLAB * 16];
#pragma omp for schedule(static)
        for (int64_t nt = 0; nt < n / 16; nt++) {
            const __m512 bias_v = bias == NULL ? _mm512_setzero_ps()
                                               : _mm512_castsi512_ps(_mm512_slli_epi32(
                                                     _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(bias + nt * 16))), 16));
            for (int64_t s0 = 0; s0 < slabs_total; s0 += SLABS) {
                const int slabs = slabs_total - s0 < SLABS ? (int)(slabs_total - s0) : SLABS;
                multiply_slabs(x, packed, nt, s0 * SLAB, slabs, k);
                _tile_stored(0, sums[0], 64);
                if (slabs > 1) _tile_stored(1, sums[1], 64);
                if (slabs > 2) _tile_stored(2, sums[2], 64);
                if (slabs > 3) _tile_stored(3, sums[3], 64);
                for (int s = 0; s < slabs; s++)
                    for (int64_t r = 0; r < SLAB; r++) {
                        const int64_t row = (s0 + s) * SLAB + r;
                        if (row >= m) break;
                        /* vcvtneps2bf16 rounds to nearest even, as torch does. */
                        const __m256bh out = _mm512_cvtneps_pbh(_mm512_add_ps(_mm512_loadu_ps(sums[s] + r * 16), bias_v));
                        _mm256_storeu_si256((__m256i *)(y + row * n + nt * 16), (__m256i)out);
                    }
            }
        }
        _tile_release();
    }
    free(padded);
    return 0;
}
#endif
