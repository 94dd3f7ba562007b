/*
 * Paged decode attention on CPU: one query token per sequence, keys/values read straight
 * from the block pool through the block table (no gather into a padded tensor).
 *
 *   q            [B, H, D]            fp32
 *   k_pool       [N, bs, Hkv, D]      fp32 or bf16 (pool_dtype), same for v_pool
 *   block_tables [B, M]               int32; token t of sequence b is in block
 *                                     block_tables[b, t / bs] at row t % bs
 *   context_lens [B]                  int32, 1 <= ctx <= M * bs
 *   out          [B, H, D]            fp32
 *
 * out[b, h] = softmax(scale * q[b, h] . K[b, :ctx, h / G]) @ V[b, :ctx, h / G], G = H / Hkv.
 *
 * Per sequence, two passes over its blocks, each block read once and in order:
 *   1. scores[h, t] = scale * q[h] . k[t, h / G]   (a token's K row [Hkv, D] is contiguous)
 *   2. softmax over t for each h (max subtracted), then acc[h] += p[h, t] * v[t, h / G]
 * Blocks sit at random places in the pool, so the next block is prefetched by hand.
 * All arithmetic is fp32; bf16 rows are widened to fp32 (exactly) before use.
 *
 * Threads: OpenMP, on torch's own thread pool. torch's wheel ships libgomp.so.1 and has loaded
 * it before this library is, so our DT_NEEDED libgomp.so.1 resolves to that same runtime (one
 * OpenMP runtime per process; checked in /proc/self/maps). Its workers, still spinning after
 * the previous matmul, take our work at once; with pthreads of our own they competed with them
 * for the cores, ~12% slower per decode step. Workers take sequences, longest first, from a
 * shared atomic counter, so they finish together whatever the mix of context lengths.
 *
 * Built with -O3 -march=native and without -ffast-math: the loops are written so gcc
 * vectorizes them without reassociating (dot products keep LANES independent partial sums).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { POOL_F32 = 0, POOL_BF16 = 1 };

/* Return codes, mirrored in paged_decode.py. */
enum { FP_OK = 0, FP_ERR_CONTEXT_LEN = 1, FP_ERR_BLOCK_ID = 2, FP_ERR_NO_MEMORY = 3, FP_ERR_ARGS = 4 };

#define LANES 8                /* partial sums per dot product: one AVX2 register */
#define V_UNROLL 4             /* V rows folded into the accumulator per load/store of it */
_Static_assert(V_UNROLL == 4, "axpy_rows is written out for 4 rows");
/* Context tokens per thread at least: waking a pool thread costs microseconds, a few dozen
   tokens of work; below this a call stays on the calling thread. */
#define TOKENS_PER_THREAD 256
#define MAX_THREADS 256
#define CACHE_LINE 64

typedef struct {
    int32_t len, seq;
} seq_len_t;

typedef struct {
    const float *q;
    const void *k_pool, *v_pool;
    int pool_dtype;
    const int32_t *block_tables, *context_lens;
    float *out;
    int64_t num_seqs, num_heads, num_kv_heads, head_dim, block_size, max_blocks, num_blocks;
    float scale;
    const seq_len_t *order; /* sequences longest first (NULL: index order) */
    int64_t next_seq;       /* next entry to take; shared, updated with __atomic builtins */
    int error;              /* first error any thread hit (0 = none) */
} job_t;

/* Per-thread buffers, reused across the sequences a thread takes. */
typedef struct {
    float *scores;     /* [H, ctx] scores, then unnormalized probabilities; grows as needed */
    size_t scores_cap; /* in floats */
    float *acc;        /* [H, D] weighted sum of V rows */
    float *max_sum;    /* [2, H] max, then sum of exp, per head */
    float *rows;       /* [bs, Hkv, D] one block widened from bf16 (unused for fp32 pools) */
} scratch_t;

/* Sum of the LANES (8) partial sums, halving step by step (each step written out: a loop over
   the widths would stay a loop). */
static inline float fold_lanes(float lane[LANES]) {
    for (int j = 0; j < 4; j++)
        lane[j] += lane[j + 4];
    for (int j = 0; j < 2; j++)
        lane[j] += lane[j + 2];
    return lane[0] + lane[1];
}

/* The n < LANES elements left over when D is not a multiple of LANES. */
static inline float dot_tail(const float *restrict a, const float *restrict b, int64_t n) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

