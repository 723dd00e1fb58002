/* AVX-512 path: 16 Philox blocks (one 64-element chunk) per vector pass, the 32x32->64-bit
 * products done with vpmuludq on the even and odd lanes, and the keep-mask applied with
 * zero-masked multiplies (a dropped lane is written as +0.0 whatever x holds). */
#include "dk_common.h"
#include "dk_normal.h"

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

/* The Philox words of g <= DK_ILP consecutive chunks from block `base`, their rounds
 * interleaved: c[k][m] holds word m of the 16 blocks of chunk k, lane j for block j. */
static inline void philox_chunks(const dk_stream *s, uint64_t base, int g, __m512i c[DK_ILP][4]) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i m0 = _mm512_set1_epi32((int)DK_M0), m1 = _mm512_set1_epi32((int)DK_M1);
    __m512i c0[DK_ILP], c1[DK_ILP], c2[DK_ILP], c3[DK_ILP];
#pragma GCC unroll 4
    for (int k = 0; k < DK_ILP; k++) {
        c0[k] = counters_lo(base + 16u * (uint64_t)k, iota);
        c1[k] = counters_hi(base + 16u * (uint64_t)k, c0[k]);
        c2[k] = c3[k] = _mm512_setzero_si512();
    }
#pragma GCC unroll 10
    for (int r = 0; r < DK_ROUNDS; r++) {
        const __m512i k0 = _mm512_set1_epi32((int)s->k0[r]), k1 = _mm512_set1_epi32((int)s->k1[r]);
#pragma GCC unroll 4
        for (int k = 0; k < DK_ILP; k++) {
            if (k >= g) break;
            __m512i hi0, lo0, hi1, lo1;
            mulhilo16(c0[k], m0, &hi0, &lo0);
            mulhilo16(c2[k], m1, &hi1, &lo1);
            c0[k] = _mm512_ternarylogic_epi32(hi1, c1[k], k0, 0x96);
            c1[k] = lo1;
            c2[k] = _mm512_ternarylogic_epi32(hi0, c3[k], k1, 0x96);
            c3[k] = lo0;
        }
    }
    for (int k = 0; k < g; k++) {
        c[k][0] = c0[k];
        c[k][1] = c1[k];
        c[k][2] = c2[k];
        c[k][3] = c3[k];
    }
}

