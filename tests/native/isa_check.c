/* Checks every SIMD path of the native kernel against its portable C path, byte for byte, on
 * whatever machine (or emulator) it runs: outputs and saved bits for all four dtypes, ragged
 * lengths, thresholds from keep-all to drop-all, seeds and offsets whose counters wrap past
 * 2^32 and 2^64, and inputs drawn as raw bit patterns (NaNs, infinities, subnormals included).
 * The portable path is itself checked against dropkit's reference backend by the Python tests.
 * Prints one line per path and exits non-zero on the first mismatch. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dk_isa_available(int isa);
int dk_range(int isa, int dtype, const void *x, void *y, const uint8_t *bits_in, const uint8_t *bool_in,
             uint8_t *bits_out, uint8_t *bool_out, uint64_t seed, uint64_t offset, uint64_t threshold,
             double scale, uint64_t index0, uint64_t n);
int dk_bcast_apply(int isa, int op, int dtype, const void *x, void *y, const uint8_t *bits, uint64_t nbits, int nd,
                   const int64_t *sizes, const int64_t *xstr, const int64_t *ystr, const int64_t *mstr,
                   double scale, double a, double b, double c, int nthreads);
int dk_dropblock_mask(int isa, uint64_t seed, uint64_t offset, uint64_t threshold, uint64_t nplanes, int nsp,
                      const int64_t *feat, const int64_t *block, uint8_t *keep, int64_t *kept_out, int nthreads);

int dk_normal(int isa, uint64_t seed, uint64_t offset, uint64_t n, int f64, void *out, int nthreads);
int dk_gaussian(int isa, int dtype, const void *x, void *y, uint64_t seed, uint64_t offset, uint64_t n,
                double c, int additive, int nthreads);

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint64_t next(void) { /* splitmix64: test inputs only */
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Broadcast apply (scale-and-zero and alpha) and DropBlock masks of path `isa` against the
 * portable path: (A, B, C) tensors whose mask varies over a random subset of the three dims. */
static int check_bcast(int isa, const char *name) {
    enum { A = 5, B = 37, C = 29 };
    static const size_t esz[5] = {0, 4, 8, 2, 2};
    static uint8_t x[A * B * C * 8], y_ref[A * B * C * 8], y[A * B * C * 8], bits[A * B * C / 8 + 1];
    static uint8_t k_ref[4096], k[4096];
    int failures = 0;
    long cases = 0;
    for (int trial = 0; trial < 96; trial++) {
        int dtype = 1 + trial % 4, op = (trial / 4) % 2, shared = (trial / 8) % 8;
        int64_t sizes[3] = {A, B, C}, xs[3] = {B * C, C, 1}, ms[3];
        int64_t m = 1;
        for (int d = 2; d >= 0; d--) {
            ms[d] = (shared >> d) & 1 ? 0 : m;
            m *= (shared >> d) & 1 ? 1 : sizes[d];
        }
        for (size_t i = 0; i < sizeof x; i++) x[i] = (uint8_t)next();
        for (size_t i = 0; i < sizeof bits; i++) bits[i] = (uint8_t)next();
        memset(y_ref, 0xAB, sizeof y_ref);
        memset(y, 0xCD, sizeof y);
        double s = 1.0 / 0.7, a = 1.2, b = -0.3, c = 0.9;
        if (dk_bcast_apply(0, op, dtype, x, y_ref, bits, (uint64_t)m, 3, sizes, xs, xs, ms, s, a, b, c, 1) ||
            dk_bcast_apply(isa, op, dtype, x, y, bits, (uint64_t)m, 3, sizes, xs, xs, ms, s, a, b, c, 1)) {
            printf("%s: dk_bcast_apply refused a valid call\n", name);
            return 1;
        }
        if (memcmp(y_ref, y, (size_t)(A * B * C) * esz[dtype])) {
            printf("%s: bcast mismatch (dtype %d, op %d, shared %d)\n", name, dtype, op, shared);
            failures++;
        }
        int64_t feat[2] = {7 + trial % 9, 5 + trial % 11}, block[2] = {1 + trial % 7, 1 + trial % 5}, kr, kk;
        if (trial % 4 == 3) { /* rows of two or three 64-bit words, blocks up to 70 wide */
            feat[1] = 60 + trial % 81;
            block[1] = 1 + (trial * 7) % 70;
        }
        if (block[0] > feat[0]) block[0] = feat[0];
        if (block[1] > feat[1]) block[1] = feat[1];
        memset(k_ref, 0, sizeof k_ref);
        memset(k, 0, sizeof k);
        uint64_t seed = next(), offset = next(), thr = 1 + next() % 0x40000000u;
        if (dk_dropblock_mask(0, seed, offset, thr, 9, 2, feat, block, k_ref, &kr, 1) ||
            dk_dropblock_mask(isa, seed, offset, thr, 9, 2, feat, block, k, &kk, 2) || kr != kk ||
            memcmp(k_ref, k, sizeof k)) {
            printf("%s: dropblock mismatch (trial %d)\n", name, trial);
            failures++;
        }
        cases++;
    }
    printf("%s: %ld broadcast and DropBlock cases checked against the portable path\n", name, cases);
    return failures;
}