/* a . b over n floats, in LANES independent partial sums: gcc vectorizes that without
   -ffast-math (no reassociation needed), and folds the lanes with a few shuffles. One 8-wide
   register beats two here: gcc folds two into a much longer scalar sequence. */
static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += a[i + j] * b[i + j];
    return fold_lanes(lane) + dot_tail(a + i, b + i, n - i);
}

/* acc += p[0] * v[0] + ... + p[V_UNROLL - 1] * v[(V_UNROLL - 1) * stride], n floats each:
   one load and store of acc per V_UNROLL rows of v. */
static inline void axpy_rows(float *restrict acc, const float *restrict p, const float *restrict v,
                             int64_t stride, int64_t n) {
    const float p0 = p[0], p1 = p[1], p2 = p[2], p3 = p[3];
    const float *restrict v0 = v, *restrict v1 = v + stride, *restrict v2 = v + 2 * stride,
                *restrict v3 = v + 3 * stride;
    for (int64_t i = 0; i < n; i++)
        acc[i] += (p0 * v0[i] + p1 * v1[i]) + (p2 * v2[i] + p3 * v3[i]);
}

/* acc += p * v over n floats. */
static inline void axpy(float *restrict acc, float p, const float *restrict v, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        acc[i] += p * v[i];
}

/* exp(x) for x <= 0, within 1 ulp (checked on [-87.3, 0]), in plain arithmetic that gcc
   vectorizes (libm's expf is a call per element). x = n ln2 + r with |r| <= ln2 / 2 (ln2 in
   two parts so that n * LN2_HI is exact), exp(r) by its Taylor series to r^7 (truncation
   < 1e-8 relative), times 2^n built in the exponent bits. Below ln(FLT_MIN) the result is 0
   (the exact value is < 1.2e-38); NaN stays NaN. The selects vectorize only without
   -ftrapping-math (see cpu_build.CFLAGS). */
static inline float exp_nonpos(float x) {
    const float min_x = -87.33654475f; /* ln(FLT_MIN): 2^n stays a normal float above it */
    const float LOG2E = 1.44269504088896341f, LN2_HI = 0.693145751953125f, LN2_LO = 1.42860682030941723e-6f;
    const float xc = x < min_x ? min_x : x;
    const float n = rintf(xc * LOG2E); /* -126..0 */
    const float r = (xc - n * LN2_HI) - n * LN2_LO;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t e = (int32_t)(n == n ? n : 0.0f) + 127; /* NaN: any exponent, p is NaN */
    const uint32_t bits = (uint32_t)e << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return x < min_x ? 0.0f : p * two_n;
}

/* s[i] = exp(s[i] - m) over n floats; returns their sum (LANES partial sums, as in dot). */
static inline float exp_shift_sum(float *restrict s, float m, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        s[i] = exp_nonpos(s[i] - m);
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += s[i + j];
    float sum = fold_lanes(lane);
    for (; i < n; i++)
        sum += s[i];
    return sum;
}

#if defined(__AVX512F__)
#include <immintrin.h>
#define BF16_DIRECT 1 /* head_dim 64 over bf16 pools: rows read as bf16, no widened copy */

/* 16 bf16 values widened to fp32 (exact: the bf16 bits become the high half). */
static inline __m512 load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* q[64] . k[64], k in bf16: 16 partial sums (4 FMAs), then one horizontal sum. */
static inline float dot64_bf16(const float *q, const uint16_t *k) {
    __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), load_bf16(k));
    for (int c = 16; c < 64; c += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + c), load_bf16(k + c), acc);
    return _mm512_reduce_add_ps(acc);
}

/* acc[64] += p[0] v[0] + ... + p[n - 1] v[(n - 1) * stride], n <= 4 bf16 rows. */
static inline void axpy_rows_bf16_d64(float *restrict acc, const float *p, const uint16_t *v, int64_t stride,
                                      int64_t n) {
    for (int c = 0; c < 64; c += 16) {
        __m512 a = _mm512_loadu_ps(acc + c);
        for (int64_t u = 0; u < n; u++)
            a = _mm512_fmadd_ps(_mm512_set1_ps(p[u]), load_bf16(v + u * stride + c), a);
        _mm512_storeu_ps(acc + c, a);
    }
}
#else
#define BF16_DIRECT 0
#endif

