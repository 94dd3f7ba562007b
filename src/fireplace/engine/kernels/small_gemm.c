/*
 * Dense fp32 linear layer for decode-sized batches on CPU, reading the weight as PyTorch
 * stores it (no packed copy of the weight is made, in memory or per call):
 *
 *   x     [M, K]  fp32, row stride ldx >= K, unit column stride (M: tokens of a decode step)
 *   w     [N, K]  fp32, row-major contiguous (nn.Linear layout)
 *   bias  [N]     fp32, or NULL
 *   y     [M, N]  fp32, row stride ldy >= N, unit column stride; may be a column slice of a
 *                 wider matrix: only its M x N elements are written
 *
 *   y[m, n] = sum_k x[m, k] * w[n, k]  (+ bias[n])
 *
 * Each y element is one fp32 FMA chain over k in order (then + bias): a token's outputs are
 * the same bits whatever the thread count, the batch size M or the token's row in the batch.
 *
 * Why: at M = 16..128 (one token per running sequence) and these shapes (K = 576 or 1536,
 * N = 192..49152), MKL's sgemm ran at 35-105 GFLOP/s on a 2-core Zen 3 (FMA peak ~190) and
 * gained little from the second core (o_proj at M = 64: 62 -> 69 GFLOP/s); this kernel ran at
 * 60-150 GFLOP/s there (bench/small_gemm_kernel.py).
 *
 * Scheme. x is the small operand: it is packed, transposed, once per call into xp, in
 * m-blocks of MR = 16 rows: xp[b][k][i] = x[16 b + i, k] (zeros past M; a last block of at
 * most 8 rows is 8 wide). A tile computes y[16 m x NR n] (NR = 6 weight rows) in 12 AVX2
 * accumulators acc[r][h] = y[16 b + 8 h .. + 8, n0 + r]:
 *
 *   for k:  xa, xb = xp[b][k][0:8], xp[b][k][8:16]                  2 vector loads
 *           for r < 6:  s = broadcast(w[n0 + r, k])                  6 broadcast loads
 *                       acc[r][0] += s * xa;  acc[r][1] += s * xb    12 FMAs
 *
 * 12 FMAs per 8 loads keeps the two FMA pipes of a Zen 3 / Haswell-class core busy (12
 * independent chains cover the FMA latency), with 15 of the 16 ymm registers in use. The
 * weight rows are read in k order, 4 bytes per step each. At the end the 6 x 16 tile is
 * transposed in registers into 16 rows of 6 contiguous outputs.
 *
 * One to four tokens (THIN_MAX_M) take the thin path instead (below, before compute_groups):
 * no packing, lanes across 8 weight rows, the same FMA chain per output.
 *
 * Loop order: each thread takes a contiguous range of 6-row weight groups; for each group, all
 * m-blocks. A group (6 x K floats: 13.8 KB at K = 576) comes from memory once, in the first
 * m-block, and is reused from L1/L2 by the others, while xp (M x K floats: 147 KB at M = 64,
 * K = 576) stays in L2. So every weight element is read from memory once per call and used for
 * all M rows, and the two threads stream disjoint halves of the weight. The hardware
 * prefetchers do not run far enough ahead of 6 streams consumed 4 bytes at a time (measured:
 * 70-75% of the speed at M = 16 without help), so the first m-block of a group prefetches the
 * next group's rows, one cache line of each per 16 k steps.
 *
 * Threads: OpenMP on torch's own pool (its libgomp.so.1 is the one our DT_NEEDED resolves to;
 * see paged_decode.c). The threads first pack disjoint k-ranges of xp, meet at a barrier,
 * then compute their weight groups. Calls with less than WORK_PER_THREAD multiply-adds per
 * thread use fewer threads.
 *
 * xp lives in a buffer owned by the calling thread, grown as needed and kept for the next call
 * (M x K floats rounded up to 16 rows: 295 KB at M = 128, K = 576), freed when that thread
 * exits: a fresh allocation per call would be mmap'ed and page-faulted each time. An x larger
 * than KEEP_FLOATS (prefill-sized) gets a buffer of its own, freed before returning.
 *
 * Without AVX2/FMA (compile-time check) a portable path computes the same sums with plain C
 * loops, each a dot product in 8 partial sums: correct, not fast (fp_linear_uses_avx2() tells
 * callers which path they have), and its results may differ from the AVX2 path in the last bits.
 * Built with -O3 -march=native and without -ffast-math (see cpu_build).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FP_USE_AVX2 1
#else
#define FP_USE_AVX2 0
#endif

/* Return codes, mirrored in small_gemm.py. */
enum { FP_OK = 0, FP_ERR_ARGS = 1, FP_ERR_NO_MEMORY = 2 };