/* Normals (float32 and float64) and the fused Gaussian kernels (all dtypes, both forms, one and
 * three threads) of path `isa` against the portable path, on ragged lengths and wrapping offsets. */
static int check_noise(int isa, const char *name) {
    enum { N = 5000 };
    static const size_t esz[5] = {0, 4, 8, 2, 2};
    static uint8_t x[N * 8], y_ref[N * 8], y[N * 8];
    int failures = 0;
    long cases = 0;
    for (int trial = 0; trial < 120; trial++) {
        int dtype = 1 + trial % 4, additive = (trial / 4) % 2, threads = 1 + 2 * ((trial / 8) % 2);
        uint64_t n = next() % N, seed = next();
        uint64_t offset = trial % 3 == 0 ? UINT64_MAX - next() % 64 : (trial % 3 == 1 ? 0xFFFFFFF0u : next());
        double c = (double)(next() % 1000) / 300.0;
        for (size_t i = 0; i < sizeof x; i++) x[i] = (uint8_t)next();
        memset(y_ref, 0xAB, sizeof y_ref);
        memset(y, 0xCD, sizeof y);
        if (dk_gaussian(0, dtype, x, y_ref, seed, offset, n, c, additive, 1) ||
            dk_gaussian(isa, dtype, x, y, seed, offset, n, c, additive, threads)) {
            printf("%s: dk_gaussian refused a valid call\n", name);
            return 1;
        }
        if (memcmp(y_ref, y, n * esz[dtype])) {
            printf("%s: gaussian mismatch (dtype %d, additive %d, n %llu)\n", name, dtype, additive,
                   (unsigned long long)n);
            failures++;
        }
        int f64 = trial % 2;
        memset(y_ref, 0xAB, sizeof y_ref);
        memset(y, 0xCD, sizeof y);
        if (dk_normal(0, seed, offset, n, f64, y_ref, 1) || dk_normal(isa, seed, offset, n, f64, y, threads)) {
            printf("%s: dk_normal refused a valid call\n", name);
            return 1;
        }
        if (memcmp(y_ref, y, n * (f64 ? 8 : 4)) || memcmp(y_ref + n * (f64 ? 8 : 4), y + n * (f64 ? 8 : 4), 8) == 0) {
            printf("%s: normal mismatch (f64 %d, n %llu)\n", name, f64, (unsigned long long)n);
            failures++;
        }
        cases++;
    }
    printf("%s: %ld normal and Gaussian cases checked against the portable path\n", name, cases);
    return failures;
}

int main(void) {
    static const char *names[] = {"scalar", "avx2", "avx512", "neon"};
    static const size_t esz[5] = {0, 4, 8, 2, 2};
    static const uint64_t thresholds[] = {0, 1, 429496730, 2147483648u, 4294967295u, 4294967296u};
    enum { N = 1000 };
    static uint8_t x[N * 8], y_ref[N * 8], y[N * 8], b_ref[N / 8 + 1], b[N / 8 + 1];
    int failures = 0;
    for (int isa = 1; isa < 4; isa++) {
        if (!dk_isa_available(isa)) continue;
        long cases = 0;
        for (int trial = 0; trial < 300; trial++) {
            int dtype = 1 + trial % 4;
            uint64_t n = next() % N, seed = next(), index0 = (next() % 4) * 64;
            uint64_t offset = trial % 3 == 0 ? UINT64_MAX - next() % 64 : (trial % 3 == 1 ? 0xFFFFFFF0u : next());
            uint64_t threshold = thresholds[trial % 6];
            double scale = trial % 5 == 0 ? 1.0 : 1.0 / (1.0 - (double)(next() % 1000) / 1000.0);
            for (size_t i = 0; i < sizeof x; i++) x[i] = (uint8_t)next();
            memset(y_ref, 0xAB, sizeof y_ref);
            memset(y, 0xCD, sizeof y);
            memset(b_ref, 0, sizeof b_ref);
            memset(b, 0, sizeof b);
            if (dk_range(0, dtype, x, y_ref, NULL, NULL, b_ref, NULL, seed, offset, threshold, scale, index0, n) ||
                dk_range(isa, dtype, x, y, NULL, NULL, b, NULL, seed, offset, threshold, scale, index0, n)) {
                printf("%s: dk_range refused a valid call\n", names[isa]);
                return 2;
            }
            if (memcmp(y_ref, y, n * esz[dtype]) || memcmp(b_ref, b, (n + 7) / 8)) {
                printf("%s: mismatch (dtype %d, n %llu, seed %llu, offset %llu, threshold %llu)\n", names[isa],
                       dtype, (unsigned long long)n, (unsigned long long)seed, (unsigned long long)offset,
                       (unsigned long long)threshold);
                failures++;
            }
            cases++;
        }
        printf("%s: %ld cases checked against the portable path\n", names[isa], cases);
        failures += check_bcast(isa, names[isa]);
        failures += check_noise(isa, names[isa]);
    }
    return failures ? 1 : 0;
}
