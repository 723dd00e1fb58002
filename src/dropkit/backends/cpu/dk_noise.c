/* Normals from the stream, and Gaussian dropout / Gaussian noise applied in the same pass.
 *
 * Normal i of a call is element i; pair k uses words 2k and 2k + 1 (dk_normal.h gives the
 * transform). A 64-element chunk is 16 Philox blocks and 32 whole pairs, so threads and tiles
 * that start on chunk boundaries never split a pair, and the result never depends on how many
 * threads ran. The fused ops compute a tile's normals into a buffer on the stack (in float64 for
 * float64 tensors, else rounded to float32) and combine them with x while the tile is in cache:
 *   multiplicative (Gaussian dropout): y = x * (1 + c * z)
 *   additive (Gaussian noise):         y = x + c * z
 * with c rounded to the compute dtype, each operation rounded there (no fused multiply-add), and
 * the result rounded once to x's dtype: what the reference backend's torch ops compute.
 */
#include "dk_normal.h"

#define DK_NOISE_TILE 2048
#define DK_NOISE_MIN_PER_THREAD (1u << 15)
#define DK_NOISE_MAX_THREADS 256

/* ---- the portable path ---- */

void dk_normal_scalar(const dk_stream *s, uint64_t chunk, size_t nchunks, void *z, int f64) {
    for (size_t b = 0; b < nchunks * 16; b++) {
        uint32_t w[4];
        dk_philox_block(s, s->offset + chunk * 16u + b, w); /* wraps mod 2^64 */
        double v[4];
        dk_normal_pair(w[0], w[1], &v[0], &v[1]);
        dk_normal_pair(w[2], w[3], &v[2], &v[3]);
        for (int j = 0; j < 4; j++) {
            if (f64)
                ((double *)z)[4 * b + j] = v[j];
            else
                ((float *)z)[4 * b + j] = (float)v[j];
        }
    }
}

static dk_normal_fn normal_fn(int isa) {
    if (!dk_isa_lookup(isa)) return NULL;
    switch (isa) {
#if defined(DK_HAVE_X86)
    case DK_ISA_AVX2:
        return dk_normal_avx2;
    case DK_ISA_AVX512:
        return dk_normal_avx512;
#endif
    default:
        return dk_normal_scalar;
    }
}

/* ---- combining a tile of normals with x ---- */

static void combine_f32(const float *x, float *y, const float *z, size_t m, float c, int additive) {
    if (additive) {
        for (size_t i = 0; i < m; i++) {
            float n = c * z[i];
            y[i] = x[i] + n;
        }
    } else {
        for (size_t i = 0; i < m; i++) {
            float f = c * z[i];
            f = 1.0f + f;
            y[i] = x[i] * f;
        }
    }
}

static void combine_f64(const double *x, double *y, const double *z, size_t m, double c, int additive) {
    if (additive) {
        for (size_t i = 0; i < m; i++) {
            double n = c * z[i];
            y[i] = x[i] + n;
        }
    } else {
        for (size_t i = 0; i < m; i++) {
            double f = c * z[i];
            f = 1.0 + f;
            y[i] = x[i] * f;
        }
    }
}

/* bfloat16 / float16 in float32: x widened exactly, the result rounded to nearest even. */
static void combine_half(int dtype, const uint16_t *x, uint16_t *y, const float *z, size_t m, float c,
                         int additive) {
    for (size_t i = 0; i < m; i++) {
        float xf = dtype == DK_BF16 ? dk_f32_from_bits((uint32_t)x[i] << 16) : dk_half_to_f32(x[i]);
        float v = c * z[i];
        if (additive) {
            v = xf + v;
        } else {
            v = 1.0f + v;
            v = xf * v;
        }
        y[i] = dtype == DK_BF16 ? dk_f32_to_bf16(v) : dk_f32_to_half(v);
    }
}

/* ---- jobs and threads ---- */

typedef struct {
    dk_normal_fn gen;
    dk_stream stream;
    int dtype, additive, nt; /* dtype 0: write the normals themselves (f64 says in which dtype) */
    int f64;
    const void *x;
    void *y;
    double c;
    uint64_t n, per;
} dk_noise_job;

