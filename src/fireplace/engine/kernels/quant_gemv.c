/*
 * Weight-only quantized linear layer for decode-sized batches on CPU: the weight is read in
 * its quantized form and dequantized in registers, never written out as fp32.
 *
 *   x      [M, K]     fp32, row stride ldx >= K, unit column stride (M: tokens of the step)
 *   q      int8:  [N, K] int8, row-major            w[n, k] = q[n, k] * scale[n, k / G]
 *          int4:  [N, K / 2] uint8, row-major       w[n, k] = nib(n, k) * scale[n, k / G] + min[n, k / G]
 *   scale  [N, K / G] fp32 (and min, int4 only)
 *   bias   [N] fp32, or NULL
 *   y      [M, N] fp32, row stride ldy >= N, unit column stride
 *
 *   y[m, n] = sum_k x[m, k] * w[n, k]  (+ bias[n])
 *
 * int4 nibble layout (the one of GGUF's Q4_1 / Q4_0 blocks, so those load as they are): each
 * run of 32 weights of a row is 16 bytes; byte j holds weight j in its low nibble and weight
 * j + 16 in its high nibble. G is a multiple of 32 for int4 (K a multiple of G); for int8 G
 * divides K (G = K: one scale per output channel; G = 32: GGUF's Q8_0).
 *
 * Why not a library kernel: at batch 1 torch's _weight_int8pack_mm ran 2.7x slower than the
 * fp32 GEMV on SmolLM2's shapes on this machine. Decoding reads every weight once per step,
 * so the bytes read per weight (1 for int8, 0.5 + scales for int4, 4 for fp32) bound the step.
 *
 * Scheme (AVX2 + FMA): each thread takes a contiguous range of output rows n, in blocks of
 * NR_MAX = 4 rows (then single rows), and for each block the tokens in tiles of MT = 2 (then
 * one). A 4-row block at one token is 4+ independent FMA chains: with one row at a time the
 * FMA latency bound the kernel at batch 1 (int8 ~5 GB/s on a Zen 3, a third of its read
 * bandwidth). Per 8 weights of a row:
 *   int8  load 8 bytes (vpmovsxbd), convert to fp32, one FMA with x per token into one of two
 *         alternating accumulators of the group; at the end of each group of G weights the two
 *         are summed and multiplied by the group's scale into the output's accumulator (one FMA
 *         per 8 weights, the scale applied once per group rather than per weight);
 *   int4  the block's 16 bytes broadcast to both lanes, one vpshufb spreading 8 bytes to dword
 *         lanes, a mask for the low nibbles or a shift for the high ones, convert, one FMA with
 *         scale and min (the dequantized weight exactly as quantization.dequantize computes it,
 *         rounded once instead of twice), then one FMA per token.
 * The first token tile prefetches the next block's rows, one cache line per row per 64 bytes
 * consumed: the hardware prefetchers alone left int8 at ~3.5 GB/s on matrices streamed from
 * DRAM. A block's quantized bytes (<= 6 KB at K = 1536) stay in L1 for the next tile of
 * tokens, so each weight byte comes from memory once per call. Every output is one fixed
 * sequence of operations whatever the tile it falls in (tiles only interleave independent
 * outputs), so a token's outputs are the same bits at any M and in any row range; the order
 * of the sum over k differs from a torch matmul's (tests bound it against an fp64 reference).
 *
 * Threads: OpenMP on torch's pool (see paged_decode.c for why that libgomp), static split of
 * the rows; calls with less than WORK_PER_THREAD weights per thread use fewer threads.
 * Without AVX2/FMA a portable path computes the same sums with plain loops.
 * Built with -O3 -march=native and without -ffast-math (see cpu_build).
 */
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FQ_USE_AVX2 1
#else
#define FQ_USE_AVX2 0
#endif

/* Return codes, mirrored in quant_gemv.py. */
enum { FQ_OK = 0, FQ_ERR_ARGS = 1 };

