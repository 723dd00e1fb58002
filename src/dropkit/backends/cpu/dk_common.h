/* Shared declarations of dropkit's native CPU kernel (no PyTorch headers: pointers, sizes,
 * scalars). The stream is philox-v1 (docs/rng.md): element i uses word i % 4 of the Philox4x32-10
 * block with counter c = offset + i / 4 (mod 2^64), laid out (c mod 2^32, c >> 32, 0, 0), under
 * the key (seed mod 2^32, seed >> 32); it is kept iff that word is >= threshold.
 *
 * The work unit is a chunk of 64 elements (16 Philox blocks): its keep-mask is one uint64_t,
 * element i of the chunk in bit i, which is also the "bits" storage format on a little-endian
 * machine (element i in bit i % 8 of byte i / 8). */
#ifndef DK_COMMON_H
#define DK_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dropkit's CPU kernel stores 64-bit masks as bytes and assumes a little-endian machine"
#endif

#define DK_M0 0xD2511F53u
#define DK_M1 0xCD9E8D57u
#define DK_W0 0x9E3779B9u
#define DK_W1 0xBB67AE85u
#define DK_ROUNDS 10
#define DK_CHUNK 64

enum { DK_F32 = 1, DK_F64 = 2, DK_BF16 = 3, DK_F16 = 4 };
enum { DK_ISA_SCALAR = 0, DK_ISA_AVX2 = 1, DK_ISA_AVX512 = 2, DK_ISA_NEON = 3 };

/* The stream of one call: round keys and the comparison, fixed for the whole call. */
typedef struct {
    uint32_t k0[DK_ROUNDS], k1[DK_ROUNDS];
    uint64_t offset;
    uint32_t tm1;     /* threshold - 1: kept iff word > tm1 (threshold = 2^32 keeps nothing) */
    int keep_all;     /* threshold == 0: every element kept, no word needed */
} dk_stream;

/* The stream of key `seed` from block `offset`; threshold (at most 2^32) sets tm1 and keep_all. */
static inline void dk_stream_init(dk_stream *s, uint64_t seed, uint64_t offset, uint64_t threshold) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < DK_ROUNDS; r++, k0 += DK_W0, k1 += DK_W1) {
        s->k0[r] = k0;
        s->k1[r] = k1;
    }
    s->offset = offset;
    s->keep_all = threshold == 0;
    s->tm1 = (uint32_t)(threshold - 1);
}

/* The four words of Philox4x32-10 block `counter` (the portable form every SIMD path matches). */
static inline void dk_philox_block(const dk_stream *s, uint64_t counter, uint32_t w[4]) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
    for (int r = 0; r < DK_ROUNDS; r++) {
        uint64_t p0 = (uint64_t)DK_M0 * c0, p1 = (uint64_t)DK_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ s->k0[r], n2 = (uint32_t)(p0 >> 32) ^ c3 ^ s->k1[r];
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
    }
    w[0] = c0;
    w[1] = c1;
    w[2] = c2;
    w[3] = c3;
}

/* Keep-masks of nchunks consecutive chunks, the first being chunk number `chunk` of the call. */
typedef void (*dk_gen_fn)(const dk_stream *s, uint64_t chunk, size_t nchunks, uint64_t *masks);
/* y[i] = bit i of masks ? x[i] * scale : +0.0 for i < n, product in float32 (float64 for
 * float64), rounded once to the element type. */
typedef void (*dk_apply_fn)(const void *x, void *y, const uint64_t *masks, size_t n, double scale);

/* The affine replacement of alpha dropout: y[i] = bit i of masks ? x[i] * a + b : c, with a, b
 * and c rounded to float32 (float64 for float64), the product and the sum each rounded in that
 * precision (no fused multiply-add), and the result rounded once to the element type. */
typedef void (*dk_alpha_fn)(const void *x, void *y, const uint64_t *masks, size_t n, double a, double b,
                            double c);

typedef struct {
    dk_gen_fn gen;
    dk_apply_fn apply[5]; /* indexed by DK_F32 .. DK_F16 */
    dk_alpha_fn alpha[5];
} dk_isa_ops;