#define MR 16      /* x rows (tokens) per tile: two 8-float vectors */
#define NR 6       /* weight rows (outputs) per tile */
#define K_UNROLL 16 /* k steps per prefetch round: one 64-byte line of each weight row */
/* Multiply-adds per thread at least. Handing work to a second thread costs a few microseconds
   (its wake-up and the barrier), ~300k multiply-adds at this kernel's speed. */
#define WORK_PER_THREAD 262144
#define MAX_THREADS 256
/* The thin path (M <= THIN_MAX_M tokens, see thin_rows): a thread takes at least this many
   weights, ~15 us of one core's memory stream (it is bound by the weight's bytes, not FMAs). */
#define THIN_MAX_M 4
#define THIN_WEIGHTS_PER_THREAD 65536
/* Largest packed x kept in the calling thread's buffer between calls: 4 MB (M = 256 at
   K = 1536 is 1.5 MB). */
#define KEEP_FLOATS ((size_t)1 << 20)

#if FP_USE_AVX2
/* ---- the calling thread's buffer for the packed x ------------------------------------------ */

typedef struct {
    float *data; /* 64-byte aligned */
    size_t cap;  /* in floats */
} pack_buffer_t;

static pthread_key_t buffer_key;
static pthread_once_t buffer_key_once = PTHREAD_ONCE_INIT;
static int buffer_key_error;

static void free_buffer(void *p) {
    pack_buffer_t *buf = p;
    free(buf->data);
    free(buf);
}

static void create_buffer_key(void) { buffer_key_error = pthread_key_create(&buffer_key, free_buffer); }

/* The calling thread's buffer with room for n floats, or NULL when out of memory. */
static float *thread_buffer(size_t n) {
    if (pthread_once(&buffer_key_once, create_buffer_key) != 0 || buffer_key_error != 0)
        return NULL;
    pack_buffer_t *buf = pthread_getspecific(buffer_key);
    if (buf == NULL) {
        if ((buf = calloc(1, sizeof *buf)) == NULL)
            return NULL;
        if (pthread_setspecific(buffer_key, buf) != 0) {
            free(buf);
            return NULL;
        }
    }
    if (n > buf->cap) {
        void *grown = NULL;
        if (posix_memalign(&grown, 64, n * sizeof(float)) != 0)
            return NULL;
        free(buf->data);
        buf->data = grown;
        buf->cap = n;
    }
    return buf->data;
}

/* ---- packing x ------------------------------------------------------------------------------ */

/* Rows in m-block b (1..MR) and its packed width: MR, or 8 for a last block of <= 8 rows. */
static inline int64_t block_rows(int64_t M, int64_t b) {
    const int64_t rows = M - b * MR;
    return rows < MR ? rows : MR;
}
static inline int64_t block_width(int64_t rows) { return rows > 8 ? MR : 8; }

/* In-register transpose of 8 vectors: on return v[j][i] holds the input v[i][j]. */
static inline void transpose8(__m256 v[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);     /* v0[0] v1[0] v0[1] v1[1] | [4],[5] */
        t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]); /* v0[2] v1[2] v0[3] v1[3] | [6],[7] */
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);     /* rows 4i..4i+3, lanes 0 | 4 */
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE); /* lanes 1 | 5 */
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44); /* lanes 2 | 6 */
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE); /* lanes 3 | 7 */
    }
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);     /* lane j of rows 0..7 */
        v[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31); /* lane j + 4 */
    }
}

/* xp[b][k][i] = x[b * MR + i, k] for every m-block b, k in [k0, k1), zeros for rows past M.
   A block of width w holds [K][w]; block b starts at xp + b * MR * K. */