/* bf16 -> fp32 is exact: the bf16 bits are the high half of the fp32 bits. */
static void widen_bf16(const uint16_t *restrict src, float *restrict dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(dst + i, &bits, sizeof bits);
    }
}

static inline size_t elem_size(const job_t *job) {
    return job->pool_dtype == POOL_F32 ? sizeof(float) : sizeof(uint16_t);
}

/* Address of a pool block ([bs, Hkv, D] in the pool's dtype). */
static inline const char *block_ptr(const job_t *job, const void *pool, int64_t block) {
    const size_t block_bytes = (size_t)(job->block_size * job->num_kv_heads * job->head_dim) * elem_size(job);
    return (const char *)pool + (size_t)block * block_bytes;
}

/* The first n_tokens rows [Hkv, D] of a block, as fp32 (bf16 widened into s->rows). */
static const float *block_rows(const job_t *job, scratch_t *s, const char *block, int64_t n_tokens) {
    if (job->pool_dtype == POOL_F32)
        return (const float *)block;
    widen_bf16((const uint16_t *)block, s->rows, n_tokens * job->num_kv_heads * job->head_dim);
    return s->rows;
}

/* Ask for one token row of the block read next, while this block is being processed: blocks
   sit at random places in the pool, where the hardware prefetcher cannot follow. */
static inline void prefetch_row(const char *next_block, int64_t r, size_t row_bytes) {
    if (next_block == NULL)
        return;
    const char *p = next_block + (size_t)r * row_bytes;
    for (size_t off = 0; off < row_bytes; off += CACHE_LINE)
        __builtin_prefetch(p + off, 0, 3);
}

/* One sequence: out[b] from q[b] and its blocks. Inlined into copies for D = 64 and 128 (the
   common head sizes), where the constant D lets gcc unroll the inner loops completely. */
