/* DropBlock's keep-mask, built plane by plane with every mask row held as bits.
 *
 * A plane's seed words come from the ISA's generator as keep bits, 64 words to a uint64_t
 * (the same words the element-wise dropout draws). A seed row of the valid grid is then a run of
 * valid[2] consecutive bits: it is read with word shifts and inverted (a word below the
 * threshold, "not kept", is a seed). Dilation along W is an OR of the row shifted by 0 .. b - 1
 * (log2(b) shifts: each doubles the covered span); along H and D it is an OR of whole rows, done
 * by scattering each non-zero row into the b rows it reaches, so that the rare seeds of a small
 * drop rate cost next to nothing. The dropped rows are inverted, counted with popcount and
 * appended to the packed keep-mask through a 64-bit write buffer.
 *
 * Threads take runs of whole planes whose first bit starts a byte, so no two of them write the
 * same byte; each allocates its buffers once. The mask is a pure function of the stream, so
 * the result never depends on the ISA or on how many threads ran. */
#include "dk_common.h"

#include <stdlib.h>

#define DB_MIN_PER_THREAD (1u << 17)
#define DB_MAX_THREADS 256
#define DB_GROUP_WORDS 16384

/* Appends bit runs to a packed bit array, storing 8 bytes at a time; the array starts on a byte. */
typedef struct {
    uint8_t *dst;
    uint64_t acc;
    unsigned n; /* bits held in acc, < 64 */
} bit_writer;

/* Append the low `nbits` (1 .. 64) bits of v; bits of v above them must be 0. */
static inline void put_bits(bit_writer *w, uint64_t v, unsigned nbits) {
    w->acc |= v << w->n;
    unsigned t = w->n + nbits;
    if (t >= 64) {
        memcpy(w->dst, &w->acc, 8);
        w->dst += 8;
        w->acc = w->n ? v >> (64 - w->n) : 0;
        t -= 64;
    }
    w->n = t;
}

static inline void flush_bits(bit_writer *w) { memcpy(w->dst, &w->acc, (w->n + 7) / 8); }

/* `len` bits of words[] from bit `pos` on, into row[0 .. ceil(len / 64)), inverted (seeds),
 * bits past len cleared. */
static void seed_row(const uint64_t *words, uint64_t pos, uint64_t len, uint64_t *row) {
    const uint64_t *src = words + (pos >> 6);
    const unsigned sh = (unsigned)(pos & 63);
    const size_t n = (size_t)((len + 63) >> 6);
    for (size_t j = 0; j < n; j++) {
        /* src[j + 1] exists whenever bits of it are needed; when sh == 0 it is never read */
        uint64_t v = sh ? (src[j] >> sh) | (64 * j + 64 - sh < len ? src[j + 1] << (64 - sh) : 0) : src[j];
        row[j] = ~v;
    }
    if (len & 63) row[n - 1] &= (UINT64_C(1) << (len & 63)) - 1;
}

/* row |= row << s over nw words (bits shifted past the last word are lost). */
static inline void or_shifted(uint64_t *row, size_t nw, uint64_t s) {
    const size_t ws = (size_t)(s >> 6);
    const unsigned bs = (unsigned)(s & 63);
    for (size_t i = nw; i-- > ws;) {
        uint64_t v = row[i - ws] << bs;
        if (bs && i > ws) v |= row[i - ws - 1] >> (64 - bs);
        row[i] |= v;
    }
}

/* row = OR of row << k for k < b: doubling the covered span [0, span) with each shift, then
 * one shift by b - span closes [0, b) (b - span < span). */
static void dilate_row(uint64_t *row, size_t nw, int64_t b) {
    int64_t span = 1;
    for (; 2 * span <= b; span *= 2) or_shifted(row, nw, (uint64_t)span);
    if (span < b) or_shifted(row, nw, (uint64_t)(b - span));
}

static inline int row_nonzero(const uint64_t *row, size_t nw) {
    uint64_t any = 0;
    for (size_t j = 0; j < nw; j++) any |= row[j];
    return any != 0;
}

static inline void or_row(uint64_t *dst, const uint64_t *src, size_t nw) {
    for (size_t j = 0; j < nw; j++) dst[j] |= src[j];
}

