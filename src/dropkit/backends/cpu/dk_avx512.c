/* AVX-512 path: 16 Philox blocks (one 64-element chunk) per vector pass, the 32x32->64-bit
 * products done with vpmuludq on the even and odd lanes, and the keep-mask applied with
 * zero-masked multiplies (a dropped lane is written as +0.0 whatever x holds). */
#include "dk_common.h"

#if defined(DK_HAVE_X86)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")
#endif
#include <immintrin.h>

/* hi/lo halves of a * m per 32-bit lane; vpmuludq multiplies the even lanes, so the odd lanes
 * are shifted down for a second product. Each 64-bit product holds its lo half in the even and
 * its hi half in the odd 32-bit lane; a masked in-pair swap moves the halves that are out of
 * place (one instruction per result, where shift-and-blend took two). */
static inline void mulhilo16(__m512i a, __m512i m, __m512i *hi, __m512i *lo) {
    __m512i even = _mm512_mul_epu32(a, m);
    __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    *hi = _mm512_mask_shuffle_epi32(odd, 0x5555, even, _MM_PERM_CDAB);
    *lo = _mm512_mask_shuffle_epi32(even, 0xAAAA, odd, _MM_PERM_CDAB);
}

/* Philox rounds of DK_ILP independent chunks at once: one chunk's rounds are a chain of
 * dependent multiplies (about 10 cycles each), so a single chunk leaves the multiplier idle most
 * of the time; interleaving DK_ILP chains keeps it busy. */
#define DK_ILP 4

static inline __m512i counters_lo(uint64_t base, __m512i iota) {
    return _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)base), iota);
}

/* High counter words; a lane whose low word wrapped carries into the high word. */
static inline __m512i counters_hi(uint64_t base, __m512i c0) {
    __m512i hi = _mm512_set1_epi32((int)(uint32_t)(base >> 32));
    __m512i lo = _mm512_set1_epi32((int)(uint32_t)base);
    return _mm512_mask_add_epi32(hi, _mm512_cmplt_epu32_mask(c0, lo), hi, _mm512_set1_epi32(1));
}

static inline uint64_t chunk_mask(__m512i c0, __m512i c1, __m512i c2, __m512i c3, __m512i tm1) {
    return dk_spread4(_mm512_cmpgt_epu32_mask(c0, tm1)) | dk_spread4(_mm512_cmpgt_epu32_mask(c1, tm1)) << 1 |
           dk_spread4(_mm512_cmpgt_epu32_mask(c2, tm1)) << 2 | dk_spread4(_mm512_cmpgt_epu32_mask(c3, tm1)) << 3;
}

static void gen_avx512(const dk_stream *s, uint64_t chunk, size_t nchunks, uint64_t *masks) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i m0 = _mm512_set1_epi32((int)DK_M0), m1 = _mm512_set1_epi32((int)DK_M1);
    const __m512i tm1 = _mm512_set1_epi32((int)s->tm1);
    size_t q = 0;
    for (; q + DK_ILP <= nchunks; q += DK_ILP) {
        __m512i c0[DK_ILP], c1[DK_ILP], c2[DK_ILP], c3[DK_ILP];
#pragma GCC unroll 4
        for (int k = 0; k < DK_ILP; k++) {
            uint64_t base = s->offset + (chunk + q + (uint64_t)k) * 16u;
            c0[k] = counters_lo(base, iota);
            c1[k] = counters_hi(base, c0[k]);
            c2[k] = c3[k] = _mm512_setzero_si512();
        }
#pragma GCC unroll 10
        for (int r = 0; r < DK_ROUNDS; r++) {
            const __m512i k0 = _mm512_set1_epi32((int)s->k0[r]), k1 = _mm512_set1_epi32((int)s->k1[r]);
#pragma GCC unroll 4
            for (int k = 0; k < DK_ILP; k++) {
                __m512i hi0, lo0, hi1, lo1;
                mulhilo16(c0[k], m0, &hi0, &lo0);
                mulhilo16(c2[k], m1, &hi1, &lo1);
                c0[k] = _mm512_ternarylogic_epi32(hi1, c1[k], k0, 0x96);
                c1[k] = lo1;
                c2[k] = _mm512_ternarylogic_epi32(hi0, c3[k], k1, 0x96);
                c3[k] = lo0;
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < DK_ILP; k++) masks[q + k] = chunk_mask(c0[k], c1[k], c2[k], c3[k], tm1);
    }
    for (; q < nchunks; q++) {
        uint64_t base = s->offset + (chunk + q) * 16u;
        __m512i c0 = counters_lo(base, iota), c1 = counters_hi(base, c0);
        __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
        for (int r = 0; r < DK_ROUNDS; r++) {
            __m512i hi0, lo0, hi1, lo1;
            mulhilo16(c0, m0, &hi0, &lo0);
            mulhilo16(c2, m1, &hi1, &lo1);
            c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32((int)s->k0[r]), 0x96);
            c1 = lo1;
            c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32((int)s->k1[r]), 0x96);
            c3 = lo0;
        }
        masks[q] = chunk_mask(c0, c1, c2, c3, tm1);
    }
}