static void pack_x(const float *restrict x, int64_t ldx, int64_t M, int64_t K, int64_t k0, int64_t k1,
                   float *restrict xp) {
    const int64_t blocks = (M + MR - 1) / MR;
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t rows = block_rows(M, b), width = block_width(rows);
        float *restrict dst = xp + b * MR * K;
        const float *src = x + b * MR * ldx;
        for (int64_t i0 = 0; i0 < width; i0 += 8) {
            int64_t k = k0;
            if (i0 + 8 <= rows) /* 8 full rows: 8 x 8 blocks transposed in registers */
                for (; k + 8 <= k1; k += 8) {
                    __m256 v[8];
                    for (int i = 0; i < 8; i++)
                        v[i] = _mm256_loadu_ps(src + (i0 + i) * ldx + k);
                    transpose8(v);
                    for (int j = 0; j < 8; j++)
                        _mm256_storeu_ps(dst + (k + j) * width + i0, v[j]);
                }
            for (; k < k1; k++)
                for (int64_t i = i0; i < i0 + 8; i++)
                    dst[k * width + i] = i < rows ? src[i * ldx + k] : 0.0f;
        }
    }
}

/* ---- the tile kernel ------------------------------------------------------------------------ */

/* y[i, 0:6] = a_r[i] for i < 8 (row stride ldy): the 6 column vectors, padded with two zero
   vectors to 8 x 8, transposed in registers; lanes 0..5 of each row stored as 4 + 2 floats. */
static inline void store_rows8(float *y, int64_t ldy, __m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4,
                               __m256 a5) {
    __m256 v[8] = {a0, a1, a2, a3, a4, a5, _mm256_setzero_ps(), _mm256_setzero_ps()};
    transpose8(v);
    for (int i = 0; i < 8; i++) {
        _mm_storeu_ps(y + i * ldy, _mm256_castps256_ps128(v[i]));
        _mm_storel_pi((__m64 *)(y + i * ldy + 4), _mm256_extractf128_ps(v[i], 1));
    }
}

/*
 * y[0:mvalid, 0:nvalid] (row stride ldy) = xblock @ w[0:nvalid]^T (+ bias[0:nvalid]), where
 * xblock is a packed m-block [K][8 * H] (H = 2: 16 rows, H = 1: 8 rows) and w holds nvalid <= 6
 * rows of K floats. Missing weight rows repeat the last valid one (computed, never stored), so
 * nothing past w is read. Prefetches the lines pf_dist floats past each weight row's current
 * position (pf_dist = 6 K: the next group's rows; 0: the current lines, a no-op).
 */
