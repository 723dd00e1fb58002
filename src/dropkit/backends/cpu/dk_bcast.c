/* Masks with broadcast dimensions.
 *
 * dk_bcast_apply applies a bit-packed keep-mask drawn over a reduced shape (every dim either the
 * input's or 1) to the full tensor in one pass. The caller describes the tensor as a loop nest of
 * up to DK_MAX_DIMS dims (outermost first), each with a size and three strides in elements: the
 * input's, the output's and the mask's (0 where the mask is broadcast). The innermost dim is
 * handled in tiles of DK_TILE elements by the ISA's apply functions: a contiguous run is read
 * and written in place, a strided one gathered to and scattered from a buffer; the tile's mask
 * words are one bit repeated (mask stride 0), a bit-shifted copy of the packed mask (stride 1) or
 * gathered bit by bit. Threads take ranges of the iteration order and write disjoint elements,
 * so the result never depends on how many ran. DropBlock's block masks are built in
 * dk_dropblock.c. */
#include "dk_common.h"

#include <stdlib.h>

#define DK_MAX_DIMS 8
#define DK_TILE 2048
#define DK_MIN_PER_THREAD (1u << 17)
#define DK_MAX_THREADS 256

enum { DK_OP_SCALE = 0, DK_OP_ALPHA = 1 };

typedef struct {
    const dk_isa_ops *ops;
    int op, dtype, nd, nt;
    size_t esz;
    const char *x;
    char *y;
    const uint8_t *bits;
    uint64_t nbits;
    int64_t size[DK_MAX_DIMS], xs[DK_MAX_DIMS], ys[DK_MAX_DIMS], ms[DK_MAX_DIMS];
    double scale, a, b, c;
    uint64_t total, per;
} bc_job;

static inline unsigned bit_at(const uint8_t *bits, uint64_t pos) { return (bits[pos >> 3] >> (pos & 7)) & 1u; }

/* The 64 mask bits starting at bit `pos` (bits at or past nbits read as 0). */
static inline uint64_t bits64_at(const uint8_t *bits, uint64_t nbits, uint64_t pos) {
    if (pos >= nbits) return 0;
    if ((pos & 7) == 0 && nbits - pos >= 64) { /* whole bytes: one load (rows of a mask start here) */
        uint64_t v;
        memcpy(&v, bits + (pos >> 3), 8);
        return v;
    }
    uint64_t byte = pos >> 3, nbytes = (nbits + 7) >> 3;
    unsigned sh = (unsigned)(pos & 7);
    uint8_t tmp[9] = {0};
    size_t avail = nbytes - byte < 9 ? (size_t)(nbytes - byte) : 9;
    memcpy(tmp, bits + byte, avail);
    uint64_t lo;
    memcpy(&lo, tmp, 8);
    uint64_t v = lo >> sh;
    if (sh) v |= (uint64_t)tmp[8] << (64 - sh);
    if (nbits - pos < 64) v &= (UINT64_C(1) << (nbits - pos)) - 1;
    return v;
}

/* The tile's mask words of columns [t, t + m) of a row whose mask starts at bit mo with stride sm:
 * one bit repeated (sm == 0), a bit-shifted copy of the packed mask (sm == 1) or gathered bit by
 * bit. */
static void tile_masks(const bc_job *J, uint64_t *masks, int64_t mo, int64_t sm, uint64_t t, size_t m) {
    size_t nch = (m + DK_CHUNK - 1) / DK_CHUNK;
    if (sm == 0) {
        memset(masks, bit_at(J->bits, (uint64_t)mo) ? 0xFF : 0, nch * sizeof(uint64_t));
    } else if (sm == 1) {
        for (size_t k = 0; k < nch; k++) masks[k] = bits64_at(J->bits, J->nbits, (uint64_t)mo + t + 64 * k);
    } else {
        memset(masks, 0, nch * sizeof(uint64_t));
        for (size_t i = 0; i < m; i++)
            masks[i >> 6] |= (uint64_t)bit_at(J->bits, (uint64_t)(mo + (int64_t)(t + i) * sm)) << (i & 63);
    }
}

