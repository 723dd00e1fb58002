/* The portable path: one Philox block at a time, one element at a time. It is the fallback on
 * every machine and the template the SIMD paths are checked against. */
#include "dk_common.h"

static inline void dk_mulhilo(uint32_t a, uint32_t m, uint32_t *hi, uint32_t *lo) {
    uint64_t p = (uint64_t)a * m;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

static void gen_scalar(const dk_stream *s, uint64_t chunk, size_t nchunks, uint64_t *masks) {
    for (size_t q = 0; q < nchunks; q++) {
        uint64_t base = s->offset + (chunk + q) * 16u; /* wraps mod 2^64 as the contract says */
        uint64_t mask = 0;
        for (unsigned j = 0; j < 16; j++) {
            uint64_t c = base + j;
            uint32_t c0 = (uint32_t)c, c1 = (uint32_t)(c >> 32), c2 = 0, c3 = 0;
            for (int r = 0; r < DK_ROUNDS; r++) {
                uint32_t hi0, lo0, hi1, lo1;
                dk_mulhilo(c0, DK_M0, &hi0, &lo0);
                dk_mulhilo(c2, DK_M1, &hi1, &lo1);
                c0 = hi1 ^ c1 ^ s->k0[r];
                c1 = lo1;
                c2 = hi0 ^ c3 ^ s->k1[r];
                c3 = lo0;
            }
            uint64_t keep = (uint64_t)(c0 > s->tm1) | (uint64_t)(c1 > s->tm1) << 1 |
                            (uint64_t)(c2 > s->tm1) << 2 | (uint64_t)(c3 > s->tm1) << 3;
            mask |= keep << (4 * j);
        }
        masks[q] = mask;
    }
}

#define KEPT(i) ((masks[(i) >> 6] >> ((i) & 63)) & 1u)

static void apply_f32(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const float *x = xv;
    float *y = yv;
    float s = (float)scale;
    for (size_t i = 0; i < n; i++) y[i] = KEPT(i) ? x[i] * s : 0.0f;
}

static void apply_f64(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const double *x = xv;
    double *y = yv;
    for (size_t i = 0; i < n; i++) y[i] = KEPT(i) ? x[i] * scale : 0.0;
}

static void apply_bf16(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const uint16_t *x = xv;
    uint16_t *y = yv;
    float s = (float)scale;
    for (size_t i = 0; i < n; i++)
        y[i] = KEPT(i) ? dk_f32_to_bf16(dk_f32_from_bits((uint32_t)x[i] << 16) * s) : 0;
}

static void apply_f16(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const uint16_t *x = xv;
    uint16_t *y = yv;
    float s = (float)scale;
    for (size_t i = 0; i < n; i++) y[i] = KEPT(i) ? dk_f32_to_half(dk_half_to_f32(x[i]) * s) : 0;
}

DK_DEFINE_ALPHA(scalar)

const dk_isa_ops dk_ops_scalar = {gen_scalar, {NULL, apply_f32, apply_f64, apply_bf16, apply_f16}, DK_ALPHA_TABLE(scalar)};