static inline __attribute__((always_inline)) void tile(const float *restrict xblock, const float *restrict w,
                                                       int64_t K, const float *restrict bias, float *restrict y,
                                                       int64_t ldy, int64_t mvalid, int64_t nvalid,
                                                       int64_t pf_dist, const int H) {
    __m256 acc[NR][2];
    for (int r = 0; r < NR; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float *wr[NR];
    for (int r = 0; r < NR; r++)
        wr[r] = w + (r < nvalid ? r : nvalid - 1) * K;

#define FP_STEP(kk)                                                                                 \
    do {                                                                                            \
        const __m256 xa = _mm256_load_ps(xblock + (kk) * 8 * H);                                   \
        const __m256 xb = H == 2 ? _mm256_load_ps(xblock + (kk) * 8 * H + 8) : xa;                 \
        for (int r = 0; r < NR; r++) {                                                              \
            const __m256 s = _mm256_broadcast_ss(wr[r] + (kk));                                     \
            acc[r][0] = _mm256_fmadd_ps(s, xa, acc[r][0]);                                          \
            if (H == 2)                                                                             \
                acc[r][1] = _mm256_fmadd_ps(s, xb, acc[r][1]);                                      \
        }                                                                                           \
    } while (0)

    int64_t k = 0;
    for (; k + K_UNROLL <= K; k += K_UNROLL) {
        for (int r = 0; r < NR; r++)
            _mm_prefetch((const char *)(wr[r] + k + pf_dist), _MM_HINT_T0);
        for (int u = 0; u < K_UNROLL; u++)
            FP_STEP(k + u);
    }
    for (; k < K; k++)
        FP_STEP(k);
#undef FP_STEP

    if (bias != NULL)
        for (int r = 0; r < NR; r++) {
            const __m256 bv = _mm256_set1_ps(bias[r < nvalid ? r : nvalid - 1]);
            acc[r][0] = _mm256_add_ps(acc[r][0], bv);
            acc[r][1] = _mm256_add_ps(acc[r][1], bv);
        }

    if (nvalid == NR && mvalid == 8 * H) {
        /* Full tile: each 8 (m) x 6 (n) half goes to 8 rows of y (constant indices only, so
           that the accumulators stay in registers). */
        store_rows8(y, ldy, acc[0][0], acc[1][0], acc[2][0], acc[3][0], acc[4][0], acc[5][0]);
        if (H == 2)
            store_rows8(y + 8 * ldy, ldy, acc[0][1], acc[1][1], acc[2][1], acc[3][1], acc[4][1], acc[5][1]);
    } else {
        /* Edge tile (last rows or last weight rows): through memory, element by element. */
        float t[NR][MR] __attribute__((aligned(32)));
        for (int r = 0; r < NR; r++) {
            _mm256_store_ps(&t[r][0], acc[r][0]);
            _mm256_store_ps(&t[r][8], acc[r][1]);
        }
        for (int64_t i = 0; i < mvalid; i++)
            for (int64_t r = 0; r < nvalid; r++)
                y[i * ldy + r] = t[r][i];
    }
}

/* ---- the thin path: M <= THIN_MAX_M tokens ---------------------------------------------------
 *
 * With one to four tokens the m-block tile above leaves most of each 8-float x vector empty and
 * issues a broadcast and an FMA per weight. Here the lanes hold outputs instead of tokens: 8
 * weight rows x 8 k are loaded as 8 vectors and transposed in registers (transpose8), so vector
 * j holds w[n0 .. n0 + 8, k + j], and each token's accumulator gets 8 FMAs with x[m, k + j]
 * broadcast, in k order. So every output is still one FMA chain over k in order from zero, then
 * + bias: the same bits as the tile path, at any M and in any row range (batch invariance holds
 * across the switch). Per 64 weights: 8 loads, 24 shuffles, 8 FMAs per token. The next 8 rows
 * are prefetched, one line of each per 16 k. Measured on a 2-core AVX-512 Xeon VM at one token
 * (2 threads, 30 matrices streamed): gate/up 576 -> 3072 7.4 ms vs the tile path's 9.3 and MKL
 * sgemv's 7.1; down_proj 2.4 vs 3.6 and 2.2. More rows in flight (16, 32) or prefetching
 * further ahead ran slower there: the rows are 2.3 KB (K = 576) to 6 KB long, and more streams
 * than that left the prefetched lines evicted before use.
 */
static inline __attribute__((always_inline)) void thin_tile(const float *restrict x, int64_t ldx,
                                                            const float *restrict w, int64_t K,
                                                            const float *restrict bias, float *restrict y,
                                                            int64_t ldy, int64_t n0, int64_t nvalid,
                                                            int64_t pf_dist, const int M) {
    __m256 acc[THIN_MAX_M];
    const float *wr[8];
    for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    for (int i = 0; i < 8; i++) wr[i] = w + (n0 + (i < nvalid ? i : nvalid - 1)) * K; /* missing rows: the last */
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if ((k & 15) == 0)
            for (int i = 0; i < 8; i++) _mm_prefetch((const char *)(wr[i] + k + pf_dist), _MM_HINT_T0);
        __m256 v[8];
        for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(wr[i] + k);
        transpose8(v);
        for (int j = 0; j < 8; j++)
            for (int m = 0; m < M; m++) acc[m] = _mm256_fmadd_ps(v[j], _mm256_broadcast_ss(x + m * ldx + k + j), acc[m]);
    }
    for (; k < K; k++) { /* K % 8 last steps: the 8 rows' weights gathered one by one */
        const __m256 v = _mm256_setr_ps(wr[0][k], wr[1][k], wr[2][k], wr[3][k], wr[4][k], wr[5][k], wr[6][k], wr[7][k]);
        for (int m = 0; m < M; m++) acc[m] = _mm256_fmadd_ps(v, _mm256_broadcast_ss(x + m * ldx + k), acc[m]);
    }
    __m256 bv = _mm256_setzero_ps();
    if (bias != NULL) {
        float b8[8];
        for (int i = 0; i < 8; i++) b8[i] = bias[n0 + (i < nvalid ? i : nvalid - 1)];
        bv = _mm256_loadu_ps(b8);
    }
    for (int m = 0; m < M; m++) {
        const __m256 out = bias != NULL ? _mm256_add_ps(acc[m], bv) : acc[m];
        float *dst = y + m * ldy + n0;
        if (nvalid == 8) {
            _mm256_storeu_ps(dst, out);
        } else {
            float t[8];
            _mm256_storeu_ps(t, out);
            for (int64_t i = 0; i < nvalid; i++) dst[i] = t[i];
        }
    }
}