#define MT 2                  /* tokens per tile */
#define NR_MAX 4              /* weight rows per tile */
#define WORK_PER_THREAD 65536 /* weights per thread at least (a thread hand-off costs a few us) */
#define MAX_THREADS 256

typedef struct {
    const float *x;
    int64_t ldx;
    const void *q;
    const float *scale;
    const float *min; /* int4 only */
    int64_t G;
    const float *bias;
    float *y;
    int64_t ldy, M, K, N;
} job_t;

/* ---- the rows [n0, n1) of the product ------------------------------------------------------ */

#if FQ_USE_AVX2
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* acc[r][t] += w * x[t, k0 .. k0 + 8) for the tile's NT tokens (NT a compile-time 1 or 2). */
#define FMA_TILE(r, w, k0)                                                                       \
    do {                                                                                         \
        acc[r][0] = _mm256_fmadd_ps((w), _mm256_loadu_ps(x0 + (k0)), acc[r][0]);                  \
        if (NT > 1) acc[r][1] = _mm256_fmadd_ps((w), _mm256_loadu_ps(x1 + (k0)), acc[r][1]);      \
    } while (0)

/* y[m0 .. m0 + NT, n .. n + NR) for int8 weights. Per output and group of G weights: two
   accumulators of q * x (8 weights at a time, alternating: 8 independent chains at one token),
   summed, times the group's scale, added into the output's accumulator; what G % 8 leaves
   goes to a scalar sum the same way. The scale is applied once per group, not per weight: one
   FMA per 8 weights instead of a multiply and an FMA. pf: prefetch the rows NR_MAX further. */
static inline __attribute__((always_inline)) void tile_int8(const job_t *j, int64_t n, int64_t m0, const int NR,
                                                            const int NT, const int pf) {
    const int64_t K = j->K, G = j->G, ngroups = K / G;
    const float *x0 = j->x + m0 * j->ldx, *x1 = j->x + (m0 + (NT > 1)) * j->ldx;
    const int8_t *q = (const int8_t *)j->q + n * K;
    const float *sc = j->scale + n * ngroups;
    __m256 acc[NR_MAX][MT], ga[NR_MAX][MT], gb[NR_MAX][MT];
    float tail[NR_MAX][MT];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) {
            acc[r][t] = _mm256_setzero_ps();
            tail[r][t] = 0.0f;
        }
    for (int64_t g = 0; g < ngroups; g++) {
        const int64_t kg = g * G;
        int64_t k = kg;
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++)
                ga[r][t] = gb[r][t] = _mm256_setzero_ps();
        for (; k + 16 <= kg + G; k += 16) {
            if (pf && (k & 63) == 0) /* the next rows, one line per 64 k */
                for (int r = 0; r < NR; r++)
                    _mm_prefetch((const char *)(q + (NR_MAX + r) * K + k), _MM_HINT_T0);
            const __m256 xa0 = _mm256_loadu_ps(x0 + k), xb0 = _mm256_loadu_ps(x0 + k + 8);
            const __m256 xa1 = NT > 1 ? _mm256_loadu_ps(x1 + k) : xa0, xb1 = NT > 1 ? _mm256_loadu_ps(x1 + k + 8) : xb0;
            for (int r = 0; r < NR; r++) {
                const __m128i b16 = _mm_loadu_si128((const __m128i *)(q + r * K + k));
                const __m256 wa = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b16));
                const __m256 wb = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b16, 8)));
                ga[r][0] = _mm256_fmadd_ps(wa, xa0, ga[r][0]);
                gb[r][0] = _mm256_fmadd_ps(wb, xb0, gb[r][0]);
                if (NT > 1) {
                    ga[r][1] = _mm256_fmadd_ps(wa, xa1, ga[r][1]);
                    gb[r][1] = _mm256_fmadd_ps(wb, xb1, gb[r][1]);
                }
            }
        }
        if (k + 8 <= kg + G) {
            for (int r = 0; r < NR; r++) {
                const __m128i b8 = _mm_loadl_epi64((const __m128i *)(q + r * K + k));
                const __m256 wa = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b8));
                ga[r][0] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x0 + k), ga[r][0]);
                if (NT > 1) ga[r][1] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x1 + k), ga[r][1]);
            }
            k += 8;
        }
        for (int r = 0; r < NR; r++) {
            const __m256 vs = _mm256_broadcast_ss(sc + r * ngroups + g);
            for (int t = 0; t < NT; t++)
                acc[r][t] = _mm256_fmadd_ps(_mm256_add_ps(ga[r][t], gb[r][t]), vs, acc[r][t]);
        }
        if (k < kg + G)
            for (int r = 0; r < NR; r++) {
                float s0 = 0.0f, s1 = 0.0f;
                for (int64_t kk = k; kk < kg + G; kk++) {
                    const float w = (float)q[r * K + kk];
                    s0 += w * x0[kk];
                    if (NT > 1) s1 += w * x1[kk];
                }
                tail[r][0] += s0 * sc[r * ngroups + g];
                if (NT > 1) tail[r][1] += s1 * sc[r * ngroups + g];
            }
    }
    const float *bias = j->bias;
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++)
            j->y[(m0 + t) * j->ldy + n + r] = hsum(acc[r][t]) + tail[r][t] + (bias ? bias[n + r] : 0.0f);
}

