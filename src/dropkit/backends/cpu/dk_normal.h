/* The normal transform of dropkit's stream (docs/rng.md, "Normal numbers"): a Box-Muller pair
 * from the words (w1, w2), its logarithm, sine and cosine evaluated as fixed float64 polynomials
 * with correctly rounded +, -, *, / and sqrt only (no fused multiply-add), in one fixed order.
 * Every path (this scalar code, the AVX2 and AVX-512 intrinsics, the torch reference, Triton)
 * evaluates the same operations on the same values, so they agree bit for bit.
 *
 * With k1 = w1 >> 8 and k2 = w2 >> 8, the uniforms are u = (2k + 1) 2^-25:
 *   ln u1:  a = 2k1 + 1 = f 2^e with f in [1, 2) (exact split); if f > sqrt 2 then f = f / 2,
 *           e = e + 1; E = e - 25; s = (f - 1) / (f + 1); z = s s;
 *           R = L6; R = R z + L5; ... R = R z + L0;  lf = (s + s) + (s z) R;
 *           ln u1 = E LN2_HI + (E LN2_LO + lf).
 *   r = sqrt(ln u1 * -2).
 *   angle:  q = (k2 + 2^21) >> 22 (the nearest quadrant of 4 u2, 0..4); t = (2k2 + 1 - q 2^23) 2^-23
 *           in (-1/2, 1/2) (exact); t2 = t t;
 *           S = S6; S = S t2 + S5; ... S = S t2 + S0; sn = t S          (sin(pi t / 2))
 *           C = C6; C = C t2 + C5; ... C = C t2 + C0                      (cos(pi t / 2))
 *           (c, s) = (C, sn), (-sn, C), (-C, -sn), (sn, -C) for q mod 4 = 0, 1, 2, 3.
 *   z0 = r c, z1 = r s. */
#ifndef DK_NORMAL_H
#define DK_NORMAL_H

#include "dk_common.h"

#include <math.h>

/* Near-minimax polynomials (Chebyshev fits, coefficients rounded to float64), lowest power first:
 * L: (2 atanh(s) - 2s) / s^3 as a polynomial in z = s^2, for z in [0, 0.0295];
 * S: sin(pi t / 2) / t and C: cos(pi t / 2) as polynomials in t^2, for t^2 in [0, 1/4]. */
#define DK_L0 0x1.5555555555558p-1
#define DK_L1 0x1.99999999952e2p-2
#define DK_L2 0x1.2492492df148dp-2
#define DK_L3 0x1.c71c62e5800a1p-3
#define DK_L4 0x1.7462b4ab2ef6bp-3
#define DK_L5 0x1.39fe606542ddep-3
#define DK_L6 0x1.2b584aae78a57p-3
#define DK_S0 0x1.921fb54442d18p+0
#define DK_S1 (-0x1.4abbce625be41p-1)
#define DK_S2 0x1.466bc677587f8p-4
#define DK_S3 (-0x1.32d2cce2e5b19p-8)
#define DK_S4 0x1.50782fda12d96p-13
#define DK_S5 (-0x1.e30071afc3e59p-19)
#define DK_S6 0x1.e3f38399551bfp-25
#define DK_C0 1.0
#define DK_C1 (-0x1.3bd3cc9be458bp+0)
#define DK_C2 0x1.03c1f081b0780p-2
#define DK_C3 (-0x1.55d3c7dbfd139p-6)
#define DK_C4 0x1.e1f4fb60281f6p-11
#define DK_C5 (-0x1.a6c9c1be9eb49p-16)
#define DK_C6 0x1.f3dbcea61b1a4p-22
/* ln 2 split so that E * DK_LN2_HI is exact for |E| < 2^20 (fdlibm's), and sqrt 2 */
#define DK_LN2_HI 0x1.62e42fee00000p-1
#define DK_LN2_LO 0x1.a39ef35793c76p-33
#define DK_SQRT2 0x1.6a09e667f3bcdp+0
/* The same coefficients as arrays, for the SIMD paths' Horner loops. */
static const double DK_L_COEF[7] = {DK_L0, DK_L1, DK_L2, DK_L3, DK_L4, DK_L5, DK_L6};
static const double DK_S_COEF[7] = {DK_S0, DK_S1, DK_S2, DK_S3, DK_S4, DK_S5, DK_S6};
static const double DK_C_COEF[7] = {DK_C0, DK_C1, DK_C2, DK_C3, DK_C4, DK_C5, DK_C6};

