/* AVX2 path: 8 Philox blocks per vector pass (two passes per 64-element chunk), vpmuludq for
 * the 32x32->64-bit products, and the keep-mask expanded to lanes with a compare per group. */
#include "dk_common.h"
#include "dk_normal.h"

#if defined(DK_HAVE_X86)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx2,f16c")
#endif
#include <immintrin.h>

static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    __m256i even = _mm256_mul_epu32(a, m);
    __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

/* AVX2 has signed 32-bit compares only: flipping the sign bit of both sides makes them unsigned. */
static inline unsigned gt_unsigned(__m256i a, __m256i b_flipped, __m256i sign) {
    __m256i gt = _mm256_cmpgt_epi32(_mm256_xor_si256(a, sign), b_flipped);
    return (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(gt));
}

/* Philox blocks base .. base + 7 (counters wrap mod 2^64): word m of block j in lane j of c[m]. */
static inline void philox8(const dk_stream *s, uint64_t base, __m256i c[4]) {
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_set1_epi32((int)DK_M0), m1 = _mm256_set1_epi32((int)DK_M1);
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
    __m256i lo = _mm256_set1_epi32((int)(uint32_t)base);
    __m256i c0 = _mm256_add_epi32(lo, iota);
    /* carry = (c0 < lo) unsigned, as all-ones lanes; subtracting -1 adds the carry */
    __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(lo, sign), _mm256_xor_si256(c0, sign));
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32((int)(uint32_t)(base >> 32)), carry);
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    for (int r = 0; r < DK_ROUNDS; r++) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo8(c0, m0, &hi0, &lo0);
        mulhilo8(c2, m1, &hi1, &lo1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)s->k0[r]));
        c1 = lo1;
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)s->k1[r]));
        c3 = lo0;
    }
    c[0] = c0;
    c[1] = c1;
    c[2] = c2;
    c[3] = c3;
}

static void gen_avx2(const dk_stream *s, uint64_t chunk, size_t nchunks, uint64_t *masks) {
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
    const __m256i tm1 = _mm256_xor_si256(_mm256_set1_epi32((int)s->tm1), sign);
    for (size_t q = 0; q < nchunks; q++) {
        uint64_t mask = 0;
        for (unsigned h = 0; h < 2; h++) {
            __m256i c[4];
            philox8(s, s->offset + (chunk + q) * 16u + 8u * h, c);
            uint64_t half = dk_spread4(gt_unsigned(c[0], tm1, sign)) | dk_spread4(gt_unsigned(c[1], tm1, sign)) << 1 |
                            dk_spread4(gt_unsigned(c[2], tm1, sign)) << 2 |
                            dk_spread4(gt_unsigned(c[3], tm1, sign)) << 3;
            mask |= half << (32 * h);
        }
        masks[q] = mask;
    }
}

#define LANE_BITS(i) (masks[(i) >> 6] >> ((i) & 63))

/* All-ones lanes where the keep bit of that lane is set (bit k of `bits` for lane k). */
static inline __m256i lanes8(uint64_t bits) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)(bits & 0xFF)), sel), sel);
}

static void finish_tail(int dtype, const void *x, void *y, const uint64_t *masks, size_t i, size_t n,
                        double scale, size_t esz) {
    if (i == n) return;
    uint64_t rest = LANE_BITS(i);
    dk_ops_scalar.apply[dtype]((const char *)x + i * esz, (char *)y + i * esz, &rest, n - i, scale);
}

static void apply_f32(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const float *x = xv;
    float *y = yv;
    __m256 s = _mm256_set1_ps((float)scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 keep = _mm256_castsi256_ps(lanes8(LANE_BITS(i)));
        _mm256_storeu_ps(y + i, _mm256_and_ps(keep, _mm256_mul_ps(_mm256_loadu_ps(x + i), s)));
    }
    finish_tail(DK_F32, xv, yv, masks, i, n, scale, 4);
}

