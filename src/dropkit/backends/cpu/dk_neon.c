/* NEON path (AArch64): 4 Philox blocks per 128-bit vector, the four vectors of a 16-block chunk
 * in flight together (their rounds are independent chains), vmull_u32 / vmull_high_u32 for the
 * 32x32->64-bit products, and the keep-mask expanded to lanes with a bit test. float32 and
 * float64 are applied with NEON; bfloat16 and float16 use the portable conversions, whose
 * rounding (including NaNs and subnormals) the tests pin down. */
#include "dk_common.h"

#if defined(DK_HAVE_NEON)
#include <arm_neon.h>

static inline void mulhilo4(uint32x4_t a, uint32x4_t m, uint32x4_t *hi, uint32x4_t *lo) {
    uint32x4_t p01 = vreinterpretq_u32_u64(vmull_u32(vget_low_u32(a), vget_low_u32(m)));
    uint32x4_t p23 = vreinterpretq_u32_u64(vmull_high_u32(a, m));
    *lo = vuzp1q_u32(p01, p23); /* little-endian: the low half of each product is the even word */
    *hi = vuzp2q_u32(p01, p23);
}

/* Bit l of the result is set where lane l of the all-ones/all-zeros vector v is set. */
static inline uint64_t lane_bits(uint32x4_t v) {
    static const uint32_t weights[4] = {1, 2, 4, 8};
    return vaddvq_u32(vandq_u32(v, vld1q_u32(weights)));
}

static void gen_neon(const dk_stream *s, uint64_t chunk, size_t nchunks, uint64_t *masks) {
    static const uint32_t iota_words[4] = {0, 1, 2, 3};
    const uint32x4_t iota = vld1q_u32(iota_words), one = vdupq_n_u32(1);
    const uint32x4_t m0 = vdupq_n_u32(DK_M0), m1 = vdupq_n_u32(DK_M1), tm1 = vdupq_n_u32(s->tm1);
    for (size_t q = 0; q < nchunks; q++) {
        uint32x4_t c0[4], c1[4], c2[4], c3[4];
        for (int g = 0; g < 4; g++) {
            uint64_t base = s->offset + (chunk + q) * 16u + 4u * (uint64_t)g;
            uint32x4_t lo = vdupq_n_u32((uint32_t)base);
            c0[g] = vaddq_u32(lo, iota);
            /* a lane whose low word wrapped carries into the high word of its 64-bit counter */
            uint32x4_t carry = vandq_u32(vcltq_u32(c0[g], lo), one);
            c1[g] = vaddq_u32(vdupq_n_u32((uint32_t)(base >> 32)), carry);
            c2[g] = c3[g] = vdupq_n_u32(0);
        }
        for (int r = 0; r < DK_ROUNDS; r++) {
            const uint32x4_t k0 = vdupq_n_u32(s->k0[r]), k1 = vdupq_n_u32(s->k1[r]);
            for (int g = 0; g < 4; g++) {
                uint32x4_t hi0, lo0, hi1, lo1;
                mulhilo4(c0[g], m0, &hi0, &lo0);
                mulhilo4(c2[g], m1, &hi1, &lo1);
                c0[g] = veorq_u32(veorq_u32(hi1, c1[g]), k0);
                c1[g] = lo1;
                c2[g] = veorq_u32(veorq_u32(hi0, c3[g]), k1);
                c3[g] = lo0;
            }
        }
        /* word k of block j is element 4j + k: gather each word's 16 keep bits, then spread */
        uint64_t w[4] = {0, 0, 0, 0};
        for (int g = 0; g < 4; g++) {
            w[0] |= lane_bits(vcgtq_u32(c0[g], tm1)) << (4 * g);
            w[1] |= lane_bits(vcgtq_u32(c1[g], tm1)) << (4 * g);
            w[2] |= lane_bits(vcgtq_u32(c2[g], tm1)) << (4 * g);
            w[3] |= lane_bits(vcgtq_u32(c3[g], tm1)) << (4 * g);
        }
        masks[q] = dk_spread4(w[0]) | dk_spread4(w[1]) << 1 | dk_spread4(w[2]) << 2 | dk_spread4(w[3]) << 3;
    }
}

#define LANE_MASK(i) (masks[(i) >> 6] >> ((i) & 63))

static void apply_f32(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    static const uint32_t bit_words[4] = {1, 2, 4, 8};
    const float *x = xv;
    float *y = yv;
    const float32x4_t s = vdupq_n_f32((float)scale);
    const uint32x4_t bit = vld1q_u32(bit_words);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32x4_t keep = vtstq_u32(vdupq_n_u32((uint32_t)(LANE_MASK(i) & 0xFu)), bit);
        uint32x4_t prod = vreinterpretq_u32_f32(vmulq_f32(vld1q_f32(x + i), s));
        vst1q_f32(y + i, vreinterpretq_f32_u32(vandq_u32(prod, keep))); /* dropped: +0.0 */
    }
    if (i < n) {
        uint64_t rest = LANE_MASK(i);
        dk_ops_scalar.apply[DK_F32](x + i, y + i, &rest, n - i, scale);
    }
}

static void apply_f64(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    static const uint64_t bit_words[2] = {1, 2};
    const double *x = xv;
    double *y = yv;
    const float64x2_t s = vdupq_n_f64(scale);
    const uint64x2_t bit = vld1q_u64(bit_words);
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        uint64x2_t keep = vtstq_u64(vdupq_n_u64(LANE_MASK(i) & 0x3u), bit);
        uint64x2_t prod = vreinterpretq_u64_f64(vmulq_f64(vld1q_f64(x + i), s));
        vst1q_f64(y + i, vreinterpretq_f64_u64(vandq_u64(prod, keep)));
    }
    if (i < n) {
        uint64_t rest = LANE_MASK(i);
        dk_ops_scalar.apply[DK_F64](x + i, y + i, &rest, n - i, scale);
    }
}

static void apply_bf16(const void *x, void *y, const uint64_t *masks, size_t n, double scale) {
    dk_ops_scalar.apply[DK_BF16](x, y, masks, n, scale);
}

static void apply_f16(const void *x, void *y, const uint64_t *masks, size_t n, double scale) {
    dk_ops_scalar.apply[DK_F16](x, y, masks, n, scale);
}

DK_DEFINE_ALPHA(neon)

const dk_isa_ops dk_ops_neon = {gen_neon, {NULL, apply_f32, apply_f64, apply_bf16, apply_f16}, DK_ALPHA_TABLE(neon)};
#endif