static inline void apply_tile(const bc_job *J, const char *x, char *y, const uint64_t *masks, size_t m) {
    if (J->op == DK_OP_SCALE)
        J->ops->apply[J->dtype](x, y, masks, m, J->scale);
    else
        J->ops->alpha[J->dtype](x, y, masks, m, J->a, J->b, J->c);
}

/* run_segment for a row that x or y holds with a stride: each tile gathered to and scattered
 * from buffers. Kept apart so that the contiguous path's stack frame stays small (a frame of
 * tens of KiB is probed page by page on every call where stack-clash protection is on). */
static void run_segment_strided(const bc_job *J, int64_t xo, int64_t yo, int64_t mo, uint64_t j0, uint64_t j1) {
    const int last = J->nd - 1;
    const int64_t sx = J->xs[last], sy = J->ys[last], sm = J->ms[last];
    const size_t esz = J->esz;
    uint64_t masks[DK_TILE / DK_CHUNK];
    _Alignas(64) char xt[DK_TILE * 8];
    _Alignas(64) char yt[DK_TILE * 8];
    for (uint64_t t = j0; t < j1; t += DK_TILE) {
        size_t m = (size_t)(j1 - t < DK_TILE ? j1 - t : DK_TILE);
        const char *xp = J->x + (xo + (int64_t)t * sx) * (int64_t)esz;
        char *yp = J->y + (yo + (int64_t)t * sy) * (int64_t)esz;
        tile_masks(J, masks, mo, sm, t, m);
        const char *xin = xp;
        char *yout = sy == 1 ? yp : yt;
        if (sx != 1) {
            for (size_t i = 0; i < m; i++) memcpy(xt + i * esz, xp + (int64_t)i * sx * (int64_t)esz, esz);
            xin = xt;
        }
        apply_tile(J, xin, yout, masks, m);
        if (sy != 1)
            for (size_t i = 0; i < m; i++) memcpy(yp + (int64_t)i * sy * (int64_t)esz, yt + i * esz, esz);
    }
}

/* Columns [j0, j1) of one row of the innermost dim; the row starts at element offsets xo, yo of
 * x and y and at mask bit mo. A contiguous run is read and written in place. */
static void run_segment(const bc_job *J, int64_t xo, int64_t yo, int64_t mo, uint64_t j0, uint64_t j1) {
    const int last = J->nd - 1;
    const int64_t sm = J->ms[last];
    if (J->xs[last] != 1 || J->ys[last] != 1) {
        run_segment_strided(J, xo, yo, mo, j0, j1);
        return;
    }
    const size_t esz = J->esz;
    uint64_t masks[DK_TILE / DK_CHUNK];
    for (uint64_t t = j0; t < j1; t += DK_TILE) {
        size_t m = (size_t)(j1 - t < DK_TILE ? j1 - t : DK_TILE);
        const char *xp = J->x + (xo + (int64_t)t) * (int64_t)esz;
        char *yp = J->y + (yo + (int64_t)t) * (int64_t)esz;
        if (sm == 0 && J->op == DK_OP_SCALE && !bit_at(J->bits, (uint64_t)mo)) {
            memset(yp, 0, m * esz); /* +0.0 in every dtype */
            continue;
        }
        tile_masks(J, masks, mo, sm, t, m);
        apply_tile(J, xp, yp, masks, m);
    }
}

/* Whether rows of the innermost dim share one mask bit each (mask stride 0 along the row) and
 * lie end to end in x and y, short enough that several fit in a tile: Dropout1d's rows of L,
 * Dropout2d's planes of H * W, DropPath's samples. Such rows are run a tile of rows at a time. */
static int constant_rows(const bc_job *J) {
    if (J->nd < 2) return 0;
    const int last = J->nd - 1;
    const int64_t len = J->size[last];
    return J->xs[last] == 1 && J->ys[last] == 1 && J->ms[last] == 0 && J->xs[last - 1] == len &&
           J->ys[last - 1] == len && len <= DK_TILE / 2;
}