#define LANE_MASK(i) (masks[(i) >> 6] >> ((i) & 63))

/* The last n % width elements go through the scalar path with their mask bits shifted down
 * (width divides 64, so they never straddle two mask words). */
static void finish_tail(int dtype, const void *x, void *y, const uint64_t *masks, size_t i, size_t n,
                        double scale, size_t esz) {
    if (i == n) return;
    uint64_t rest = LANE_MASK(i);
    dk_ops_scalar.apply[dtype]((const char *)x + i * esz, (char *)y + i * esz, &rest, n - i, scale);
}

static void apply_f32(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const float *x = xv;
    float *y = yv;
    __m512 s = _mm512_set1_ps((float)scale);
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_maskz_mul_ps((__mmask16)LANE_MASK(i), _mm512_loadu_ps(x + i), s));
    finish_tail(DK_F32, xv, yv, masks, i, n, scale, 4);
}

static void apply_f64(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const double *x = xv;
    double *y = yv;
    __m512d s = _mm512_set1_pd(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm512_storeu_pd(y + i, _mm512_maskz_mul_pd((__mmask8)LANE_MASK(i), _mm512_loadu_pd(x + i), s));
    finish_tail(DK_F64, xv, yv, masks, i, n, scale, 8);
}

static void apply_bf16(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const uint16_t *x = xv;
    uint16_t *y = yv;
    __m512 s = _mm512_set1_ps((float)scale);
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF);
    const __m512i nan16 = _mm512_set1_epi32(0xFFFF);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i xi = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(x + i))), 16);
        __m512 p = _mm512_maskz_mul_ps((__mmask16)LANE_MASK(i), _mm512_castsi512_ps(xi), s);
        __m512i u = _mm512_castps_si512(p);
        /* round to nearest even on the 16 bits that are cut off */
        __m512i bias = _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(u, 16), one));
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
        r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(p, p, _CMP_UNORD_Q), nan16);
        _mm256_storeu_si256((void *)(y + i), _mm512_cvtepi32_epi16(r));
    }
    finish_tail(DK_BF16, xv, yv, masks, i, n, scale, 2);
}

static void apply_f16(const void *xv, void *yv, const uint64_t *masks, size_t n, double scale) {
    const uint16_t *x = xv;
    uint16_t *y = yv;
    __m512 s = _mm512_set1_ps((float)scale);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 xf = _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(x + i)));
        __m512 p = _mm512_maskz_mul_ps((__mmask16)LANE_MASK(i), xf, s);
        _mm256_storeu_si256((void *)(y + i), _mm512_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    finish_tail(DK_F16, xv, yv, masks, i, n, scale, 2);
}

DK_DEFINE_ALPHA(avx512)

const dk_isa_ops dk_ops_avx512 = {gen_avx512, {NULL, apply_f32, apply_f64, apply_bf16, apply_f16}, DK_ALPHA_TABLE(avx512)};

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