static inline double dk_f64_from_bits(uint64_t u) {
    double d;
    memcpy(&d, &u, 8);
    return d;
}

static inline uint64_t dk_bits_from_f64(double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

/* ln((2 k + 1) 2^-25) for k < 2^24. */
static inline double dk_normal_log(uint32_t k) {
    double a = (double)(2 * k + 1);
    uint64_t b = dk_bits_from_f64(a);
    int e = (int)(b >> 52) - 1023;
    double f = dk_f64_from_bits((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
    if (f > DK_SQRT2) {
        f = f * 0.5;
        e = e + 1;
    }
    double E = (double)(e - 25);
    double s = (f - 1.0) / (f + 1.0);
    double z = s * s;
    double R = DK_L6;
    R = R * z + DK_L5;
    R = R * z + DK_L4;
    R = R * z + DK_L3;
    R = R * z + DK_L2;
    R = R * z + DK_L1;
    R = R * z + DK_L0;
    double lf = (s + s) + (s * z) * R;
    return E * DK_LN2_HI + (E * DK_LN2_LO + lf);
}

/* cos and sin of 2 pi (2 k + 1) 2^-25 for k < 2^24. */
static inline void dk_normal_cossin(uint32_t k, double *c, double *s) {
    uint32_t q = (k + (1u << 21)) >> 22;
    double t = (double)((int32_t)(2 * k + 1) - (int32_t)(q << 23)) * 0x1p-23;
    double t2 = t * t;
    double S = DK_S6;
    S = S * t2 + DK_S5;
    S = S * t2 + DK_S4;
    S = S * t2 + DK_S3;
    S = S * t2 + DK_S2;
    S = S * t2 + DK_S1;
    S = S * t2 + DK_S0;
    double sn = t * S;
    double C = DK_C6;
    C = C * t2 + DK_C5;
    C = C * t2 + DK_C4;
    C = C * t2 + DK_C3;
    C = C * t2 + DK_C2;
    C = C * t2 + DK_C1;
    C = C * t2 + DK_C0;
    double cc = (q & 1u) ? -sn : C, ss = (q & 1u) ? C : sn;
    *c = (q & 2u) ? -cc : cc;
    *s = (q & 2u) ? -ss : ss;
}

/* The normals (z0, z1) of the word pair (w1, w2). */
static inline void dk_normal_pair(uint32_t w1, uint32_t w2, double *z0, double *z1) {
    double r = sqrt(dk_normal_log(w1 >> 8) * -2.0);
    double c, s;
    dk_normal_cossin(w2 >> 8, &c, &s);
    *z0 = r * c;
    *z1 = r * s;
}

/* 64 * nchunks normals of the stream s in element order, starting at element 64 * chunk of the
 * call: float64 into z if f64, else each rounded once to float32. One function per SIMD path;
 * the NEON path uses the scalar one. */
typedef void (*dk_normal_fn)(const dk_stream *s, uint64_t chunk, size_t nchunks, void *z, int f64);
void dk_normal_scalar(const dk_stream *s, uint64_t chunk, size_t nchunks, void *z, int f64);
#if defined(DK_HAVE_X86)
void dk_normal_avx2(const dk_stream *s, uint64_t chunk, size_t nchunks, void *z, int f64);
void dk_normal_avx512(const dk_stream *s, uint64_t chunk, size_t nchunks, void *z, int f64);
#endif

#endif