static void noise_part(void *ctx, int k) {
    const dk_noise_job *J = ctx;
    uint64_t lo = J->per * (uint64_t)k, hi = k == J->nt - 1 ? J->n : J->per * (uint64_t)(k + 1);
    if (lo > J->n) lo = J->n;
    if (hi > J->n) hi = J->n;
    _Alignas(64) double buf[DK_NOISE_TILE];
    static const size_t esz[5] = {0, 4, 8, 2, 2};
    for (uint64_t t = lo; t < hi; t += DK_NOISE_TILE) {
        size_t m = (size_t)(hi - t < DK_NOISE_TILE ? hi - t : DK_NOISE_TILE);
        size_t nch = (m + DK_CHUNK - 1) / DK_CHUNK;
        if (J->dtype == 0) {
            size_t whole = m / DK_CHUNK, e = J->f64 ? 8 : 4;
            char *out = (char *)J->y + t * e;
            if (whole) J->gen(&J->stream, t / DK_CHUNK, whole, out, J->f64);
            if (whole < nch) { /* the last, partial chunk: through the buffer */
                J->gen(&J->stream, t / DK_CHUNK + whole, 1, buf, J->f64);
                memcpy(out + whole * DK_CHUNK * e, buf, (m - whole * DK_CHUNK) * e);
            }
            continue;
        }
        const char *xt = (const char *)J->x + t * esz[J->dtype];
        char *yt = (char *)J->y + t * esz[J->dtype];
        int wide = J->dtype == DK_F64;
        J->gen(&J->stream, t / DK_CHUNK, nch, buf, wide);
        if (wide)
            combine_f64((const double *)xt, (double *)yt, buf, m, J->c, J->additive);
        else if (J->dtype == DK_F32)
            combine_f32((const float *)xt, (float *)yt, (const float *)buf, m, (float)J->c, J->additive);
        else
            combine_half(J->dtype, (const uint16_t *)xt, (uint16_t *)yt, (const float *)buf, m, (float)J->c,
                         J->additive);
    }
}

static int run_noise(dk_noise_job *J, int isa, uint64_t seed, uint64_t offset, int nthreads) {
    J->gen = normal_fn(isa);
    if (!J->gen) return -1;
    dk_stream_init(&J->stream, seed, offset, 1); /* normals read words only: no threshold */
    uint64_t useful = J->n / DK_NOISE_MIN_PER_THREAD;
    int nt = nthreads < 1 ? 1 : (nthreads > DK_NOISE_MAX_THREADS ? DK_NOISE_MAX_THREADS : nthreads);
    if ((uint64_t)nt > useful) nt = useful ? (int)useful : 1;
    J->nt = nt;
    J->per = (J->n / (uint64_t)nt + DK_CHUNK - 1) / DK_CHUNK * DK_CHUNK; /* whole chunks: whole pairs */
    if (J->n == 0) return 0;
    dk_parallel(nt, noise_part, J);
    return 0;
}

/* n normals of the stream (seed, offset) into out, float64 if f64 else float32, on the SIMD path
 * isa and up to nthreads threads. Returns 0, or -1 when the path is unavailable. */
int dk_normal(int isa, uint64_t seed, uint64_t offset, uint64_t n, int f64, void *out, int nthreads) {
    dk_noise_job job = {0};
    job.f64 = f64 != 0;
    job.y = out;
    job.n = n;
    return run_noise(&job, isa, seed, offset, nthreads);
}

/* y = x * (1 + c z) (additive == 0) or y = x + c z (additive != 0) for n elements of dtype, z
 * normal i of the stream for element i. x and y may be the same array. Returns 0, -1 (path
 * unavailable) or -2 (bad dtype). */
int dk_gaussian(int isa, int dtype, const void *x, void *y, uint64_t seed, uint64_t offset, uint64_t n,
                double c, int additive, int nthreads) {
    if (dtype < DK_F32 || dtype > DK_F16 || !x || !y) return -2;
    dk_noise_job job = {0};
    job.dtype = dtype;
    job.additive = additive != 0;
    job.x = x;
    job.y = y;
    job.c = c;
    job.n = n;
    return run_noise(&job, isa, seed, offset, nthreads);
}