/* The ops of path `isa`, or NULL when this build or CPU cannot run it (dk_cpu.c). */
const dk_isa_ops *dk_isa_lookup(int isa);
/* Run fn(ctx, k) for k = 0 .. nt - 1 on nt threads (OpenMP's when built with it), the caller
 * included (dk_cpu.c). */
void dk_parallel(int nt, void (*fn)(void *ctx, int k), void *ctx);

extern const dk_isa_ops dk_ops_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const dk_isa_ops dk_ops_avx2;
extern const dk_isa_ops dk_ops_avx512;
#define DK_HAVE_X86 1
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
extern const dk_isa_ops dk_ops_neon;
#define DK_HAVE_NEON 1
#endif

/* Move the low 16 bits of v to bits 0, 4, 8, ..., 60: row k of the 16 blocks (word k of each
 * block) lands on elements 4j + k once shifted left by k. */
static inline uint64_t dk_spread4(uint64_t v) {
    v &= 0xFFFFu;
    v = (v | (v << 24)) & 0x000000FF000000FFull;
    v = (v | (v << 12)) & 0x000F000F000F000Full;
    v = (v | (v << 6)) & 0x0303030303030303ull;
    v = (v | (v << 3)) & 0x1111111111111111ull;
    return v;
}

static inline float dk_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t dk_bits_from_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* float32 -> bfloat16, round to nearest even; every NaN becomes 0xFFFF as torch's conversion
 * gives, so outputs match the reference backend bit for bit. */