static void apply_f64(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const double *x = xv;
    double *y = yv;
    const __m256i sel = _mm256_setr_epi64x(1, 2, 4, 8);
    __m256d s = _mm256_set1_pd(scale);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256i b = _mm256_set1_epi64x((long long)(LANE_BITS(i) & 0xF));
        __m256d keep = _mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(b, sel), sel));
        _mm256_storeu_pd(y + i, _mm256_and_pd(keep, _mm256_mul_pd(_mm256_loadu_pd(x + i), s)));
    }
    finish_tail(DK_F64, xv, yv, masks, i, n, scale, 8);
}

static void apply_bf16(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const uint16_t *x = xv;
    uint16_t *y = yv;
    __m256 s = _mm256_set1_ps((float)scale);
    const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7FFF);
    const __m256i nan16 = _mm256_set1_epi32(0xFFFF);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i xi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const void *)(x + i))), 16);
        __m256 keep = _mm256_castsi256_ps(lanes8(LANE_BITS(i)));
        __m256 p = _mm256_and_ps(keep, _mm256_mul_ps(_mm256_castsi256_ps(xi), s));
        __m256i u = _mm256_castps_si256(p);
        __m256i bias = _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(u, 16), one));
        __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
        __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(p, p, _CMP_UNORD_Q));
        r = _mm256_or_si256(r, _mm256_and_si256(nan, nan16));
        __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storeu_si128((void *)(y + i), packed);
    }
    finish_tail(DK_BF16, xv, yv, masks, i, n, scale, 2);
}

static void apply_f16(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const uint16_t *x = xv;
    uint16_t *y = yv;
    __m256 s = _mm256_set1_ps((float)scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 keep = _mm256_castsi256_ps(lanes8(LANE_BITS(i)));
        __m256 p = _mm256_and_ps(keep, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const void *)(x + i))), s));
        _mm_storeu_si128((void *)(y + i), _mm256_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    finish_tail(DK_F16, xv, yv, masks, i, n, scale, 2);
}

DK_DEFINE_ALPHA(avx2)

/* ---- normals (dk_normal.h): 4 pairs per float64 vector, the same operations as the scalar
 * code in the same order; exponent and mantissa are cut out of the float64 bits (exact). ---- */

static inline __m256d horner(__m256d x, const double *c, int n) {
    __m256d acc = _mm256_set1_pd(c[n - 1]);
    for (int i = n - 2; i >= 0; i--) acc = _mm256_add_pd(_mm256_mul_pd(acc, x), _mm256_set1_pd(c[i]));
    return acc;
}