/* Bits set in v: the compiler's builtin where the caller is built for popcnt (hw), else SWAR
 * (the builtin would be a library call). */
static inline int64_t popcount(uint64_t v, int hw) {
    if (hw) return __builtin_popcountll(v);
    v -= (v >> 1) & 0x5555555555555555ull;
    v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (int64_t)((v * 0x0101010101010101ull) >> 56);
}

typedef struct {
    dk_stream stream;
    const dk_isa_ops *ops;
    uint64_t nplanes;
    int64_t feat[3], valid[3], block[3]; /* spatial dims, padded in front with 1s to three */
    uint64_t vplane, fplane;             /* seed words and mask elements per plane */
    size_t nw;                           /* uint64_t words per mask row: ceil(feat[2] / 64) */
    uint64_t vmask;                      /* the valid[2] low bits (a seed row when nw == 1) */
    uint8_t *keep;
    uint64_t unit; /* planes per thread are a multiple of this: each thread's bits start on a byte */
    int64_t kept[DB_MAX_THREADS];
    int nt, failed[DB_MAX_THREADS];
} db_job;

typedef struct {
    uint64_t *words; /* seed words as keep bits, chunks c0 .. c1 - 1 */
    uint64_t *row;   /* one seed row, dilated along W */
    uint64_t *hrows; /* (valid[0], feat[1]) rows: dilated along W and H */
    uint64_t *drows; /* (feat[0], feat[1]) rows: dilated along every axis (hrows when block[0] == 1) */
    uint64_t c0, c1;
} db_buffers;

/* Seed words of planes [p0, p1) into B->words; a chunk the previous group ended with is kept
 * rather than drawn again. */
static void draw_words(const db_job *J, db_buffers *B, uint64_t p0, uint64_t p1) {
    const uint64_t c0 = p0 * J->vplane / DK_CHUNK, c1 = (p1 * J->vplane + DK_CHUNK - 1) / DK_CHUNK;
    uint64_t from = c0;
    if (B->c1 > B->c0 && B->c1 - 1 == c0) {
        B->words[0] = B->words[B->c1 - 1 - B->c0];
        from = c0 + 1;
    }
    if (J->stream.keep_all)
        memset(B->words, 0xFF, (size_t)(c1 - c0) * sizeof(uint64_t));
    else if (c1 > from)
        J->ops->gen(&J->stream, from, (size_t)(c1 - from), B->words + (from - c0));
    B->c0 = c0;
    B->c1 = c1;
}

/* The dropped rows of the plane whose seed bits start at bit pos0 of B->words, into B->drows.
 * Each seed row is read with word shifts; the one branch taken per row is "holds a seed". */
static inline __attribute__((always_inline)) void dropped_rows(const db_job *J, db_buffers *B, uint64_t pos0) {
    const int64_t V0 = J->valid[0], V1 = J->valid[1], F0 = J->feat[0], F1 = J->feat[1];
    const int64_t B0 = J->block[0], B1 = J->block[1], B2 = J->block[2];
    const uint64_t V2 = (uint64_t)J->valid[2];
    const size_t nw = J->nw;
    memset(B->hrows, 0, (size_t)(V0 * F1) * nw * sizeof(uint64_t));
    uint64_t pos = pos0;
    if (nw == 1) {
        const uint64_t *words = B->words, vmask = J->vmask;
        for (int64_t d = 0; d < V0; d++) {
            uint64_t *slab = B->hrows + d * F1;
            for (int64_t r = 0; r < V1; r++, pos += V2) {
                /* the word after the row's first is always in the buffer; its bits are cut off
                 * by the mask when the row ends in the first */
                const uint64_t *src = words + (pos >> 6);
                const unsigned sh = (unsigned)(pos & 63);
                uint64_t v = ~((src[0] >> sh) | ((src[1] << 1) << (63 - sh))) & vmask;
                if (!v) continue;
                int64_t span = 1;
                for (; 2 * span <= B2; span *= 2) v |= v << span;
                if (span < B2) v |= v << (B2 - span);
                for (int64_t y = r; y < r + B1; y++) slab[y] |= v;
            }
        }
    } else {
        size_t used = (size_t)((V2 + 63) / 64);
        for (int64_t d = 0; d < V0; d++) {
            uint64_t *slab = B->hrows + (size_t)(d * F1) * nw;
            for (int64_t r = 0; r < V1; r++, pos += V2) {
                seed_row(B->words, pos, V2, B->row);
                memset(B->row + used, 0, (nw - used) * sizeof(uint64_t));
                if (!row_nonzero(B->row, nw)) continue;
                dilate_row(B->row, nw, B2);
                for (int64_t y = r; y < r + B1; y++) or_row(slab + (size_t)y * nw, B->row, nw);
            }
        }
    }
    if (B0 == 1) return;
    memset(B->drows, 0, (size_t)(F0 * F1) * nw * sizeof(uint64_t));
    for (int64_t d = 0; d < V0; d++)
        for (int64_t y = 0; y < F1; y++) {
            const uint64_t *src = B->hrows + (size_t)(d * F1 + y) * nw;
            if (!row_nonzero(src, nw)) continue;
            for (int64_t z = d; z < d + B0; z++) or_row(B->drows + (size_t)(z * F1 + y) * nw, src, nw);
        }
}