/* int8: blocks of NR_MAX rows; token pairs in two half-blocks (the registers hold 2 rows x 2
   tokens x 3 accumulators), a last single token over the whole block. */
static void rows_int8(const job_t *j, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + NR_MAX <= n1; n += NR_MAX) {
        const int pf = n + 2 * NR_MAX <= n1;
        int64_t m = 0;
        for (; m + MT <= j->M; m += MT) {
            tile_int8(j, n, m, NR_MAX / 2, MT, pf && m == 0);
            tile_int8(j, n + NR_MAX / 2, m, NR_MAX / 2, MT, pf && m == 0);
        }
        if (m < j->M) tile_int8(j, n, m, NR_MAX, 1, pf && m == 0);
    }
    for (; n < n1; n++) {
        int64_t m = 0;
        for (; m + MT <= j->M; m += MT) tile_int8(j, n, m, 1, MT, 0);
        if (m < j->M) tile_int8(j, n, m, 1, 1, 0);
    }
}

/* The same for int4 weights (nibble layout above). */
static inline __attribute__((always_inline)) void tile_int4(const job_t *j, int64_t n, int64_t m0, const int NR,
                                                            const int NT, const int64_t n_end) {
    const int64_t K = j->K, G = j->G, ngroups = K / G;
    const float *x0 = j->x + m0 * j->ldx, *x1 = j->x + (m0 + (NT > 1)) * j->ldx;
    const uint8_t *q = (const uint8_t *)j->q + n * (K / 2);
    const float *sc = j->scale + n * ngroups, *mn = j->min + n * ngroups;
    const __m256i low4 = _mm256_set1_epi32(0x0F);
    const __m256i sel0 = _mm256_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1,
                                          4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7, -1, -1, -1);
    const __m256i sel1 = _mm256_setr_epi8(8, -1, -1, -1, 9, -1, -1, -1, 10, -1, -1, -1, 11, -1, -1, -1,
                                          12, -1, -1, -1, 13, -1, -1, -1, 14, -1, -1, -1, 15, -1, -1, -1);
    __m256 acc[NR_MAX][MT];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++)
            acc[r][t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ngroups; g++)
        for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
            if (m0 == 0 && (k & 127) == 0 && n + NR + NR <= n_end) /* the next rows, one line per 128 k */
                for (int r = 0; r < NR; r++)
                    _mm_prefetch((const char *)(q + (NR + r) * (K / 2) + k / 2), _MM_HINT_T0);
            for (int r = 0; r < NR; r++) {
                const __m256 vs = _mm256_broadcast_ss(sc + r * ngroups + g), vm = _mm256_broadcast_ss(mn + r * ngroups + g);
                /* both 128-bit lanes hold the block's 16 bytes; byte i goes to dword lane i (sel0)
                   or i - 8 (sel1): its low nibble is weight k + i, its high one k + 16 + i */
                const __m256i bytes = _mm256_broadcastsi128_si256(
                    _mm_loadu_si128((const __m128i *)(q + r * (K / 2) + k / 2)));
                const __m256i b0 = _mm256_shuffle_epi8(bytes, sel0), b1 = _mm256_shuffle_epi8(bytes, sel1);
                __m256 w;
                w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b0, low4)), vs, vm);
                FMA_TILE(r, w, k);
                w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b1, low4)), vs, vm);
                FMA_TILE(r, w, k + 8);
                w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), vs, vm);
                FMA_TILE(r, w, k + 16);
                w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4)), vs, vm);
                FMA_TILE(r, w, k + 24);
            }
        }
    const float *bias = j->bias;
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++)
            j->y[(m0 + t) * j->ldy + n + r] = hsum(acc[r][t]) + (bias ? bias[n + r] : 0.0f);
}

