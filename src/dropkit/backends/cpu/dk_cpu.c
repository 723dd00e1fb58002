/* Entry points of dropkit's native CPU kernel: ISA dispatch, the tile loop and threads.
 *
 * One job = one pass over n elements: take each 64-element chunk's keep-mask from the stream,
 * from saved bits or from a bool mask; optionally apply it to x (writing y); optionally write
 * it out as bits or bools. Forward, backward, keep_mask and pack_mask are all such jobs.
 * Threads get ranges that start on multiples of 64 elements (16 Philox blocks, 8 bit-bytes),
 * so no two threads share a block or an output byte and the result never depends on how many
 * threads ran. Indices and counters are 64-bit throughout. */
#include "dk_common.h"

#if !defined(_OPENMP)
#include <pthread.h>
#endif

#define DK_GEN_GROUP 4                /* chunks per mask-generation call while prefetching */
#define DK_TILE 2048                   /* elements per tile: 32 mask words live on the stack */
#define DK_MIN_PER_THREAD (1u << 17) /* below this, starting a thread costs more than it saves */

typedef struct {
    const dk_isa_ops *ops;
    dk_stream stream;
    int dtype;
    size_t esz;
    double scale;
    uint64_t index0; /* stream index of the element the pointers below address */
    const char *x;
    char *y;
    const uint8_t *bits_in, *bool_in;
    uint8_t *bits_out, *bool_out;
} dk_job;

typedef struct {
    const dk_job *job;
    uint64_t start, n;
} dk_part;

static const dk_isa_ops *isa_ops(int isa) {
    switch (isa) {
    case DK_ISA_SCALAR:
        return &dk_ops_scalar;
#if defined(DK_HAVE_X86)
    case DK_ISA_AVX2:
        return (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) ? &dk_ops_avx2 : NULL;
    case DK_ISA_AVX512:
        return (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
                   ? &dk_ops_avx512
                   : NULL;
#endif
#if defined(DK_HAVE_NEON)
    case DK_ISA_NEON: /* part of every AArch64 CPU: no run-time check needed */
        return &dk_ops_neon;
#endif
    default:
        return NULL;
    }
}

const dk_isa_ops *dk_isa_lookup(int isa) { return isa_ops(isa); }

#if !defined(_OPENMP)
typedef struct {
    void (*fn)(void *ctx, int k);
    void *ctx;
    int k;
} dk_task;

static void *run_task(void *arg) {
    const dk_task *t = arg;
    t->fn(t->ctx, t->k);
    return NULL;
}
#endif

void dk_parallel(int nt, void (*fn)(void *ctx, int k), void *ctx) {
    if (nt <= 1) {
        fn(ctx, 0);
        return;
    }
#if defined(_OPENMP)
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int k = 0; k < nt; k++) fn(ctx, k);
#else
    enum { MAX_TASKS = 256 };
    pthread_t threads[MAX_TASKS];
    dk_task tasks[MAX_TASKS];
    int started[MAX_TASKS];
    if (nt > MAX_TASKS) nt = MAX_TASKS;
    for (int k = 1; k < nt; k++) {
        tasks[k] = (dk_task){fn, ctx, k};
        started[k] = pthread_create(&threads[k], NULL, run_task, &tasks[k]) == 0;
    }
    fn(ctx, 0);
    for (int k = 1; k < nt; k++) {
        if (started[k])
            pthread_join(threads[k], NULL);
        else
            fn(ctx, k); /* no thread to be had: do its share here */
    }
#endif
}

/* 1 if this build and this CPU can run the path `isa`, else 0. */
int dk_isa_available(int isa) { return isa_ops(isa) != NULL; }

/* The fastest path this CPU can run. */
int dk_best_isa(void) {
    if (dk_isa_available(DK_ISA_AVX512)) return DK_ISA_AVX512;
    if (dk_isa_available(DK_ISA_AVX2)) return DK_ISA_AVX2;
    if (dk_isa_available(DK_ISA_NEON)) return DK_ISA_NEON;
    return DK_ISA_SCALAR;
}

static void run_part(const dk_job *job, uint64_t start, uint64_t n) {
    uint64_t masks[DK_TILE / DK_CHUNK];
    for (uint64_t t = start; t < start + n; t += DK_TILE) {
        size_t m = (size_t)(start + n - t < DK_TILE ? start + n - t : DK_TILE);
        size_t nch = (m + DK_CHUNK - 1) / DK_CHUNK, nbytes = (m + 7) / 8;
        if (job->bits_in) {
            memset(masks, 0, sizeof masks);
            memcpy(masks, job->bits_in + t / 8, nbytes);
        } else if (job->bool_in) {
            memset(masks, 0, sizeof masks);
            for (size_t i = 0; i < m; i++) masks[i >> 6] |= (uint64_t)(job->bool_in[t + i] != 0) << (i & 63);
        } else if (job->stream.keep_all) {
            memset(masks, 0xFF, sizeof masks);
        } else if (job->x) {
            /* The words are pure arithmetic and the apply step pure memory traffic: prefetching
             * the tile's input while its masks are computed lets the two overlap. Masks are made
             * DK_GEN_GROUP chunks at a time so that SIMD paths can interleave their rounds. */
            const char *xt = job->x + t * job->esz, *yt = job->y + t * job->esz;
            size_t chunk_bytes = DK_CHUNK * job->esz;
            for (size_t q = 0; q < nch; q += DK_GEN_GROUP) {
                size_t g = nch - q < DK_GEN_GROUP ? nch - q : DK_GEN_GROUP;
                for (size_t b = 0; b < g * chunk_bytes; b += 64) {
                    __builtin_prefetch(xt + q * chunk_bytes + b, 0, 3);
                    __builtin_prefetch(yt + q * chunk_bytes + b, 1, 3);
                }
                job->ops->gen(&job->stream, (job->index0 + t) / DK_CHUNK + q, g, masks + q);
            }
        } else {
            job->ops->gen(&job->stream, (job->index0 + t) / DK_CHUNK, nch, masks);
        }
        if (m % DK_CHUNK) masks[nch - 1] &= (UINT64_C(1) << (m % DK_CHUNK)) - 1; /* padding bits are 0 */
        if (job->x) job->ops->apply[job->dtype](job->x + t * job->esz, job->y + t * job->esz, masks, m, job->scale);
        if (job->bits_out) memcpy(job->bits_out + t / 8, masks, nbytes);
        if (job->bool_out)
            for (size_t i = 0; i < m; i++) job->bool_out[t + i] = (uint8_t)((masks[i >> 6] >> (i & 63)) & 1u);
    }
}

