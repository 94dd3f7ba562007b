/*
 * Prefill attention on CPU for one sequence's chunk: causal, grouped-query, keys/values read
 * in place (the chunk's own k/v rows, or the paged pool through the sequence's block ids when
 * a cached prefix comes first). fp32 throughout; AVX-512 only (fp_prefill_available() says 0
 * on other builds and the caller keeps torch's SDPA).
 *
 *   q          [Lq, H, D]  fp32, token stride q_stride floats, heads contiguous (D apart)
 *   keys       block_ids == NULL: k, v [Lk, Hkv, D] fp32 with token stride kv_stride floats
 *              else: k, v pools [N, bs, Hkv, D] contiguous, fp32 or bf16 (pool_dtype); token t
 *              is row t % bs of block block_ids[t / bs]
 *   out        [Lq, H, D]  fp32 contiguous
 * Query i sits at position Lk - Lq + i and attends keys 0..that position; query head h uses
 * KV head h / (H / Hkv). out = softmax(scale * q . K^T) V per head, as SDPA computes it, with
 * the softmax done online over key blocks (flash attention): no [Lq, Lk] score matrix.
 *
 * Why: torch's CPU SDPA reached 50-80 GFLOP/s on SmolLM2's shapes (D = 64, 9 heads over 3 KV
 * heads, 32-512 tokens) on a machine whose oneDNN fp32 linear runs at ~400; prefill attention
 * was a third of a bf16 prefill's time.
 *
 * First every key block of KB tokens is transposed once per KV head, Kt[D][KB] (so a query
 * row's KB scores are D FMAs of a broadcast q element by a KB-wide vector; shared by the G query
 * heads and every query block). Then work items: (query head, block of QB query tokens), the
 * latest query blocks (most keys) first, taken by OpenMP threads dynamically. Per item, per
 * key block:
 *   S[r][KB]      scores of the item's rows, masked past each row's position
 *   online softmax: m_r (running max), l_r (running sum), O_r scaled by exp(m_old - m_new)
 *   O[r][D]      += P[r][j] * V[j] for the block's rows j (V rows are contiguous D floats)
 * bf16 pools (a bf16 model's KV cache) are widened to fp32 (exact) as they are read: the keys by
 * the transposition, the values into one [Lk, Hkv, D] fp32 copy made beside it; the arithmetic
 * stays fp32.
 * Sums run in a fixed order for a given (Lq, Lk): the result does not depend on the threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { POOL_F32 = 0, POOL_BF16 = 1 };
enum { FP_OK = 0, FP_ERR_ARGS = 1, FP_ERR_BLOCK_ID = 2, FP_ERR_UNSUPPORTED = 3, FP_ERR_NO_MEMORY = 4 };

#if defined(__AVX512F__)
#include <immintrin.h>

#define KB 16  /* keys per block: one zmm of scores per query row */
#define QB 16  /* query tokens per work item */
#define MAX_D 256
#define ROW_TILE 4 /* query rows whose 64-column O slices (4 zmm each) stay in registers */
#define QK_TILE 8  /* query rows scored at once: independent FMA chains */

typedef struct {
    const float *q;
    const void *k, *v; /* fp32 rows, or the pools in pool_dtype */
    int pool_dtype;
    const int64_t *block_ids;
    float *out;
    int64_t q_len, ctx_len, num_heads, num_kv_heads, head_dim, q_stride, kv_stride, block_size, num_blocks;
    float scale;
    float *kt_all;   /* [Hkv, nkb, D, KB]: every key block transposed once, shared by the items */
    float *v_wide;   /* [ctx_len, Hkv, D]: bf16 pools' values widened once (NULL for fp32) */
    int64_t nkb;     /* key blocks: ceil(ctx_len / KB) */
} job_t;

/* exp(x) for x <= 0 (x = -inf allowed: 0). 2^(x log2 e) = 2^n 2^f, n = round(x log2 e),
   |f| <= 1/2, 2^f by its degree-6 Taylor polynomial in f ln 2 (relative error < 2e-7). */
