/*
 * Batched multi-LoRA delta on CPU (BGMV style): each token adds the low-rank update of its own
 * adapter slot to the base output of one projection, for the whole batch in one call.
 *
 *   x            [T, K]     fp32, row stride ldx >= K, unit column stride
 *   a            [S, R, K]  fp32 contiguous: lora_A of each slot (rows >= its rank unused)
 *   b            [S, R, N]  fp32 contiguous: (scale * lora_B)^T of each slot, so that row j of
 *                           a slot is contiguous over N
 *   ranks        [S]        int32, 0 <= rank <= R; 0 = the slot does not target this projection
 *   token_slots  [T]        int32, -1 (base model only) or 0 <= slot < S
 *   y            [T, N]     fp32, row stride ldy >= N, unit column stride; updated in place.
 *                           May be a column slice of a wider output (e.g. k of a fused qkv).
 *
 *   y[t] += (x[t] @ a[s, :r]^T) @ b[s, :r]      s = token_slots[t], r = ranks[s]
 *
 * Tokens with slot -1 or a rank-0 slot are skipped. x, a and b must not overlap y.
 *
 * The work is memory-bound: without reuse each multiply-add reads one float of a or b. So the
 * tokens are first sorted by slot (counting sort), and the tokens of one slot go together,
 * ROWS (4) rank rows at a time:
 *   h[i, :] = a[s, j:j+4] @ x[t_i]                 for every token t_i of the group
 *   y[t_i] += h[i, 0] * b[s, j] + ... + h[i, 3] * b[s, j + 3]
 * The 4 rows of a (4 K floats) and of b (4 N floats, 24 KB at N = 1536) stay in L1 while the
 * group's tokens use them, and y[t_i] is loaded and stored once per 4 rows. About 1.4x faster
 * than token by token in decode (T = 64 over 8 slots).
 *
 * Threads: OpenMP over tiles of TILE sorted tokens, on torch's own thread pool (torch's
 * libgomp.so.1 is the one our DT_NEEDED resolves to; see paged_decode.c). A call with less
 * than WORK_PER_THREAD multiply-adds per thread uses fewer threads, down to the calling thread
 * alone: handing work to a pool thread costs microseconds.
 *
 * Built with -O3 -march=native and without -ffast-math, so nothing is reassociated: the dot
 * products keep 2 x 4 independent vectors of LANES partial sums. They are written with gcc's
 * vector extension: with several rows per pass over x, gcc's vectorizer builds each x vector
 * lane by lane and keeps the partial sums on the stack (the kernel was ~4x slower). One
 * accumulator per row would wait on FMA latency, hence two per row (even and odd LANES-chunks
 * of K: ~1.4x on the dot products).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Return codes, mirrored in lora_delta.py. */
enum { FP_OK = 0, FP_ERR_SLOT = 1, FP_ERR_RANK = 2, FP_ERR_ARGS = 3, FP_ERR_NO_MEMORY = 4 };

#define LANES 8 /* floats per vector: one AVX2 register */
#define ROWS 4  /* rank rows per pass over x[t] and y[t] */
_Static_assert(ROWS == 4, "axpy_rows is written out for 4 rows");
#define TILE 8 /* sorted tokens per unit of work shared among threads */
/* Multiply-adds per thread at least (2-core AVX2 machine: a second thread pays off above
   ~100k, i.e. T = 64 rank-8 tokens of a 576 -> 192 projection are shared, T = 16 are not). */
#define WORK_PER_THREAD 100000
#define MAX_THREADS 256

typedef float vec_t __attribute__((vector_size(LANES * sizeof(float))));

/* LANES floats from p, any alignment (memcpy compiles to one unaligned load). */
static inline vec_t load(const float *p) {
    vec_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Sum of the LANES (8) partial sums, halving step by step (as in paged_decode.c). */
static inline float fold_lanes(vec_t v) {
    float lane[LANES];
    memcpy(lane, &v, sizeof v);
    for (int j = 0; j < 4; j++)
        lane[j] += lane[j + 4];
    for (int j = 0; j < 2; j++)
        lane[j] += lane[j + 2];
    return lane[0] + lane[1];
}

/* h[q] = a[q * n : (q + 1) * n] . x over n floats, for q < nrows (ROWS, or 1 for the rows left
   over). Constant nrows after inlining: the loops over q unroll and acc stays in registers. */
static inline __attribute__((always_inline)) void dot_rows(float *h, const float *restrict a,
                                                           const float *restrict x, int64_t n, const int nrows) {
    vec_t acc[2][ROWS] = {{{0}}}; /* [even/odd chunk][row] */
    int64_t i = 0;
    for (; i + 2 * LANES <= n; i += 2 * LANES)
        for (int u = 0; u < 2; u++) {
            const vec_t xv = load(x + i + u * LANES);
            for (int q = 0; q < nrows; q++)
                acc[u][q] += load(a + q * n + i + u * LANES) * xv;
        }
    if (i + LANES <= n) {
        const vec_t xv = load(x + i);
        for (int q = 0; q < nrows; q++)
            acc[0][q] += load(a + q * n + i) * xv;
        i += LANES;
    }
    for (int q = 0; q < nrows; q++) {
        float sum = fold_lanes(acc[0][q] + acc[1][q]);
        for (int64_t k = i; k < n; k++) /* the n % LANES floats left over */
            sum += a[q * n + k] * x[k];
        h[q] = sum;
    }
}

/* y += h[0] * b[0] + ... + h[3] * b[3 * n] over n floats: one load and store of y per 4 rows. */
static inline void axpy_rows(float *restrict y, const float h[ROWS], const float *restrict b, int64_t n) {
    const float h0 = h[0], h1 = h[1], h2 = h[2], h3 = h[3];
    const float *restrict b0 = b, *restrict b1 = b + n, *restrict b2 = b + 2 * n, *restrict b3 = b + 3 * n;
    for (int64_t i = 0; i < n; i++)
        y[i] += (h0 * b0[i] + h1 * b1[i]) + (h2 * b2[i] + h3 * b3[i]);
}

/* y += h * b over n floats. */
static inline void axpy(float *restrict y, float h, const float *restrict b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] += h * b[i];
}

