/* The portable path: one Philox block at a time, one element at a time. It is the fallback on
 * every machine and the template the SIMD paths are checked against. */
#include "dk_common.h"

static void gen_scalar(const dk_stream *s, uint64_t chunk, size_t nchunks, uint64_t *masks) {
    for (size_t q = 0; q < nchunks; q++) {
        uint64_t base = s->offset + (chunk + q) * 16u; /* wraps mod 2^64 as the contract says */
        uint64_t mask = 0;
        for (unsigned j = 0; j < 16; j++) {
            uint32_t c[4];
            dk_philox_block(s, base + j, c);
            uint64_t keep = (uint64_t)(c[0] > s->tm1) | (uint64_t)(c[1] > s->tm1) << 1 |
                            (uint64_t)(c[2] > s->tm1) << 2 | (uint64_t)(c[3] > s->tm1) << 3;
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