static inline __m512 exp_nonpos(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147180559945309f));
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n); /* p * 2^n; underflows to 0 */
}

/* Element index of token t's row for kv_head in k / v: the chunk's rows (token stride
   kv_stride) or the pool row of the token's block. */
static inline int64_t row_index(const job_t *job, int64_t t, int64_t kv_head) {
    if (job->block_ids == NULL)
        return t * job->kv_stride + kv_head * job->head_dim;
    const int64_t block = job->block_ids[t / job->block_size];
    const int64_t row = block * job->block_size + t % job->block_size;
    return (row * job->num_kv_heads + kv_head) * job->head_dim;
}

/* bf16 -> fp32 is exact: the bf16 bits are the high half of the fp32 bits. */
static inline float widen(uint16_t bits) {
    const uint32_t wide = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &wide, sizeof f);
    return f;
}

/* Token t's value row for kv_head, as D fp32 values. */
static inline const float *value_row(const job_t *job, int64_t t, int64_t kv_head) {
    if (job->v_wide != NULL)
        return job->v_wide + (t * job->num_kv_heads + kv_head) * job->head_dim;
    return (const float *)job->v + row_index(job, t, kv_head);
}

/* O rows [ROW_TILE] += P rows [ROW_TILE, KB] (first nk columns) times the key block's V rows,
   64 columns (4 zmm) at a time: 16 accumulators and 4 V vectors stay in registers. */
static inline void accumulate_pv(float *restrict o, const float *restrict p, const float *const *vrows,
                                 int64_t nk, int64_t D) {
    for (int64_t c = 0; c < D; c += 64) {
        __m512 acc[ROW_TILE][4];
        for (int r = 0; r < ROW_TILE; r++)
            for (int u = 0; u < 4; u++)
                acc[r][u] = _mm512_load_ps(o + r * D + c + 16 * u);
        for (int64_t j = 0; j < nk; j++) {
            __m512 vv[4];
            for (int u = 0; u < 4; u++)
                vv[u] = _mm512_loadu_ps(vrows[j] + c + 16 * u);
            for (int r = 0; r < ROW_TILE; r++) {
                const __m512 pj = _mm512_set1_ps(p[r * KB + j]);
                for (int u = 0; u < 4; u++)
                    acc[r][u] = _mm512_fmadd_ps(pj, vv[u], acc[r][u]);
            }
        }
        for (int r = 0; r < ROW_TILE; r++)
            for (int u = 0; u < 4; u++)
                _mm512_store_ps(o + r * D + c + 16 * u, acc[r][u]);
    }
}

/* S rows [QK_TILE] = q rows . the block's keys (Kt [D][KB]): QK_TILE independent FMA chains. */
static inline void scores(__m512 *restrict s, const float (*qs)[MAX_D], const float (*kt)[KB], int64_t D) {
    for (int r = 0; r < QK_TILE; r++)
        s[r] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d++) {
        const __m512 kd = _mm512_load_ps(kt[d]);
        for (int r = 0; r < QK_TILE; r++)
            s[r] = _mm512_fmadd_ps(_mm512_set1_ps(qs[r][d]), kd, s[r]);
    }
}

/* Key block kb of KV head hk, transposed into job->kt_all (zeros past the context's end); with
   bf16 pools also the block's value rows widened into job->v_wide. */
static int transpose_keys(const job_t *job, int64_t hk, int64_t kb) {
    const int64_t D = job->head_dim, k0 = kb * KB;
    float (*kt)[KB] = (float (*)[KB])(job->kt_all + ((hk * job->nkb + kb) * D) * KB);
    for (int64_t j = 0; j < KB; j++) {
        if (k0 + j >= job->ctx_len) {
            for (int64_t d = 0; d < D; d++)
                kt[d][j] = 0.0f;
            continue;
        }
        if (job->block_ids != NULL) {
            const int64_t block = job->block_ids[(k0 + j) / job->block_size];
            if (block < 0 || block >= job->num_blocks)
                return FP_ERR_BLOCK_ID;
        }
        const int64_t at = row_index(job, k0 + j, hk);
        if (job->pool_dtype == POOL_BF16) {
            const uint16_t *krow = (const uint16_t *)job->k + at, *vrow = (const uint16_t *)job->v + at;
            float *vwide = job->v_wide + ((k0 + j) * job->num_kv_heads + hk) * D;
            for (int64_t d = 0; d < D; d++) {
                kt[d][j] = widen(krow[d]);
                vwide[d] = widen(vrow[d]);
            }
        } else {
            const float *krow = (const float *)job->k + at;
            for (int64_t d = 0; d < D; d++)
                kt[d][j] = krow[d];
        }
    }
    return FP_OK;
}

