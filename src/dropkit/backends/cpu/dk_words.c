/* Uniforms straight from the stream: u[i] = ((w[i] >> 8) + 0.5) * 2^-24 for word i of the
 * philox-v1 stream (docs/rng.md), in float64 (exact) or float32 (rounded to nearest, the one
 * value that would round to 1 clamped to the largest float32 below 1), as rng.words_to_uniform
 * gives them. Concrete noise builds on these (its logarithms stay in torch); normals have their own
 * kernel (dk_noise.c).
 *
 * Portable C: one Philox4x32-10 block gives four uniforms. Threads get ranges of whole blocks. */
#include "dk_common.h"

#define DK_WORDS_MIN_PER_THREAD (1u << 16)

typedef struct {
    uint64_t seed, offset, n, per;
    int f64, nt;
    void *out;
} dk_uniform_job;

static void uniform_part(void *ctx, int k) {
    const dk_uniform_job *J = ctx;
    uint64_t lo = J->per * (uint64_t)k, hi = k == J->nt - 1 ? J->n : J->per * (uint64_t)(k + 1);
    if (lo > J->n) lo = J->n;
    if (hi > J->n) hi = J->n;
    dk_stream s;
    dk_stream_init(&s, J->seed, J->offset, 1);
    for (uint64_t i = lo; i < hi; i += 4) { /* lo is a multiple of 4: whole blocks */
        uint32_t w[4];
        dk_philox_block(&s, J->offset + i / 4, w); /* wraps mod 2^64 */
        uint64_t m = hi - i < 4 ? hi - i : 4;
        for (uint64_t j = 0; j < m; j++) {
            double u = ((double)(w[j] >> 8) + 0.5) * 0x1p-24;
            if (J->f64) {
                ((double *)J->out)[i + j] = u;
            } else {
                float f = (float)u;
                ((float *)J->out)[i + j] = f > 0x1.fffffep-1f ? 0x1.fffffep-1f : f;
            }
        }
    }
}

/* n uniforms from the stream (seed, offset) into out (float64 if f64, else float32), on up to
 * nthreads threads. Returns 0. */
int dk_uniform(uint64_t seed, uint64_t offset, uint64_t n, int f64, void *out, int nthreads) {
    uint64_t useful = n / DK_WORDS_MIN_PER_THREAD;
    int nt = nthreads < 1 ? 1 : (nthreads > 256 ? 256 : nthreads);
    if ((uint64_t)nt > useful) nt = useful ? (int)useful : 1;
    dk_uniform_job job = {seed, offset, n, (n / (uint64_t)nt + 3) / 4 * 4, f64, nt, out};
    if (nt == 1) {
        uniform_part(&job, 0);
        return 0;
    }
    dk_parallel(nt, uniform_part, &job);
    return 0;
}