static void gen_avx512(const dk_stream *s, uint64_t chunk, size_t nchunks, uint64_t *masks) {
    const __m512i tm1 = _mm512_set1_epi32((int)s->tm1);
    __m512i c[DK_ILP][4];
    size_t q = 0;
    for (; q + DK_ILP <= nchunks; q += DK_ILP) {
        philox_chunks(s, s->offset + (chunk + q) * 16u, DK_ILP, c);
#pragma GCC unroll 4
        for (int k = 0; k < DK_ILP; k++) masks[q + k] = chunk_mask(c[k][0], c[k][1], c[k][2], c[k][3], tm1);
    }
    if (q < nchunks) {
        int g = (int)(nchunks - q);
        philox_chunks(s, s->offset + (chunk + q) * 16u, g, c);
        for (int k = 0; k < g; k++) masks[q + k] = chunk_mask(c[k][0], c[k][1], c[k][2], c[k][3], tm1);
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

/* ---- normals (dk_normal.h): 8 pairs per float64 vector, the same operations as the scalar
 * code in the same order; exponent and mantissa come from vgetexp / vgetmant (exact). ---- */

static inline __m512d horner(__m512d x, const double *c, int n) {
    __m512d acc = _mm512_set1_pd(c[n - 1]);
    for (int i = n - 2; i >= 0; i--) acc = _mm512_add_pd(_mm512_mul_pd(acc, x), _mm512_set1_pd(c[i]));
    return acc;
}

/* The pairs (w1, w2) given as k1 = w1 >> 8, k2 = w2 >> 8 (8 lanes each): z0 and z1. */
static inline void normal8(__m256i k1, __m256i k2, __m512d *z0, __m512d *z1) {
    const __m256i one = _mm256_set1_epi32(1);
    __m512d a = _mm512_cvtepi32_pd(_mm256_add_epi32(_mm256_add_epi32(k1, k1), one));
    __m512d e = _mm512_getexp_pd(a);
    __m512d f = _mm512_getmant_pd(a, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    __mmask8 big = _mm512_cmp_pd_mask(f, _mm512_set1_pd(DK_SQRT2), _CMP_GT_OQ);
    f = _mm512_mask_mul_pd(f, big, f, _mm512_set1_pd(0.5));
    e = _mm512_mask_add_pd(e, big, e, _mm512_set1_pd(1.0));
    __m512d E = _mm512_sub_pd(e, _mm512_set1_pd(25.0));
    const __m512d onev = _mm512_set1_pd(1.0);
    __m512d s = _mm512_div_pd(_mm512_sub_pd(f, onev), _mm512_add_pd(f, onev));
    __m512d z = _mm512_mul_pd(s, s);
    __m512d R = horner(z, DK_L_COEF, 7);
    __m512d lf = _mm512_add_pd(_mm512_add_pd(s, s), _mm512_mul_pd(_mm512_mul_pd(s, z), R));
    __m512d lo = _mm512_add_pd(_mm512_mul_pd(E, _mm512_set1_pd(DK_LN2_LO)), lf);
    __m512d lnu = _mm512_add_pd(_mm512_mul_pd(E, _mm512_set1_pd(DK_LN2_HI)), lo);
    __m512d r = _mm512_sqrt_pd(_mm512_mul_pd(lnu, _mm512_set1_pd(-2.0)));

    __m256i q = _mm256_srli_epi32(_mm256_add_epi32(k2, _mm256_set1_epi32(1 << 21)), 22);
    __m256i it = _mm256_sub_epi32(_mm256_add_epi32(_mm256_add_epi32(k2, k2), one), _mm256_slli_epi32(q, 23));
    __m512d t = _mm512_mul_pd(_mm512_cvtepi32_pd(it), _mm512_set1_pd(0x1p-23));
    __m512d t2 = _mm512_mul_pd(t, t);
    __m512d sn = _mm512_mul_pd(t, horner(t2, DK_S_COEF, 7));
    __m512d C = horner(t2, DK_C_COEF, 7);
    __mmask8 odd = _mm256_test_epi32_mask(q, one), neg = _mm256_test_epi32_mask(q, _mm256_set1_epi32(2));
    const __m512i sign = _mm512_set1_epi64((long long)0x8000000000000000ull);
    __m512d nsn = _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(sn), sign));
    __m512d cc = _mm512_mask_blend_pd(odd, C, nsn), ss = _mm512_mask_blend_pd(odd, sn, C);
    cc = _mm512_castsi512_pd(_mm512_mask_xor_epi64(_mm512_castpd_si512(cc), neg, _mm512_castpd_si512(cc), sign));
    ss = _mm512_castsi512_pd(_mm512_mask_xor_epi64(_mm512_castpd_si512(ss), neg, _mm512_castpd_si512(ss), sign));
    *z0 = _mm512_mul_pd(r, cc);
    *z1 = _mm512_mul_pd(r, ss);
}

/* One chunk from its words (k = w >> 8): block j's pairs (w0, w1) -> elements 4j, 4j + 1 and
 * (w2, w3) -> elements 4j + 2, 4j + 3; v[h][m] is output m of blocks 8h .. 8h + 7. */
static inline void chunk_normals(const __m512i w[4], __m512d v[2][4]) {
    for (int h = 0; h < 2; h++) {
        __m256i k[4];
        for (int m = 0; m < 4; m++) {
            __m512i km = _mm512_srli_epi32(w[m], 8);
            k[m] = h ? _mm512_extracti64x4_epi64(km, 1) : _mm512_castsi512_si256(km);
        }
        normal8(k[0], k[1], &v[h][0], &v[h][1]);
        normal8(k[2], k[3], &v[h][2], &v[h][3]);
    }
}

void dk_normal_avx512(const dk_stream *s, uint64_t chunk, size_t nchunks, void *z, int f64) {
    /* out[4j + m] = v[m][j]: pairs of lanes from (v0, v1) and (v2, v3) interleaved, then merged */
    const __m512i pair_lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    const __m512i pair_hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    const __m512i quad_lo = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i quad_hi = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for (size_t q0 = 0; q0 < nchunks; q0 += DK_ILP) {
        int g = nchunks - q0 < DK_ILP ? (int)(nchunks - q0) : DK_ILP;
        __m512i w[DK_ILP][4];
        philox_chunks(s, s->offset + (chunk + q0) * 16u, g, w);
        for (int k = 0; k < g; k++) {
            __m512d v[2][4];
            chunk_normals(w[k], v);
            for (int h = 0; h < 2; h++) {
                __m512d p01a = _mm512_permutex2var_pd(v[h][0], pair_lo, v[h][1]);
                __m512d p01b = _mm512_permutex2var_pd(v[h][0], pair_hi, v[h][1]);
                __m512d p23a = _mm512_permutex2var_pd(v[h][2], pair_lo, v[h][3]);
                __m512d p23b = _mm512_permutex2var_pd(v[h][2], pair_hi, v[h][3]);
                __m512d o[4] = {_mm512_permutex2var_pd(p01a, quad_lo, p23a),
                                _mm512_permutex2var_pd(p01a, quad_hi, p23a),
                                _mm512_permutex2var_pd(p01b, quad_lo, p23b),
                                _mm512_permutex2var_pd(p01b, quad_hi, p23b)};
                size_t at = (q0 + (size_t)k) * DK_CHUNK + 32 * (size_t)h;
                for (int n = 0; n < 4; n++) {
                    if (f64)
                        _mm512_storeu_pd((double *)z + at + 8 * n, o[n]);
                    else
                        _mm256_storeu_ps((float *)z + at + 8 * n, _mm512_cvtpd_ps(o[n]));
                }
            }
        }
    }
}

const dk_isa_ops dk_ops_avx512 = {gen_avx512, {NULL, apply_f32, apply_f64, apply_bf16, apply_f16}, DK_ALPHA_TABLE(avx512)};

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