static void run_item(const job_t *job, int64_t h, int64_t i0) {
    const int64_t D = job->head_dim, G = job->num_heads / job->num_kv_heads, hk = h / G;
    const int64_t rows = job->q_len - i0 < QB ? job->q_len - i0 : QB;
    const int64_t offset = job->ctx_len - job->q_len; /* position of query 0 */
    /* all QB rows are computed (rows past the chunk's end hold q = 0 and are not stored) */
    float qs[QB][MAX_D] __attribute__((aligned(64)));
    float o[QB * MAX_D] __attribute__((aligned(64)));
    float p[QB * KB] __attribute__((aligned(64)));
    float m[QB], l[QB];
    const float *vrows[KB];
    for (int64_t r = 0; r < QB; r++) {
        if (r < rows) {
            const float *src = job->q + (i0 + r) * job->q_stride + h * D;
            for (int64_t d = 0; d < D; d++)
                qs[r][d] = src[d] * job->scale;
        } else {
            memset(qs[r], 0, sizeof(float) * (size_t)D);
        }
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    memset(o, 0, sizeof(float) * (size_t)(QB * D));
    const int64_t last_key = offset + i0 + rows - 1; /* the item's last row sees keys 0..last_key */
    for (int64_t k0 = 0; k0 <= last_key; k0 += KB) {
        const int64_t nk = last_key + 1 - k0 < KB ? last_key + 1 - k0 : KB;
        for (int64_t j = 0; j < nk; j++)
            vrows[j] = value_row(job, k0 + j, hk);
        const float (*kt)[KB] = (const float (*)[KB])(job->kt_all + ((hk * job->nkb + k0 / KB) * D) * KB);
        for (int64_t r0 = 0; r0 < QB; r0 += QK_TILE) {
            __m512 s[QK_TILE];
            scores(s, qs + r0, kt, D);
            for (int64_t t = 0; t < QK_TILE; t++) {
                const int64_t r = r0 + t;
                /* keys past the row's position (and past the block's end) do not count */
                const int64_t visible = offset + i0 + r + 1 - k0; /* keys k0 .. k0 + visible - 1 */
                const int64_t n_ok = visible < 0 ? 0 : (visible < nk ? visible : nk);
                const __mmask16 ok = (__mmask16)((1u << n_ok) - 1u);
                const __m512 sr = _mm512_mask_blend_ps(ok, _mm512_set1_ps(-INFINITY), s[t]);
                const float m_new = fmaxf(m[r], _mm512_reduce_max_ps(sr));
                if (m_new == -INFINITY) { /* nothing visible yet (a padded row): keep zeros */
                    _mm512_store_ps(p + r * KB, _mm512_setzero_ps());
                    continue;
                }
                const __m512 e = exp_nonpos(_mm512_sub_ps(sr, _mm512_set1_ps(m_new)));
                const float rescale = m[r] == -INFINITY ? 0.0f : expf(m[r] - m_new);
                l[r] = l[r] * rescale + _mm512_reduce_add_ps(e);
                m[r] = m_new;
                _mm512_store_ps(p + r * KB, e);
                if (rescale != 1.0f)
                    for (int64_t d = 0; d < D; d++)
                        o[r * D + d] *= rescale;
            }
        }
        for (int64_t r = 0; r < QB; r += ROW_TILE)
            accumulate_pv(o + r * D, p + r * KB, vrows, nk, D);
    }
    for (int64_t r = 0; r < rows; r++) {
        float *dst = job->out + ((i0 + r) * job->num_heads + h) * D;
        const float inv = 1.0f / l[r];
        for (int64_t d = 0; d < D; d++)
            dst[d] = o[r * D + d] * inv;
    }
}

int fp_prefill_available(void) { return 1; }

int fp_prefill_attention(const float *q, int64_t q_stride, const void *k, const void *v, int pool_dtype,
                         int64_t kv_stride, const int64_t *block_ids, int64_t block_size, int64_t num_blocks, float *out,
                         int64_t q_len, int64_t ctx_len, int64_t num_heads, int64_t num_kv_heads,
                         int64_t head_dim, float scale, int nthreads) {
    if (q_len < 1 || ctx_len < q_len || num_kv_heads < 1 || num_heads % num_kv_heads != 0 || head_dim < 64
        || head_dim > MAX_D || head_dim % 64 != 0 || q_stride < num_heads * head_dim
        || (block_ids == NULL && kv_stride < num_kv_heads * head_dim)
        || (block_ids != NULL && (block_size < 1 || num_blocks < 1))
        || (pool_dtype != POOL_F32 && (pool_dtype != POOL_BF16 || block_ids == NULL)))
        return FP_ERR_ARGS;
    const int64_t nkb = (ctx_len + KB - 1) / KB;
    float *kt_all = aligned_alloc(64, (size_t)(num_kv_heads * nkb * head_dim * KB) * sizeof(float));
    float *v_wide = pool_dtype == POOL_BF16 ? malloc((size_t)(ctx_len * num_kv_heads * head_dim) * sizeof(float)) : NULL;
    if (kt_all == NULL || (pool_dtype == POOL_BF16 && v_wide == NULL)) {
        free(kt_all);
        free(v_wide);
        return FP_ERR_NO_MEMORY;
    }
    const job_t job = {q, k, v, pool_dtype, block_ids, out, q_len, ctx_len, num_heads, num_kv_heads, head_dim,
                       q_stride, kv_stride, block_size, num_blocks, scale, kt_all, v_wide, nkb};
    const int64_t q_blocks = (q_len + QB - 1) / QB, items = q_blocks * num_heads;
    int error = FP_OK;
    const int n = nthreads > 1 && items > 1 ? nthreads : 1;
#pragma omp parallel num_threads(n) if (n > 1)
    {
#pragma omp for schedule(static)
        for (int64_t it = 0; it < num_kv_heads * nkb; it++) {
            const int rc = transpose_keys(&job, it / nkb, it % nkb);
            if (rc != FP_OK) {
#pragma omp atomic write
                error = rc;
            }
        }
        /* the implicit barrier: every block is transposed before any item reads one */
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            int failed;
#pragma omp atomic read
            failed = error;
            if (failed != FP_OK)
                continue;
            /* latest query blocks first: they see the most keys */
            const int64_t qb = q_blocks - 1 - it / num_heads, h = it % num_heads;
            run_item(&job, h, qb * QB);
        }
    }
    free(kt_all);
    free(v_wide);
    return error;
}

#else /* no AVX-512: the caller uses torch's SDPA */

int fp_prefill_available(void) { return 0; }

int fp_prefill_attention(const float *q, int64_t q_stride, const void *k, const void *v, int pool_dtype,
                         int64_t kv_stride, const int64_t *block_ids, int64_t block_size, int64_t num_blocks, float *out,
                         int64_t q_len, int64_t ctx_len, int64_t num_heads, int64_t num_kv_heads,
                         int64_t head_dim, float scale, int nthreads) {
    (void)q; (void)q_stride; (void)k; (void)v; (void)pool_dtype; (void)kv_stride; (void)block_ids; (void)block_size;
    (void)num_blocks; (void)out; (void)q_len; (void)ctx_len; (void)num_heads; (void)num_kv_heads;
    (void)head_dim; (void)scale; (void)nthreads;
    return FP_ERR_UNSUPPORTED;
}
#endif