/* Thread k's planes. Inlined into two entry points: a portable one, and on x86 one compiled for
 * the bit instructions of every CPU that runs the SIMD paths (popcnt, and BMI2's shifts by a
 * register, which plain x86-64 does in more micro-ops); `hw` says which. */
static inline __attribute__((always_inline)) void build_part(db_job *J, int k, int hw) {
    uint64_t units = (J->nplanes + J->unit - 1) / J->unit;
    uint64_t per = (units + (uint64_t)J->nt - 1) / (uint64_t)J->nt * J->unit;
    uint64_t lo = per * (uint64_t)k, hi = lo + per;
    if (hi > J->nplanes) hi = J->nplanes;
    J->kept[k] = 0;
    if (lo >= hi) return;
    const size_t nw = J->nw;
    const int64_t F2 = J->feat[2];
    const size_t nrows = (size_t)(J->feat[0] * J->feat[1]);
    const size_t hsize = (size_t)(J->valid[0] * J->feat[1]) * nw, dsize = J->block[0] > 1 ? nrows * nw : 0;
    /* planes are drawn DB_GROUP_WORDS words at a time (at least one plane): long generator
     * calls keep the SIMD paths' interleaved rounds busy */
    const uint64_t group = J->vplane < DB_GROUP_WORDS ? DB_GROUP_WORDS / J->vplane : 1;
    db_buffers B = {0};
    B.words = calloc((size_t)(group * J->vplane / DK_CHUNK + 3), sizeof(uint64_t));
    B.row = malloc((nw + hsize + dsize) * sizeof(uint64_t));
    if (!B.words || !B.row) {
        J->failed[k] = 1;
        free(B.words);
        free(B.row);
        return;
    }
    B.hrows = B.row + nw;
    B.drows = dsize ? B.hrows + hsize : B.hrows;
    const unsigned tail = F2 & 63 ? (unsigned)(F2 & 63) : 64;
    const uint64_t last = tail == 64 ? ~UINT64_C(0) : (UINT64_C(1) << tail) - 1;
    bit_writer w = {J->keep + lo * J->fplane / 8, 0, 0};
    int64_t dropped = 0;
    for (uint64_t g = lo; g < hi; g += group) {
        uint64_t gend = hi - g < group ? hi : g + group;
        draw_words(J, &B, g, gend);
        for (uint64_t p = g; p < gend; p++) {
            dropped_rows(J, &B, p * J->vplane - B.c0 * DK_CHUNK);
            const uint64_t *row = B.drows;
            if (nw == 1) {
                for (size_t r = 0; r < nrows; r++) {
                    dropped += popcount(row[r], hw);
                    put_bits(&w, ~row[r] & last, tail);
                }
                continue;
            }
            for (size_t r = 0; r < nrows; r++, row += nw) {
                for (size_t j = 0; j + 1 < nw; j++) {
                    dropped += popcount(row[j], hw);
                    put_bits(&w, ~row[j], 64);
                }
                dropped += popcount(row[nw - 1], hw);
                put_bits(&w, ~row[nw - 1] & last, tail);
            }
        }
    }
    flush_bits(&w);
    J->kept[k] = (int64_t)((hi - lo) * J->fplane) - dropped;
    free(B.words);
    free(B.row);
}