/* Rows [r0, r1) of y for M (a compile-time 1 .. THIN_MAX_M) tokens, 8 at a time. */
static inline __attribute__((always_inline)) void thin_rows_m(const float *x, int64_t ldx, const float *w,
                                                              int64_t K, const float *bias, float *y, int64_t ldy,
                                                              int64_t r0, int64_t r1, const int M) {
    for (int64_t n = r0; n < r1; n += 8) {
        const int64_t pf = n + 16 <= r1 ? 8 * K : 0; /* the next 8 rows, if all ours (else a no-op) */
        thin_tile(x, ldx, w, K, bias, y, ldy, n, r1 - n < 8 ? r1 - n : 8, pf, M);
    }
}

static void thin_rows(const float *x, int64_t ldx, const float *w, int64_t K, const float *bias, float *y,
                      int64_t ldy, int64_t M, int64_t r0, int64_t r1) {
    switch (M) {
    case 1: thin_rows_m(x, ldx, w, K, bias, y, ldy, r0, r1, 1); break;
    case 2: thin_rows_m(x, ldx, w, K, bias, y, ldy, r0, r1, 2); break;
    case 3: thin_rows_m(x, ldx, w, K, bias, y, ldy, r0, r1, 3); break;
    default: thin_rows_m(x, ldx, w, K, bias, y, ldy, r0, r1, 4); break;
    }
}

/* Weight groups [g0, g1) of this thread, each against all m-blocks of xp. */
static void compute_groups(const float *xp, const float *w, const float *bias, float *y, int64_t ldy, int64_t M,
                           int64_t K, int64_t N, int64_t g0, int64_t g1) {
    const int64_t blocks = (M + MR - 1) / MR;
    for (int64_t g = g0; g < g1; g++) {
        const int64_t n0 = g * NR, nvalid = N - n0 < NR ? N - n0 : NR;
        const float *wg = w + n0 * K;
        const float *bg = bias != NULL ? bias + n0 : NULL;
        /* Prefetch the next group while its rows are still ahead; the last group prefetches
           its own lines again (a no-op), so nothing past this thread's range is touched. */
        const int64_t next_dist = g + 1 < g1 ? NR * K : 0;
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t rows = block_rows(M, b);
            const float *xb = xp + b * MR * K;
            float *yb = y + b * MR * ldy + n0;
            const int64_t pf = b == 0 ? next_dist : 0;
            if (rows > 8)
                tile(xb, wg, K, bg, yb, ldy, rows, nvalid, pf, 2);
            else
                tile(xb, wg, K, bg, yb, ldy, rows, nvalid, pf, 1);
        }
    }
}
#else
/* Portable path: y[m, n] for the weight rows of groups [g0, g1), one dot product at a time in
   8 partial sums (vectorizable without reassociation), straight from x. */
static void compute_groups(const float *x, int64_t ldx, const float *w, const float *bias, float *y, int64_t ldy,
                           int64_t M, int64_t K, int64_t N, int64_t g0, int64_t g1) {
    const int64_t n1 = g1 * NR < N ? g1 * NR : N;
    for (int64_t n = g0 * NR; n < n1; n++)
        for (int64_t m = 0; m < M; m++) {
            const float *a = x + m * ldx, *b = w + n * K;
            float lane[8] = {0};
            int64_t k = 0;
            for (; k + 8 <= K; k += 8)
                for (int j = 0; j < 8; j++)
                    lane[j] += a[k + j] * b[k + j];
            float sum = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
            for (; k < K; k++)
                sum += a[k] * b[k];
            y[m * ldy + n] = bias != NULL ? sum + bias[n] : sum;
        }
}
#endif

/* ---- entry point ------------------------------------------------------------------------------ */

typedef struct {
    const float *x;
    int64_t ldx;
    const float *w, *bias;
    float *y;
    int64_t ldy, M, K, N;
    float *xp; /* packed x (AVX2 path only) */
} job_t;