/* nrows whole rows from element offsets xo, yo, row r's keep bit at mask bit mo + r * ms[last - 1]:
 * each tile of DK_TILE / len rows is one apply call, its mask words set row by row. */
static void run_constant_rows(const bc_job *J, int64_t xo, int64_t yo, int64_t mo, uint64_t nrows) {
    const int last = J->nd - 1;
    const uint64_t len = (uint64_t)J->size[last], per_tile = DK_TILE / len;
    const int64_t step = J->ms[last - 1];
    const size_t esz = J->esz;
    if (len >= DK_CHUNK) { /* long rows: runs of kept rows scaled, runs of dropped rows zeroed */
        static const uint64_t ones[DK_TILE / DK_CHUNK] = {
            ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0),
            ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0),
            ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0),
            ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0),
            ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0), ~UINT64_C(0)};
        static const uint64_t zeros[DK_TILE / DK_CHUNK];
        uint64_t r = 0;
        while (r < nrows) {
            const unsigned keep = bit_at(J->bits, (uint64_t)(mo + (int64_t)r * step));
            uint64_t end = r + 1;
            while (end < nrows && bit_at(J->bits, (uint64_t)(mo + (int64_t)end * step)) == keep) end++;
            const char *xp = J->x + (xo + (int64_t)(r * len)) * (int64_t)esz;
            char *yp = J->y + (yo + (int64_t)(r * len)) * (int64_t)esz;
            const uint64_t n = (end - r) * len;
            if (!keep && J->op == DK_OP_SCALE) {
                memset(yp, 0, (size_t)n * esz); /* +0.0 in every dtype */
            } else {
                for (uint64_t t = 0; t < n; t += DK_TILE) {
                    const size_t m = (size_t)(n - t < DK_TILE ? n - t : DK_TILE);
                    apply_tile(J, xp + (int64_t)t * (int64_t)esz, yp + (int64_t)t * (int64_t)esz, keep ? ones : zeros, m);
                }
            }
            r = end;
        }
        return;
    }
    /* Short rows: a tile's mask words built row by row, each row's run of len < 64 ones landing in
     * one word or across two; the rows' keep bits read 64 at a time when they are consecutive. */
    const uint64_t run = (UINT64_C(1) << len) - 1;
    uint64_t masks[DK_TILE / DK_CHUNK + 1];
    for (uint64_t r = 0; r < nrows; r += per_tile) {
        uint64_t rows = nrows - r < per_tile ? nrows - r : per_tile;
        size_t m = (size_t)(rows * len);
        memset(masks, 0, ((m + 63) / 64 + 1) * sizeof(uint64_t));
        uint64_t keep = 0;
        for (uint64_t i = 0; i < rows; i++) {
            if (step == 1) {
                if ((i & 63) == 0) keep = bits64_at(J->bits, J->nbits, (uint64_t)mo + r + i);
                if (!((keep >> (i & 63)) & 1u)) continue;
            } else if (!bit_at(J->bits, (uint64_t)(mo + (int64_t)(r + i) * step))) {
                continue;
            }
            const uint64_t at = i * len, b = at & 63;
            masks[at >> 6] |= run << b;
            if (b + len > 64) masks[(at >> 6) + 1] |= run >> (64 - b);
        }
        const int64_t at = (int64_t)(r * len) * (int64_t)esz;
        apply_tile(J, J->x + xo * (int64_t)esz + at, J->y + yo * (int64_t)esz + at, masks, m);
    }
}

/* Whether whole rows of the innermost dim can be run as one contiguous stretch with a periodic
 * mask: rows of len elements lying end to end in x and y (the next dim's strides are len), the
 * mask varying along the row but not across rows (channels_last with a per-channel mask). */