static void dropblock_part(void *ctx, int k) { build_part(ctx, k, 0); }

#if defined(DK_HAVE_X86)
__attribute__((target("popcnt,bmi,bmi2"))) static void dropblock_part_bmi2(void *ctx, int k) {
    build_part(ctx, k, 1);
}
#endif

static int thread_count(uint64_t work, int nthreads) {
    uint64_t useful = work / DB_MIN_PER_THREAD;
    int nt = nthreads < 1 ? 1 : (nthreads > DB_MAX_THREADS ? DB_MAX_THREADS : nthreads);
    if ((uint64_t)nt > useful) nt = useful ? (int)useful : 1;
    return nt;
}

/* DropBlock's keep-mask over nplanes planes of nsp (1 .. 3) spatial dims feat[], blocks block[]
 * (each at most its feat): plane p's seed grid, of valid[d] = feat[d] - block[d] + 1 per dim,
 * uses stream words p * prod(valid) + (row-major position); a position is a seed iff its word
 * is < threshold, and mask element y is dropped iff a seed lies in [y - b + 1, y] on every
 * axis. Writes the packed keep bits to keep[] (bit i of byte i / 8 for mask element i;
 * ceil(nplanes * prod(feat) / 8) bytes, the bits past the last element 0) and *kept_out (the
 * kept count). Returns 0, or -1 (ISA), -3 (threshold above 2^32), -5 (bad sizes), -6 (out of
 * memory). */
int dk_dropblock_mask(int isa, uint64_t seed, uint64_t offset, uint64_t threshold, uint64_t nplanes, int nsp,
                      const int64_t *feat, const int64_t *block, uint8_t *keep, int64_t *kept_out, int nthreads) {
    db_job *J = calloc(1, sizeof(db_job));
    if (!J) return -6;
    J->ops = dk_isa_lookup(isa);
    int err = 0;
    if (!J->ops) err = -1;
    if (threshold > (UINT64_C(1) << 32)) err = -3;
    if (nsp < 1 || nsp > 3) err = -5;
    if (err) {
        free(J);
        return err;
    }
    J->nplanes = nplanes;
    J->keep = keep;
    J->vplane = J->fplane = 1;
    for (int d = 0; d < 3; d++) {
        int s = d - (3 - nsp);
        J->feat[d] = s >= 0 ? feat[s] : 1;
        J->block[d] = s >= 0 ? block[s] : 1;
        if (J->feat[d] < 1 || J->block[d] < 1 || J->block[d] > J->feat[d]) err = -5;
        J->valid[d] = J->feat[d] - J->block[d] + 1;
        J->vplane *= (uint64_t)J->valid[d];
        J->fplane *= (uint64_t)J->feat[d];
    }
    if (err) {
        free(J);
        return err;
    }
    J->nw = (size_t)((J->feat[2] + 63) / 64);
    J->vmask = J->valid[2] >= 64 ? ~UINT64_C(0) : (UINT64_C(1) << J->valid[2]) - 1;

    dk_stream_init(&J->stream, seed, offset, threshold);
    J->unit = 8;
    while (J->unit > 1 && (J->unit / 2 * J->fplane) % 8 == 0) J->unit /= 2;
    J->nt = thread_count(nplanes * J->fplane, nthreads);
    uint64_t units = (nplanes + J->unit - 1) / J->unit;
    if ((uint64_t)J->nt > units) J->nt = units ? (int)units : 1;
    void (*part)(void *ctx, int k) = dropblock_part;
#if defined(DK_HAVE_X86)
    if (isa != DK_ISA_SCALAR && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi2"))
        part = dropblock_part_bmi2;
#endif
    dk_parallel(J->nt, part, J);
    int64_t kept = 0;
    for (int k = 0; k < J->nt; k++) {
        if (J->failed[k]) err = -6;
        kept += J->kept[k];
    }
    *kept_out = kept;
    free(J);
    return err;
}