/* The pairs (w1, w2) given as k1 = w1 >> 8, k2 = w2 >> 8 (4 lanes each): z0 and z1. */
static inline void normal4(__m128i k1, __m128i k2, __m256d *z0, __m256d *z1) {
    const __m128i one = _mm_set1_epi32(1);
    __m256d a = _mm256_cvtepi32_pd(_mm_add_epi32(_mm_add_epi32(k1, k1), one));
    __m256i bits = _mm256_castpd_si256(a);
    /* the biased exponent as a float64: its bits OR 2^52's, minus 2^52 (exact) */
    __m256i eb = _mm256_or_si256(_mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(0x4330000000000000ll));
    __m256d e = _mm256_sub_pd(_mm256_castsi256_pd(eb), _mm256_set1_pd(0x1p52 + 1023.0));
    __m256d f = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFll)),
                                                    _mm256_set1_epi64x(0x3FF0000000000000ll)));
    __m256d big = _mm256_cmp_pd(f, _mm256_set1_pd(DK_SQRT2), _CMP_GT_OQ);
    f = _mm256_blendv_pd(f, _mm256_mul_pd(f, _mm256_set1_pd(0.5)), big);
    e = _mm256_blendv_pd(e, _mm256_add_pd(e, _mm256_set1_pd(1.0)), big);
    __m256d E = _mm256_sub_pd(e, _mm256_set1_pd(25.0));
    const __m256d onev = _mm256_set1_pd(1.0);
    __m256d s = _mm256_div_pd(_mm256_sub_pd(f, onev), _mm256_add_pd(f, onev));
    __m256d z = _mm256_mul_pd(s, s);
    __m256d R = horner(z, DK_L_COEF, 7);
    __m256d lf = _mm256_add_pd(_mm256_add_pd(s, s), _mm256_mul_pd(_mm256_mul_pd(s, z), R));
    __m256d lo = _mm256_add_pd(_mm256_mul_pd(E, _mm256_set1_pd(DK_LN2_LO)), lf);
    __m256d lnu = _mm256_add_pd(_mm256_mul_pd(E, _mm256_set1_pd(DK_LN2_HI)), lo);
    __m256d r = _mm256_sqrt_pd(_mm256_mul_pd(lnu, _mm256_set1_pd(-2.0)));

    __m128i q = _mm_srli_epi32(_mm_add_epi32(k2, _mm_set1_epi32(1 << 21)), 22);
    __m128i it = _mm_sub_epi32(_mm_add_epi32(_mm_add_epi32(k2, k2), one), _mm_slli_epi32(q, 23));
    __m256d t = _mm256_mul_pd(_mm256_cvtepi32_pd(it), _mm256_set1_pd(0x1p-23));
    __m256d t2 = _mm256_mul_pd(t, t);
    __m256d sn = _mm256_mul_pd(t, horner(t2, DK_S_COEF, 7));
    __m256d C = horner(t2, DK_C_COEF, 7);
    /* lane masks of q & 1 and q & 2, widened to 64 bits */
    __m256d odd = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_cmpeq_epi32(_mm_and_si128(q, one), one)));
    __m256i neg = _mm256_cvtepi32_epi64(_mm_cmpeq_epi32(_mm_and_si128(q, _mm_set1_epi32(2)), _mm_set1_epi32(2)));
    const __m256d sign = _mm256_set1_pd(-0.0);
    __m256d nsn = _mm256_xor_pd(sn, sign);
    __m256d cc = _mm256_blendv_pd(C, nsn, odd), ss = _mm256_blendv_pd(sn, C, odd);
    __m256d flip = _mm256_and_pd(_mm256_castsi256_pd(neg), sign);
    *z0 = _mm256_mul_pd(r, _mm256_xor_pd(cc, flip));
    *z1 = _mm256_mul_pd(r, _mm256_xor_pd(ss, flip));
}

void dk_normal_avx2(const dk_stream *s, uint64_t chunk, size_t nchunks, void *z, int f64) {
    for (size_t b8 = 0; b8 < nchunks * 2; b8++) { /* 8 blocks, 32 elements per pass */
        __m256i c[4];
        philox8(s, s->offset + chunk * 16u + 8u * b8, c);
        __m256i w[4] = {_mm256_srli_epi32(c[0], 8), _mm256_srli_epi32(c[1], 8), _mm256_srli_epi32(c[2], 8),
                        _mm256_srli_epi32(c[3], 8)};
        for (int h = 0; h < 2; h++) { /* blocks 4h .. 4h + 3 of this pass */
            __m128i k[4];
            for (int m = 0; m < 4; m++) k[m] = h ? _mm256_extracti128_si256(w[m], 1) : _mm256_castsi256_si128(w[m]);
            __m256d v0, v1, v2, v3;
            normal4(k[0], k[1], &v0, &v1);
            normal4(k[2], k[3], &v2, &v3);
            /* out[4j + m] = v_m[j]: a 4 x 4 transpose */
            __m256d t0 = _mm256_unpacklo_pd(v0, v1), t1 = _mm256_unpackhi_pd(v0, v1);
            __m256d t2 = _mm256_unpacklo_pd(v2, v3), t3 = _mm256_unpackhi_pd(v2, v3);
            __m256d o[4] = {_mm256_permute2f128_pd(t0, t2, 0x20), _mm256_permute2f128_pd(t1, t3, 0x20),
                            _mm256_permute2f128_pd(t0, t2, 0x31), _mm256_permute2f128_pd(t1, t3, 0x31)};
            size_t at = b8 * 32 + 16 * (size_t)h;
            for (int n = 0; n < 4; n++) {
                if (f64)
                    _mm256_storeu_pd((double *)z + at + 4 * n, o[n]);
                else
                    _mm_storeu_ps((float *)z + at + 4 * n, _mm256_cvtpd_ps(o[n]));
            }
        }
    }
}

const dk_isa_ops dk_ops_avx2 = {gen_avx2, {NULL, apply_f32, apply_f64, apply_bf16, apply_f16}, DK_ALPHA_TABLE(avx2)};

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