static int periodic_rows(const bc_job *J) {
    if (J->nd < 2) return 0;
    const int last = J->nd - 1;
    const int64_t len = J->size[last];
    return J->xs[last] == 1 && J->ys[last] == 1 && J->ms[last] == 1 && J->ms[last - 1] == 0 &&
           J->xs[last - 1] == len && J->ys[last - 1] == len && len <= DK_TILE / 2;
}

/* nrows whole rows starting at element offsets xo, yo, the row's mask starting at bit mo: the
 * row's mask bits are laid out rows_per_tile times in a row, once, and each tile of that many
 * rows is one apply call. */
static void run_periodic(const bc_job *J, int64_t xo, int64_t yo, int64_t mo, uint64_t nrows) {
    const uint64_t len = (uint64_t)J->size[J->nd - 1], per_tile = DK_TILE / len;
    uint64_t masks[DK_TILE / DK_CHUNK + 1];
    memset(masks, 0, sizeof masks);
    for (uint64_t r = 0; r < per_tile; r++) {
        for (uint64_t k = 0; k < len; k += 64) {
            uint64_t pos = r * len + k, w = bits64_at(J->bits, J->nbits, (uint64_t)mo + k);
            if (len - k < 64) w &= (UINT64_C(1) << (len - k)) - 1;
            masks[pos >> 6] |= w << (pos & 63);
            if (pos & 63) masks[(pos >> 6) + 1] |= w >> (64 - (pos & 63));
        }
    }
    const size_t esz = J->esz;
    for (uint64_t r = 0; r < nrows; r += per_tile) {
        size_t m = (size_t)((nrows - r < per_tile ? nrows - r : per_tile) * len);
        const char *xp = J->x + (xo + (int64_t)(r * len)) * (int64_t)esz;
        char *yp = J->y + (yo + (int64_t)(r * len)) * (int64_t)esz;
        apply_tile(J, xp, yp, masks, m);
    }
}

/* Elements [lo, hi) of the iteration order (row-major over the loop nest). */
static void run_range(const bc_job *J, uint64_t lo, uint64_t hi) {
    if (lo >= hi) return;
    const int last = J->nd - 1;
    const uint64_t len = (uint64_t)J->size[last];
    int64_t idx[DK_MAX_DIMS] = {0};
    uint64_t row = lo / len, j = lo % len;
    for (int d = last - 1; d >= 0; d--) {
        idx[d] = (int64_t)(row % (uint64_t)J->size[d]);
        row /= (uint64_t)J->size[d];
    }
    uint64_t pos = lo;
    const int periodic = periodic_rows(J), constant = constant_rows(J);
    while (pos < hi) {
        int64_t xo = 0, yo = 0, mo = 0;
        for (int d = 0; d < last; d++) {
            xo += idx[d] * J->xs[d];
            yo += idx[d] * J->ys[d];
            mo += idx[d] * J->ms[d];
        }
        if ((periodic || constant) && j == 0 && hi - pos >= 2 * len) { /* whole rows, to the end of dim last - 1 */
            uint64_t rows = (uint64_t)(J->size[last - 1] - idx[last - 1]), fit = (hi - pos) / len;
            if (rows > fit) rows = fit;
            if (periodic)
                run_periodic(J, xo, yo, mo, rows);
            else
                run_constant_rows(J, xo, yo, mo, rows);
            pos += rows * len;
            idx[last - 1] += (int64_t)rows - 1; /* the last of them; the carry below moves past it */
        } else {
            uint64_t end = len - j < hi - pos ? len : j + (hi - pos);
            run_segment(J, xo, yo, mo, j, end);
            pos += end - j;
            j = 0;
        }
        for (int d = last - 1; d >= 0; d--) { /* next row */
            if (++idx[d] < J->size[d]) break;
            idx[d] = 0;
        }
    }
}

static void bcast_part(void *ctx, int k) {
    const bc_job *J = ctx;
    uint64_t lo = J->per * (uint64_t)k, hi = k == J->nt - 1 ? J->total : J->per * (uint64_t)(k + 1);
    if (lo > J->total) lo = J->total;
    if (hi > J->total) hi = J->total;
    run_range(J, lo, hi);
}