static inline __attribute__((always_inline)) int run_sequence(const job_t *job, scratch_t *s, int64_t b,
                                                              const int64_t D) {
    const int64_t H = job->num_heads, Hkv = job->num_kv_heads;
    const int64_t bs = job->block_size, G = H / Hkv, row = Hkv * D;
    const size_t row_bytes = (size_t)row * elem_size(job);
    const int64_t ctx = job->context_lens[b];
    if (ctx < 1 || ctx > job->max_blocks * bs)
        return FP_ERR_CONTEXT_LEN;
    const int32_t *table = job->block_tables + b * job->max_blocks;
    const int64_t n_blocks = (ctx + bs - 1) / bs;
    for (int64_t i = 0; i < n_blocks; i++)
        if (table[i] < 0 || table[i] >= job->num_blocks)
            return FP_ERR_BLOCK_ID;

    if ((size_t)(ctx * H) > s->scores_cap) {
        float *grown = realloc(s->scores, (size_t)(ctx * H) * sizeof(float));
        if (grown == NULL)
            return FP_ERR_NO_MEMORY;
        s->scores = grown;
        s->scores_cap = (size_t)(ctx * H);
    }
    /* head_dim 64 over bf16 pools on AVX-512: rows read as bf16 in place (no widened copy) */
    const int direct = BF16_DIRECT && D == 64 && job->pool_dtype == POOL_BF16;
    (void)direct; /* read only where BF16_DIRECT */
    const float *q = job->q + b * H * D; /* [H, D] */
    const float scale = job->scale;      /* a local: stores to scores[] could alias job->scale */
    float *restrict scores = s->scores;  /* [H, ctx] */
    float *restrict mx = s->max_sum, *restrict sum = s->max_sum + H;

    /* Pass 1 over K: scores[h, t] = scale * q[h] . k[t, h / G], tracking the max per head.
       Head h = kh * G + g, so the G query heads of a KV head reuse its row from L1. */
    for (int64_t h = 0; h < H; h++)
        mx[h] = -INFINITY;
    for (int64_t i = 0; i < n_blocks; i++) {
        const int64_t n = (ctx - i * bs < bs) ? ctx - i * bs : bs;
        /* Prefetch the next K block, and this block's V rows for pass 2: the sequence's V
           (ctx * row_bytes) stays in L2/L3 until then, and twice the reads are in flight. */
        const char *next_k = i + 1 < n_blocks ? block_ptr(job, job->k_pool, table[i + 1]) : NULL;
        const char *this_v = block_ptr(job, job->v_pool, table[i]);
#if BF16_DIRECT
        if (direct) {
            const uint16_t *rows = (const uint16_t *)block_ptr(job, job->k_pool, table[i]);
            for (int64_t r = 0; r < n; r++) {
                prefetch_row(next_k, r, row_bytes);
                prefetch_row(this_v, r, row_bytes);
                for (int64_t kh = 0; kh < Hkv; kh++)
                    for (int64_t h = kh * G; h < (kh + 1) * G; h++) {
                        const float score = scale * dot64_bf16(q + h * D, rows + r * row + kh * D);
                        scores[h * ctx + i * bs + r] = score;
                        mx[h] = score > mx[h] ? score : mx[h];
                    }
            }
            continue;
        }
#endif
        const float *rows = block_rows(job, s, block_ptr(job, job->k_pool, table[i]), n); /* [n, Hkv, D] */
        for (int64_t r = 0; r < n; r++) {
            prefetch_row(next_k, r, row_bytes);
            prefetch_row(this_v, r, row_bytes);
            const float *k = rows + r * row;
            const int64_t t = i * bs + r;
            for (int64_t kh = 0; kh < Hkv; kh++)
                for (int64_t h = kh * G; h < (kh + 1) * G; h++) {
                    const float score = scale * dot(q + h * D, k + kh * D, D);
                    scores[h * ctx + t] = score;
                    mx[h] = score > mx[h] ? score : mx[h]; /* not fmaxf: gcc emits a libm call */
                }
        }
    }

    /* Stable softmax numerators: p = exp(score - max); the division by the sum comes last. */
    for (int64_t h = 0; h < H; h++)
        sum[h] = exp_shift_sum(scores + h * ctx, mx[h], ctx);

    /* Pass 2 over V: acc[h] += p[h, t] * v[t, h / G], V_UNROLL tokens at a time. */
    float *restrict acc = s->acc;
    memset(acc, 0, (size_t)(H * D) * sizeof(float));
    for (int64_t i = 0; i < n_blocks; i++) {
        const int64_t n = (ctx - i * bs < bs) ? ctx - i * bs : bs;
        /* in case pass 1's prefetch of it was evicted already (long contexts) */
        const char *next = i + 1 < n_blocks ? block_ptr(job, job->v_pool, table[i + 1]) : NULL;
        const float *pt = scores + i * bs; /* [H, ctx] from token i * bs on */
#if BF16_DIRECT
        if (direct) {
            const uint16_t *rows = (const uint16_t *)block_ptr(job, job->v_pool, table[i]);
            for (int64_t r = 0; r < n; r += V_UNROLL) {
                const int64_t nr = n - r < V_UNROLL ? n - r : V_UNROLL;
                for (int64_t u = 0; u < nr; u++)
                    prefetch_row(next, r + u, row_bytes);
                float p[V_UNROLL];
                for (int64_t kh = 0; kh < Hkv; kh++)
                    for (int64_t h = kh * G; h < (kh + 1) * G; h++) {
                        for (int64_t u = 0; u < nr; u++)
                            p[u] = pt[h * ctx + r + u];
                        axpy_rows_bf16_d64(acc + h * D, p, rows + r * row + kh * D, row, nr);
                    }
            }
            continue;
        }
#endif
        const float *rows = block_rows(job, s, block_ptr(job, job->v_pool, table[i]), n);
        int64_t r = 0;
        for (; r + V_UNROLL <= n; r += V_UNROLL) {
            for (int64_t u = 0; u < V_UNROLL; u++)
                prefetch_row(next, r + u, row_bytes);
            float p[V_UNROLL];
            for (int64_t kh = 0; kh < Hkv; kh++)
                for (int64_t h = kh * G; h < (kh + 1) * G; h++) {
                    for (int64_t u = 0; u < V_UNROLL; u++)
                        p[u] = pt[h * ctx + r + u];
                    axpy_rows(acc + h * D, p, rows + r * row + kh * D, row, D);
                }
        }
        for (; r < n; r++) {
            prefetch_row(next, r, row_bytes);
            for (int64_t kh = 0; kh < Hkv; kh++)
                for (int64_t h = kh * G; h < (kh + 1) * G; h++)
                    axpy(acc + h * D, pt[h * ctx + r], rows + r * row + kh * D, D);
        }
    }

    float *restrict out = job->out + b * H * D;
    for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++)
            out[h * D + d] = acc[h * D + d] / sum[h];
    return FP_OK;
}