/* Thread t of nt: its share of packing x, then (once all of xp is there) its weight groups. */
static void run_share(const job_t *job, int64_t t, int64_t nt) {
    const int64_t K = job->K, groups = (job->N + NR - 1) / NR;
    const int64_t g0 = groups * t / nt, g1 = groups * (t + 1) / nt;
#if FP_USE_AVX2
    if (job->M <= THIN_MAX_M) { /* no packing: rows in groups of 8 */
        const int64_t g8 = (job->N + 7) / 8, r0 = g8 * t / nt * 8, r1 = g8 * (t + 1) / nt * 8;
        thin_rows(job->x, job->ldx, job->w, K, job->bias, job->y, job->ldy, job->M, r0,
                  r1 < job->N ? r1 : job->N);
        return;
    }
    /* k-ranges in multiples of 8, for the 8 x 8 transposes */
    const int64_t k8 = K / 8;
    const int64_t k0 = t == 0 ? 0 : k8 * t / nt * 8, k1 = t == nt - 1 ? K : k8 * (t + 1) / nt * 8;
    pack_x(job->x, job->ldx, job->M, K, k0, k1, job->xp);
    if (nt > 1) {
#pragma omp barrier
    }
    compute_groups(job->xp, job->w, job->bias, job->y, job->ldy, job->M, K, job->N, g0, g1);
#else
    compute_groups(job->x, job->ldx, job->w, job->bias, job->y, job->ldy, job->M, K, job->N, g0, g1);
#endif
}

/* Threads for a call: the caller's count, fewer for small products (the tile path by
   multiply-adds, the thin one by weights read), at most one per weight group (6 rows; 8 thin). */
static int64_t team_size(int64_t M, int64_t K, int64_t N, int nthreads, int thin) {
    const int64_t most = thin ? K * N / THIN_WEIGHTS_PER_THREAD : M * K * N / WORK_PER_THREAD;
    const int64_t units = thin ? (N + 7) / 8 : (N + NR - 1) / NR;
    int64_t n = nthreads;
    if (n > most)
        n = most;
    if (n > units)
        n = units;
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    return n < 1 ? 1 : n;
}

/* 1 when this build uses the AVX2/FMA kernel, 0 for the portable (slow) path. */
int fp_linear_uses_avx2(void) { return FP_USE_AVX2; }

/*
 * Returns 0, or an FP_ERR_* code (y untouched on FP_ERR_ARGS; possibly incomplete on
 * FP_ERR_NO_MEMORY, which is returned before anything is written). x, w and bias must not
 * overlap y. nthreads <= 1, or too little work to share, runs on the calling thread only.
 */
int fp_linear(const float *x, int64_t ldx, const float *w, const float *bias, float *y, int64_t ldy, int64_t M,
              int64_t K, int64_t N, int nthreads) {
    if (M < 0 || K < 0 || N < 0 || (M > 1 && (ldx < K || ldy < N)))
        return FP_ERR_ARGS;
    if (M == 0 || N == 0)
        return FP_OK;

    const int thin = FP_USE_AVX2 && M <= THIN_MAX_M;
    const int64_t n = team_size(M, K, N, nthreads, thin);

    float *xp = NULL;
    void *own = NULL; /* a buffer for this call only, when x is too large to keep */
#if FP_USE_AVX2
    if (!thin) { /* the thin path reads x as it is */
        const int64_t blocks = (M + MR - 1) / MR;
        /* At least one float even for K == 0, so that NULL always means no memory. */
        const size_t need = (size_t)(blocks * MR * K) + 1;
        if (need > KEEP_FLOATS && posix_memalign(&own, 64, need * sizeof(float)) != 0)
            own = NULL;
        xp = need > KEEP_FLOATS ? own : thread_buffer(need);
        if (xp == NULL)
            return FP_ERR_NO_MEMORY;
    }
#endif

    const job_t job = {x, ldx, w, bias, y, ldy, M, K, N, xp};
    if (n == 1) {
        run_share(&job, 0, 1); /* no parallel region at all: entering one costs ~1 us even alone */
    } else {
#pragma omp parallel num_threads((int)n)
        {
#ifdef _OPENMP
            run_share(&job, omp_get_thread_num(), omp_get_num_threads());
#else
            run_share(&job, 0, 1);
#endif
        }
    }
    free(own);
    return FP_OK;
}