static inline uint16_t dk_f32_to_bf16(float f) {
    uint32_t u = dk_bits_from_f32(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFFFu;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float dk_half_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0x1Fu) return dk_f32_from_bits(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        float mag = (float)man * 0x1p-24f; /* subnormal half: exact in float32 */
        return sign ? -mag : mag;
    }
    return dk_f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

/* float32 -> float16, round to nearest even (IEEE, as F16C and torch convert). A NaN keeps its
 * sign and top payload bits and is made quiet, as vcvtps2ph does. */
static inline uint16_t dk_f32_to_half(float f) {
    uint32_t u = dk_bits_from_f32(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u | (uint16_t)((a >> 13) & 0x3FFu);
    if (a >= 0x47800000u) return sign | 0x7C00u; /* >= 2^16: infinity */
    if (a >= 0x38800000u) {                       /* normal half (>= 2^-14) */
        uint32_t r = a + 0xFFFu + ((a >> 13) & 1u);
        return sign | (uint16_t)((r >> 13) - (112u << 10));
    }
    /* Subnormal half: m = f * 2^24 rounded to an integer; adding 2^23 rounds it (to nearest
     * even, the default mode) and the integer is read back from the sum's mantissa. */
    float t = dk_f32_from_bits(a) * 0x1p24f + 0x1p23f;
    return sign | (uint16_t)(dk_bits_from_f32(t) - 0x4B000000u);
}

/* The alpha apply functions for all four dtypes, written as plain loops over 64-element chunks
 * so that each ISA file, compiling them under its own target pragma, gets them vectorized by the
 * compiler. `S` is a name suffix; DK_ALPHA_TABLE(S) lists them in dk_isa_ops order. */
#define DK_DEFINE_ALPHA(S)                                                                              \
    static void alpha_f32_##S(const void *xv, void *yv, const uint64_t *masks, size_t n, double a,    \
                              double b, double c) {                                                    \
        const float *x = xv;                                                                           \
        float *y = yv;                                                                                 \
        const float fa = (float)a, fb = (float)b, fc = (float)c;                                       \
        for (size_t q = 0; q * DK_CHUNK < n; q++) {                                                    \
            const uint64_t m = masks[q];                                                               \
            const size_t e = n - q * DK_CHUNK < DK_CHUNK ? n - q * DK_CHUNK : DK_CHUNK;                \
            const float *xq = x + q * DK_CHUNK;                                                        \
            float *yq = y + q * DK_CHUNK;                                                              \
            for (size_t j = 0; j < e; j++) {                                                           \
                float v = xq[j] * fa;                                                                  \
                v = v + fb;                                                                            \
                yq[j] = ((m >> j) & 1u) ? v : fc;                                                      \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
    static void alpha_f64_##S(const void *xv, void *yv, const uint64_t *masks, size_t n, double a,    \
                              double b, double c) {                                                    \
        const double *x = xv;                                                                          \
        double *y = yv;                                                                                \
        for (size_t q = 0; q * DK_CHUNK < n; q++) {                                                    \
            const uint64_t m = masks[q];                                                               \
            const size_t e = n - q * DK_CHUNK < DK_CHUNK ? n - q * DK_CHUNK : DK_CHUNK;                \
            const double *xq = x + q * DK_CHUNK;                                                       \
            double *yq = y + q * DK_CHUNK;                                                             \
            for (size_t j = 0; j < e; j++) {                                                           \
                double v = xq[j] * a;                                                                  \
                v = v + b;                                                                             \
                yq[j] = ((m >> j) & 1u) ? v : c;                                                       \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
    static void alpha_bf16_##S(const void *xv, void *yv, const uint64_t *masks, size_t n, double a,   \
                               double b, double c) {                                                   \
        const uint16_t *x = xv;                                                                        \
        uint16_t *y = yv;                                                                              \
        const float fa = (float)a, fb = (float)b;                                                      \
        const uint16_t hc = dk_f32_to_bf16((float)c);                                                  \
        for (size_t i = 0; i < n; i++) {                                                               \
            float v = dk_f32_from_bits((uint32_t)x[i] << 16) * fa;                                     \
            v = v + fb;                                                                                \
            y[i] = ((masks[i >> 6] >> (i & 63)) & 1u) ? dk_f32_to_bf16(v) : hc;                        \
        }                                                                                              \
    }                                                                                                  \
    static void alpha_f16_##S(const void *xv, void *yv, const uint64_t *masks, size_t n, double a,    \
                              double b, double c) {                                                    \
        const uint16_t *x = xv;                                                                        \
        uint16_t *y = yv;                                                                              \
        const float fa = (float)a, fb = (float)b;                                                      \
        const uint16_t hc = dk_f32_to_half((float)c);                                                  \
        for (size_t i = 0; i < n; i++) {                                                               \
            float v = dk_half_to_f32(x[i]) * fa;                                                       \
            v = v + fb;                                                                                \
            y[i] = ((masks[i >> 6] >> (i & 63)) & 1u) ? dk_f32_to_half(v) : hc;                        \
        }                                                                                              \
    }
#define DK_ALPHA_TABLE(S) {NULL, alpha_f32_##S, alpha_f64_##S, alpha_bf16_##S, alpha_f16_##S}

/* The element-wise kernel (dk_cpu.c), which the broadcast kernels call to draw their masks. */
int dk_run(int isa, int dtype, const void *x, void *y, const uint8_t *bits_in, const uint8_t *bool_in,
           uint8_t *bits_out, uint8_t *bool_out, uint64_t seed, uint64_t offset, uint64_t threshold,
           double scale, uint64_t n, int nthreads);

/* The broadcast kernels (dk_bcast.c), which py_entry.c exposes to Python with dk_run. */
int dk_bcast_apply(int isa, int op, int dtype, const void *x, void *y, const uint8_t *bits, uint64_t nbits, int nd,
                   const int64_t *sizes, const int64_t *xstr, const int64_t *ystr, const int64_t *mstr,
                   double scale, double a, double b, double c, int nthreads);
int dk_bcast_draw_apply(int isa, int op, int dtype, const void *x, void *y, uint8_t *bits, uint8_t *bools,
                        uint64_t seed, uint64_t offset, uint64_t threshold, uint64_t nbits, int nd,
                        const int64_t *sizes, const int64_t *xstr, const int64_t *ystr, const int64_t *mstr,
                        double scale, double a, double b, double c, int nthreads);

#endif