static int run_sequence_d64(const job_t *job, scratch_t *s, int64_t b) { return run_sequence(job, s, b, 64); }
static int run_sequence_d128(const job_t *job, scratch_t *s, int64_t b) { return run_sequence(job, s, b, 128); }
static int run_sequence_any(const job_t *job, scratch_t *s, int64_t b) {
    return run_sequence(job, s, b, job->head_dim);
}

static int longest_first(const void *a, const void *b) {
    const seq_len_t *x = a, *y = b;
    return x->len != y->len ? (x->len > y->len ? -1 : 1) : (x->seq > y->seq) - (x->seq < y->seq);
}

static void record_error(job_t *job, int code) {
    int expected = 0;
    __atomic_compare_exchange_n(&job->error, &expected, code, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/* One thread's share (every OpenMP thread runs it): take the next sequence until none is left. */
static void worker(job_t *job) {
    const int64_t H = job->num_heads, D = job->head_dim;
    int (*run)(const job_t *, scratch_t *, int64_t) =
        D == 64 ? run_sequence_d64 : D == 128 ? run_sequence_d128 : run_sequence_any;
    scratch_t s = {0};
    s.acc = malloc((size_t)(H * D) * sizeof(float));
    s.max_sum = malloc((size_t)(2 * H) * sizeof(float));
    if (job->pool_dtype == POOL_BF16)
        s.rows = malloc((size_t)(job->block_size * job->num_kv_heads * D) * sizeof(float));
    if (s.acc == NULL || s.max_sum == NULL || (job->pool_dtype == POOL_BF16 && s.rows == NULL)) {
        record_error(job, FP_ERR_NO_MEMORY);
    } else {
        for (;;) {
            const int64_t i = __atomic_fetch_add(&job->next_seq, 1, __ATOMIC_RELAXED);
            if (i >= job->num_seqs)
                break;
            const int64_t b = job->order != NULL ? job->order[i].seq : i;
            const int code = run(job, &s, b);
            if (code != FP_OK)
                record_error(job, code);
        }
    }
    free(s.scores);
    free(s.acc);
    free(s.max_sum);
    free(s.rows);
}

/*
 * Returns 0, or an FP_ERR_* code (the output is then incomplete). nthreads <= 1, or too little
 * work to share, runs on the calling thread only.
 */
int fp_paged_decode_attention(const float *q, const void *k_pool, const void *v_pool, int pool_dtype,
                              const int32_t *block_tables, const int32_t *context_lens, float *out,
                              int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                              int64_t block_size, int64_t max_blocks, int64_t num_blocks, float scale,
                              int nthreads) {
    if (num_seqs < 0 || num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0 ||
        head_dim < 1 || block_size < 1 || (pool_dtype != POOL_F32 && pool_dtype != POOL_BF16))
        return FP_ERR_ARGS;
    if (num_seqs == 0)
        return FP_OK;
    if (max_blocks < 1 || num_blocks < 1)
        return FP_ERR_ARGS;

    job_t job = {q, k_pool, v_pool, pool_dtype, block_tables, context_lens, out,
                 num_seqs, num_heads, num_kv_heads, head_dim, block_size, max_blocks, num_blocks,
                 scale, NULL, 0, 0};

    /* Threads: at most one per sequence and per TOKENS_PER_THREAD tokens of context. */
    int64_t total_tokens = 0;
    for (int64_t b = 0; b < num_seqs; b++)
        total_tokens += context_lens[b] > 0 ? context_lens[b] : 0;
    int64_t n = nthreads;
    if (n > num_seqs)
        n = num_seqs;
    if (n > total_tokens / TOKENS_PER_THREAD)
        n = total_tokens / TOKENS_PER_THREAD;
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    if (n < 1)
        n = 1; /* num_threads() must be positive even where the if() clause is false */

    /* Longest first: the last sequences taken are short, so no thread is left with a long one
       while the others idle. Without memory for the order, index order is still correct. */
    seq_len_t *order = NULL;
    if (n > 1 && (order = malloc((size_t)num_seqs * sizeof *order)) != NULL) {
        for (int64_t b = 0; b < num_seqs; b++)
            order[b] = (seq_len_t){context_lens[b], (int32_t)b};
        qsort(order, (size_t)num_seqs, sizeof *order, longest_first);
        job.order = order;
    }

#pragma omp parallel num_threads((int)n) if (n > 1)
    worker(&job);
    free(order);
    return job.error;
}