typedef struct {
    const float *x, *a, *b;
    const int32_t *ranks, *token_slots;
    float *y;
    int64_t ldx, ldy, K, N, R;
} job_t;

/* The delta of tokens tok[0..m) (m <= TILE), all of slot s. */
static void run_group(const job_t *job, const int32_t *tok, int64_t m, int64_t s) {
    const int64_t K = job->K, N = job->N, r = job->ranks[s];
    const float *a = job->a + s * job->R * K; /* [r, K] */
    const float *b = job->b + s * job->R * N; /* [r, N] */
    float h[TILE][ROWS];
    int64_t j = 0;
    for (; j + ROWS <= r; j += ROWS) {
        for (int64_t i = 0; i < m; i++)
            dot_rows(h[i], a + j * K, job->x + tok[i] * job->ldx, K, ROWS);
        for (int64_t i = 0; i < m; i++)
            axpy_rows(job->y + tok[i] * job->ldy, h[i], b + j * N, N);
    }
    for (; j < r; j++) { /* r % ROWS rows left */
        for (int64_t i = 0; i < m; i++)
            dot_rows(h[i], a + j * K, job->x + tok[i] * job->ldx, K, 1);
        for (int64_t i = 0; i < m; i++)
            axpy(job->y + tok[i] * job->ldy, h[i][0], b + j * N, N);
    }
}

/* Sorted tokens [begin, end): each run of one slot as a group. */
static void run_tile(const job_t *job, const int32_t *order, int64_t begin, int64_t end) {
    while (begin < end) {
        const int32_t s = job->token_slots[order[begin]];
        int64_t next = begin + 1;
        while (next < end && job->token_slots[order[next]] == s)
            next++;
        run_group(job, order + begin, next - begin, s);
        begin = next;
    }
}

/*
 * Returns 0, or an FP_ERR_* code. Every size, rank and slot is checked before anything is
 * written, so on error y is untouched. nthreads <= 1, or too little work to share, runs on the
 * calling thread only.
 */
int fp_lora_delta(const float *x, int64_t ldx, const float *a, const float *b, const int32_t *ranks,
                  const int32_t *token_slots, float *y, int64_t ldy, int64_t T, int64_t K, int64_t N,
                  int64_t S, int64_t R, int nthreads) {
    /* Row strides matter only from the second row on. */
    if (T < 0 || K < 0 || N < 0 || S < 0 || R < 0 || (T > 1 && (ldx < K || ldy < N)) || T > INT32_MAX)
        return FP_ERR_ARGS;
    for (int64_t s = 0; s < S; s++)
        if (ranks[s] < 0 || ranks[s] > R)
            return FP_ERR_RANK;
    int64_t rank_sum = 0; /* rows of a and b to apply, over all tokens */
    for (int64_t t = 0; t < T; t++) {
        const int32_t s = token_slots[t];
        if (s < -1 || s >= S)
            return FP_ERR_SLOT;
        rank_sum += s >= 0 ? ranks[s] : 0;
    }
    if (rank_sum == 0 || K == 0 || N == 0)
        return FP_OK; /* nothing to add (with K == 0 every h is 0) */

    /* Counting sort of the tokens that have a delta, by slot: order[first[s]..first[s + 1]). */
    int64_t *first = calloc((size_t)S + 1, sizeof *first);
    int32_t *order = malloc((size_t)T * sizeof *order);
    if (first == NULL || order == NULL) {
        free(first);
        free(order);
        return FP_ERR_NO_MEMORY;
    }
    for (int64_t t = 0; t < T; t++) {
        const int32_t s = token_slots[t];
        if (s >= 0 && ranks[s] > 0)
            first[s + 1]++;
    }
    for (int64_t s = 0; s < S; s++)
        first[s + 1] += first[s];
    const int64_t num_sorted = first[S];
    for (int64_t t = 0; t < T; t++) {
        const int32_t s = token_slots[t];
        if (s >= 0 && ranks[s] > 0)
            order[first[s]++] = (int32_t)t; /* first[s] ends as the end of slot s's tokens */
    }

    const job_t job = {x, a, b, ranks, token_slots, y, ldx, ldy, K, N, R};
    const int64_t num_tiles = (num_sorted + TILE - 1) / TILE;
    int64_t n = nthreads;
    if (n > rank_sum * (K + N) / WORK_PER_THREAD)
        n = rank_sum * (K + N) / WORK_PER_THREAD;
    if (n > num_tiles)
        n = num_tiles;
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    if (n < 1)
        n = 1; /* num_threads() must be positive even where the if() clause is false */

    /* Dynamic: tiles differ in rank, and a thread may be late to the region. */
#pragma omp parallel for num_threads((int)n) if (n > 1) schedule(dynamic, 1)
    for (int64_t k = 0; k < num_tiles; k++)
        run_tile(&job, order, k * TILE, (k + 1) * TILE < num_sorted ? (k + 1) * TILE : num_sorted);
    free(first);
    free(order);
    return FP_OK;
}