#if !defined(_OPENMP)
static void *run_part_thread(void *arg) {
    const dk_part *part = arg;
    run_part(part->job, part->start, part->n);
    return NULL;
}
#endif

static int make_job(dk_job *job, int isa, int dtype, const void *x, void *y, const uint8_t *bits_in,
                    const uint8_t *bool_in, uint8_t *bits_out, uint8_t *bool_out, uint64_t seed,
                    uint64_t offset, uint64_t threshold, double scale, uint64_t index0) {
    static const size_t esz[5] = {0, 4, 8, 2, 2};
    job->ops = isa_ops(isa);
    if (!job->ops) return -1;
    if ((x || y) && (dtype < DK_F32 || dtype > DK_F16 || !x || !y)) return -2;
    if (threshold > (UINT64_C(1) << 32)) return -3;
    if (index0 % DK_CHUNK) return -4;
    dk_stream_init(&job->stream, seed, offset, threshold);
    job->dtype = x ? dtype : 0;
    job->esz = esz[job->dtype];
    job->scale = scale;
    job->index0 = index0;
    job->x = x;
    job->y = y;
    job->bits_in = bits_in;
    job->bool_in = bool_in;
    job->bits_out = bits_out;
    job->bool_out = bool_out;
    return 0;
}

/* One job over elements [index0, index0 + n) of a call, on the calling thread. Every pointer
 * addresses element index0 (the bit array: its byte index0 / 8); index0 must be a multiple of
 * 64. Tests use it to check stream positions past 2^32 elements without allocating them.
 * Returns 0, or a negative code for an unavailable ISA (-1), a bad dtype (-2), a threshold
 * above 2^32 (-3) or an unaligned index0 (-4). */
int dk_range(int isa, int dtype, const void *x, void *y, const uint8_t *bits_in, const uint8_t *bool_in,
             uint8_t *bits_out, uint8_t *bool_out, uint64_t seed, uint64_t offset, uint64_t threshold,
             double scale, uint64_t index0, uint64_t n) {
    dk_job job;
    int err = make_job(&job, isa, dtype, x, y, bits_in, bool_in, bits_out, bool_out, seed, offset, threshold,
                       scale, index0);
    if (err) return err;
    run_part(&job, 0, n);
    return 0;
}

/* One job over a whole call of n elements on up to nthreads threads (the caller included).
 * Same arguments and return codes as dk_range with index0 = 0. */
int dk_run(int isa, int dtype, const void *x, void *y, const uint8_t *bits_in, const uint8_t *bool_in,
           uint8_t *bits_out, uint8_t *bool_out, uint64_t seed, uint64_t offset, uint64_t threshold,
           double scale, uint64_t n, int nthreads) {
    enum { MAX_THREADS = 256 };
    dk_job job;
    int err = make_job(&job, isa, dtype, x, y, bits_in, bool_in, bits_out, bool_out, seed, offset, threshold,
                       scale, 0);
    if (err) return err;
    uint64_t useful = n / DK_MIN_PER_THREAD;
    int nt = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    if ((uint64_t)nt > useful) nt = useful ? (int)useful : 1;
    if (nt == 1) {
        run_part(&job, 0, n);
        return 0;
    }
    uint64_t per = (n / (uint64_t)nt + DK_CHUNK - 1) / DK_CHUNK * DK_CHUNK;
    dk_part parts[MAX_THREADS];
    for (int k = 0; k < nt; k++) {
        uint64_t lo = per * (uint64_t)k, hi = k == nt - 1 ? n : per * (uint64_t)(k + 1);
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        parts[k] = (dk_part){&job, lo, hi - lo};
    }
#if defined(_OPENMP)
    /* OpenMP, so that the parts run on the worker threads of the runtime torch already loaded
     * (its libgomp.so.1 satisfies this library's dependency): threads of our own would compete
     * with torch's workers, which keep spinning for a while after each of torch's parallel
     * regions, and on a machine with few cores that doubled the cost of dropout in a model. */
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int k = 0; k < nt; k++) run_part(&job, parts[k].start, parts[k].n);
#else
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS];
    for (int k = 1; k < nt; k++) started[k] = pthread_create(&threads[k], NULL, run_part_thread, &parts[k]) == 0;
    run_part(&job, parts[0].start, parts[0].n);
    for (int k = 1; k < nt; k++) {
        if (started[k])
            pthread_join(threads[k], NULL);
        else
            run_part(&job, parts[k].start, parts[k].n); /* no thread to be had: do its share here */
    }
#endif
    return 0;
}