static int thread_count(uint64_t work, int nthreads) {
    uint64_t useful = work / DK_MIN_PER_THREAD;
    int nt = nthreads < 1 ? 1 : (nthreads > DK_MAX_THREADS ? DK_MAX_THREADS : nthreads);
    if ((uint64_t)nt > useful) nt = useful ? (int)useful : 1;
    return nt;
}

/* y = keep ? x * scale : +0.0 (op 0) or keep ? x * a + b : c (op 1) over a loop nest of nd dims
 * (sizes, and the strides of x, y and the mask in elements), the keep bit of an element being
 * bit sum(index[d] * mstr[d]) of `bits` (nbits bits). Returns 0, or -1 (ISA not available), -2
 * (bad dtype), -5 (bad op or nd outside 1 .. DK_MAX_DIMS). */
int dk_bcast_apply(int isa, int op, int dtype, const void *x, void *y, const uint8_t *bits, uint64_t nbits, int nd,
                   const int64_t *sizes, const int64_t *xstr, const int64_t *ystr, const int64_t *mstr,
                   double scale, double a, double b, double c, int nthreads) {
    static const size_t esz[5] = {0, 4, 8, 2, 2};
    bc_job J;
    J.ops = dk_isa_lookup(isa);
    if (!J.ops) return -1;
    if (dtype < DK_F32 || dtype > DK_F16) return -2;
    if ((op != DK_OP_SCALE && op != DK_OP_ALPHA) || nd < 1 || nd > DK_MAX_DIMS) return -5;
    J.op = op;
    J.dtype = dtype;
    J.nd = nd;
    J.esz = esz[dtype];
    J.x = x;
    J.y = y;
    J.bits = bits;
    J.nbits = nbits;
    J.total = 1;
    for (int d = 0; d < nd; d++) {
        J.size[d] = sizes[d];
        J.xs[d] = xstr[d];
        J.ys[d] = ystr[d];
        J.ms[d] = mstr[d];
        J.total *= (uint64_t)sizes[d];
    }
    if (J.total == 0) return 0;
    J.scale = scale;
    J.a = a;
    J.b = b;
    J.c = c;
    J.nt = thread_count(J.total, nthreads);
    J.per = (J.total + (uint64_t)J.nt - 1) / (uint64_t)J.nt;
    dk_parallel(J.nt, bcast_part, &J);
    return 0;
}

/* dk_bcast_apply after drawing its mask: the nbits stream words from (seed, offset) compared with
 * threshold fill bits (and bools, when not NULL) as dk_run's mask-only mode fills them. One call
 * where a layer would otherwise make two; same return codes, and those of dk_run. With bits NULL
 * the mask lives in a buffer of this call (a backward that draws its mask again keeps none);
 * -6 if that buffer cannot be had. */
int dk_bcast_draw_apply(int isa, int op, int dtype, const void *x, void *y, uint8_t *bits, uint8_t *bools,
                        uint64_t seed, uint64_t offset, uint64_t threshold, uint64_t nbits, int nd,
                        const int64_t *sizes, const int64_t *xstr, const int64_t *ystr, const int64_t *mstr,
                        double scale, double a, double b, double c, int nthreads) {
    enum { LOCAL_BYTES = 1024 };
    uint8_t local[LOCAL_BYTES];
    uint8_t *own = NULL;
    if (!bits) {
        size_t nbytes = (size_t)((nbits + 7) / 8);
        bits = nbytes <= LOCAL_BYTES ? local : (own = malloc(nbytes ? nbytes : 1));
        if (!bits) return -6;
    }
    int err = 0;
    if (nbits)
        err = dk_run(isa, 0, NULL, NULL, NULL, NULL, bits, bools, seed, offset, threshold, 0.0, nbits, nthreads);
    if (!err)
        err = dk_bcast_apply(isa, op, dtype, x, y, bits, nbits, nd, sizes, xstr, ystr, mstr, scale, a, b, c,
                             nthreads);
    free(own);
    return err;
}