/* Rows in blocks of NR_MAX (then one at a time), tokens in tiles of MT (then one). */
#define ROWS_BY_TILES(tile)                                                                      \
    do {                                                                                         \
        int64_t n = n0;                                                                          \
        for (; n + NR_MAX <= n1; n += NR_MAX) {                                                  \
            int64_t m = 0;                                                                       \
            for (; m + MT <= j->M; m += MT) tile(j, n, m, NR_MAX, MT, n1);                           \
            if (m < j->M) tile(j, n, m, NR_MAX, 1, n1);                                              \
        }                                                                                        \
        for (; n < n1; n++) {                                                                    \
            int64_t m = 0;                                                                       \
            for (; m + MT <= j->M; m += MT) tile(j, n, m, 1, MT, n1);                                \
            if (m < j->M) tile(j, n, m, 1, 1, n1);                                                   \
        }                                                                                        \
    } while (0)

static void rows_int4(const job_t *j, int64_t n0, int64_t n1) { ROWS_BY_TILES(tile_int4); }

#else /* portable: the same sums, one output at a time */

static void rows_int8(const job_t *j, int64_t n0, int64_t n1) {
    const int64_t K = j->K, G = j->G, ngroups = K / G;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *qr = (const int8_t *)j->q + n * K;
        const float *sr = j->scale + n * ngroups;
        const float b = j->bias ? j->bias[n] : 0.0f;
        for (int64_t m = 0; m < j->M; m++) {
            const float *x = j->x + m * j->ldx;
            float sum = 0.0f;
            for (int64_t g = 0; g < ngroups; g++)
                for (int64_t k = g * G; k < (g + 1) * G; k++)
                    sum += (float)qr[k] * sr[g] * x[k];
            j->y[m * j->ldy + n] = sum + b;
        }
    }
}

static void rows_int4(const job_t *j, int64_t n0, int64_t n1) {
    const int64_t K = j->K, G = j->G, ngroups = K / G;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *qr = (const uint8_t *)j->q + n * (K / 2);
        const float *sr = j->scale + n * ngroups, *mr = j->min + n * ngroups;
        const float b = j->bias ? j->bias[n] : 0.0f;
        for (int64_t m = 0; m < j->M; m++) {
            const float *x = j->x + m * j->ldx;
            float sum = 0.0f;
            for (int64_t g = 0; g < ngroups; g++) {
                const float s = sr[g], mn = mr[g];
                for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
                    const uint8_t *blk = qr + k / 2;
                    for (int i = 0; i < 16; i++) {
                        const float wl = (float)(blk[i] & 0x0F) * s + mn, wh = (float)(blk[i] >> 4) * s + mn;
                        sum += wl * x[k + i] + wh * x[k + 16 + i];
                    }
                }
            }
            j->y[m * j->ldy + n] = sum + b;
        }
    }
}
#endif

/* ---- entry points ------------------------------------------------------------------------- */

int fq_uses_avx2(void) { return FQ_USE_AVX2; }

