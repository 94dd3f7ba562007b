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
 * Scheme (AVX2 + FMA): each thread takes a contiguous range of output rows n; for each row,
 * the tokens in tiles of up to MT = 4. For 8 weights at a time: load (int8: vpmovsxbd; int4:
 * 4 bytes' nibbles, masked and shifted, vpmovzxbd), convert to fp32, multiply by the group's
 * scale (int4: one FMA with scale and min), then one FMA per token of the tile into its own
 * accumulator. The row's quantized bytes (<= 1.5 KB at K = 1536) stay in L1 for the next tile
 * of tokens, so each weight byte comes from memory once per call. The dequantized value is
 * exactly what quantization.dequantize computes (q * s, or q * s + min rounded once by the FMA
 * instead of twice); only the order of the sum over k differs from a torch matmul.
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

#define MT 4                  /* tokens per tile */
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

/* acc[t] += w * x[t, k0 .. k0 + 8) for the tile's nt tokens. */
#define FMA_TILE(w, k0)                                                                          \
    do {                                                                                         \
        acc[0] = _mm256_fmadd_ps((w), _mm256_loadu_ps(xt[0] + (k0)), acc[0]);                     \
        if (nt > 1) acc[1] = _mm256_fmadd_ps((w), _mm256_loadu_ps(xt[1] + (k0)), acc[1]);         \
        if (nt > 2) acc[2] = _mm256_fmadd_ps((w), _mm256_loadu_ps(xt[2] + (k0)), acc[2]);         \
        if (nt > 3) acc[3] = _mm256_fmadd_ps((w), _mm256_loadu_ps(xt[3] + (k0)), acc[3]);         \
    } while (0)
#endif

static void rows_int8(const job_t *j, int64_t n0, int64_t n1) {
    const int64_t K = j->K, G = j->G, ngroups = K / G;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *qr = (const int8_t *)j->q + n * K;
        const float *sr = j->scale + n * ngroups;
        const float b = j->bias ? j->bias[n] : 0.0f;
        for (int64_t m0 = 0; m0 < j->M; m0 += MT) {
            const int nt = (int)(j->M - m0 < MT ? j->M - m0 : MT);
            const float *xt[MT];
            for (int t = 0; t < MT; t++)
                xt[t] = j->x + (m0 + (t < nt ? t : 0)) * j->ldx;
            float tail[MT] = {0.0f, 0.0f, 0.0f, 0.0f};
#if FQ_USE_AVX2
            __m256 acc[MT] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
#endif
            for (int64_t g = 0; g < ngroups; g++) {
                const int64_t kg = g * G;
                const float s = sr[g];
                int64_t k = kg;
#if FQ_USE_AVX2
                const __m256 vs = _mm256_set1_ps(s);
                for (; k + 8 <= kg + G; k += 8) {
                    __m128i b8 = _mm_loadl_epi64((const __m128i *)(qr + k));
                    __m256 w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b8)), vs);
                    FMA_TILE(w, k);
                }
#endif
                for (; k < kg + G; k++) {
                    const float w = (float)qr[k] * s;
                    for (int t = 0; t < nt; t++)
                        tail[t] += w * xt[t][k];
                }
            }
            for (int t = 0; t < nt; t++) {
#if FQ_USE_AVX2
                float sum = hsum(acc[t]) + tail[t];
#else
                float sum = tail[t];
#endif
                j->y[(m0 + t) * j->ldy + n] = sum + b;
            }
        }
    }
}

static void rows_int4(const job_t *j, int64_t n0, int64_t n1) {
    const int64_t K = j->K, G = j->G, ngroups = K / G;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *qr = (const uint8_t *)j->q + n * (K / 2);
        const float *sr = j->scale + n * ngroups, *mr = j->min + n * ngroups;
        const float b = j->bias ? j->bias[n] : 0.0f;
        for (int64_t m0 = 0; m0 < j->M; m0 += MT) {
            const int nt = (int)(j->M - m0 < MT ? j->M - m0 : MT);
            const float *xt[MT];
            for (int t = 0; t < MT; t++)
                xt[t] = j->x + (m0 + (t < nt ? t : 0)) * j->ldx;
#if FQ_USE_AVX2
            __m256 acc[MT] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            const __m128i low4 = _mm_set1_epi8(0x0F);
            for (int64_t g = 0; g < ngroups; g++) {
                const __m256 vs = _mm256_set1_ps(sr[g]), vm = _mm256_set1_ps(mr[g]);
                for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
                    const __m128i bytes = _mm_loadu_si128((const __m128i *)(qr + k / 2));
                    const __m128i lo = _mm_and_si128(bytes, low4);                    /* weights k .. k+16 */
                    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4); /* k+16 .. k+32 */
                    __m256 w;
                    w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), vs, vm);
                    FMA_TILE(w, k);
                    w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), vs, vm);
                    FMA_TILE(w, k + 8);
                    w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), vs, vm);
                    FMA_TILE(w, k + 16);
                    w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), vs, vm);
                    FMA_TILE(w, k + 24);
                }
            }
            for (int t = 0; t < nt; t++)
                j->y[(m0 + t) * j->ldy + n] = hsum(acc[t]) + b;
#else
            float sum[MT] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t g = 0; g < ngroups; g++) {
                const float s = sr[g], mn = mr[g];
                for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
                    const uint8_t *blk = qr + k / 2;
                    for (int i = 0; i < 16; i++) {
                        const float wl = (float)(blk[i] & 0x0F) * s + mn, wh = (float)(blk[i] >> 4) * s + mn;
                        for (int t = 0; t < nt; t++)
                            sum[t] += wl * xt[t][k + i] + wh * xt[t][k + 16 + i];
                    }
                }
            }
            for (int t = 0; t < nt; t++)
                j->y[(m0 + t) * j->ldy + n] = sum[t] + b;
#endif
        }
    }
}

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