static int run(const job_t *job, int is_int4, int nthreads) {
    if (job->M < 0 || job->K < 1 || job->N < 0 || job->G < 1 || job->K % job->G != 0 || job->ldx < job->K ||
        job->ldy < job->N || (is_int4 && job->G % 32 != 0))
        return FQ_ERR_ARGS;
    if (job->M == 0 || job->N == 0)
        return FQ_OK;
    int64_t n = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    const int64_t by_work = (job->N * job->K) / WORK_PER_THREAD;
    if (n > by_work) n = by_work < 1 ? 1 : by_work;
    if (n > job->N) n = job->N;
    if (n <= 1) {
        (is_int4 ? rows_int4 : rows_int8)(job, 0, job->N);
        return FQ_OK;
    }
#pragma omp parallel num_threads((int)n)
    {
#ifdef _OPENMP
        const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int64_t tid = 0, nt = 1;
#endif
        const int64_t n0 = job->N * tid / nt, n1 = job->N * (tid + 1) / nt;
        (is_int4 ? rows_int4 : rows_int8)(job, n0, n1);
    }
    return FQ_OK;
}

/* y = x @ dequant(q)^T + bias with int8 weights; 0 or FQ_ERR_ARGS (y untouched). */
int fq_linear_int8(const float *x, int64_t ldx, const int8_t *q, const float *scale, int64_t G, const float *bias,
                   float *y, int64_t ldy, int64_t M, int64_t K, int64_t N, int nthreads) {
    const job_t job = {x, ldx, q, scale, NULL, G, bias, y, ldy, M, K, N};
    return run(&job, 0, nthreads);
}

/* The same with int4 weights (nibble layout above; G a multiple of 32). */
int fq_linear_int4(const float *x, int64_t ldx, const uint8_t *q, const float *scale, const float *min, int64_t G,
                   const float *bias, float *y, int64_t ldy, int64_t M, int64_t K, int64_t N, int nthreads) {
    const job_t job = {x, ldx, q, scale, min, G, bias, y, ldy, M, K, N};
    return run(&job, 1, nthreads);
}

/* out [N, K] fp32 (row stride ldo >= K) = dequantize(q): the weight of rows the GEMV does not
   serve well (prefill-sized M), for an fp32 GEMM after it. is_int4 picks the format; min is
   ignored for int8. 0 or FQ_ERR_ARGS. Values equal rows_int8's / rows_int4's in-register ones. */
int fq_dequantize(const void *q, const float *scale, const float *min, int64_t G, int is_int4, float *out,
                  int64_t ldo, int64_t K, int64_t N, int nthreads) {
    if (K < 1 || N < 0 || G < 1 || K % G != 0 || ldo < K || (is_int4 && G % 32 != 0))
        return FQ_ERR_ARGS;
    const int64_t ngroups = K / G;
    int64_t n_threads = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    if (n_threads > (N * K) / WORK_PER_THREAD) n_threads = (N * K) / WORK_PER_THREAD < 1 ? 1 : (N * K) / WORK_PER_THREAD;
#pragma omp parallel for schedule(static) num_threads((int)n_threads)
    for (int64_t n = 0; n < N; n++) {
        float *o = out + n * ldo;
        const float *sr = scale + n * ngroups;
        if (!is_int4) {
            const int8_t *qr = (const int8_t *)q + n * K;
            for (int64_t g = 0; g < ngroups; g++) {
                const float s = sr[g];
                for (int64_t k = g * G; k < (g + 1) * G; k++)
                    o[k] = (float)qr[k] * s;
            }
        } else {
            const uint8_t *qr = (const uint8_t *)q + n * (K / 2);
            const float *mr = min + n * ngroups;
            for (int64_t k = 0; k < K; k += 32) {
                const float s = sr[k / G], mn = mr[k / G];
                for (int i = 0; i < 16; i++) {
                    o[k + i] = fmaf((float)(qr[k / 2 + i] & 0x0F), s, mn);
                    o[k + 16 + i] = fmaf((float)(qr[k / 2 + i] >> 4), s, mn);
                }
            }
        }
    }
    return FQ_OK;
}
