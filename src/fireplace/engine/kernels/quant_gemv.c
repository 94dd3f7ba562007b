/*
 * Weight-only quantized linear layer on CPU. For small batches (the GEMV below) the weight is
 * read in its quantized form and dequantized in registers, never written out as fp32 (or, in
 * the fq_linear_*_q8 twins further down, multiplied in integers with activations rounded to
 * int8); for batch-sized M, fq_gemm at the end of this file dequantizes a block of rows at a time.
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
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FQ_USE_AVX2 1
#else
#define FQ_USE_AVX2 0
#endif
/* AVX-512 with VNNI (vpdpbusd): the int8-activation int4 GEMV takes four blocks per 64-byte
   load (tile_q4_quads); 256-bit vpdpbusd (AVX512-VL or AVX-VNNI) replaces vpmaddubsw + vpmaddwd
   in the 256-bit steps. The integer sums are the same either way (exact, see below). */
#if FQ_USE_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define FQ_USE_VNNI512 1
#else
#define FQ_USE_VNNI512 0
#endif
#if FQ_USE_AVX2 && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
#define FQ_USE_VNNI256 1
#else
#define FQ_USE_VNNI256 0
#endif

/* Return codes, mirrored in quant_gemv.py. */
enum { FQ_OK = 0, FQ_ERR_ARGS = 1, FQ_ERR_UNSUPPORTED = 2 };

#define MT 2                  /* tokens per tile */
#define NR_MAX 4              /* weight rows per tile */
#define WORK_PER_THREAD 65536 /* weights per thread at least (a thread hand-off costs a few us) */
#define MAX_THREADS 256

/* Inside a parallel region: this thread's index and the team size (0 and 1 without OpenMP). */
#ifdef _OPENMP
#define THREAD_IDS(tid, nt) const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads()
#else
#define THREAD_IDS(tid, nt) const int64_t tid = 0, nt = 1
#endif

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
#if defined(__AVX512F__)
        /* AVX-512: 16 weights per vpmovsxbd + convert + FMA, a third of the 256-bit path's
           shuffles (on a 2-core Xeon VM whose memory was shared with other load: 18.9-19.6
           vs 17.1-18.2 GB/s over SmolLM2's 30 layers); the halves of the 16-lane sums then
           stand for ga and gb. */
        {
            __m512 gz[NR_MAX][MT];
            for (int r = 0; r < NR; r++)
                for (int t = 0; t < NT; t++) gz[r][t] = _mm512_setzero_ps();
            for (; k + 16 <= kg + G; k += 16) {
                if (pf && (k & 63) == 0) /* the next rows, one line per 64 k */
                    for (int r = 0; r < NR; r++)
                        _mm_prefetch((const char *)(q + (NR_MAX + r) * K + k), _MM_HINT_T0);
                const __m512 x0z = _mm512_loadu_ps(x0 + k), x1z = NT > 1 ? _mm512_loadu_ps(x1 + k) : x0z;
                for (int r = 0; r < NR; r++) {
                    const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + r * K + k))));
                    gz[r][0] = _mm512_fmadd_ps(w, x0z, gz[r][0]);
                    if (NT > 1) gz[r][1] = _mm512_fmadd_ps(w, x1z, gz[r][1]);
                }
            }
            for (int r = 0; r < NR; r++)
                for (int t = 0; t < NT; t++) {
                    ga[r][t] = _mm512_castps512_ps256(gz[r][t]);
                    gb[r][t] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(gz[r][t]), 1));
                }
        }
#endif
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

/* Rows [n0, n1) in blocks of NR_MAX (then one at a time), tokens in tiles of MT (then one);
   tile(arg, n, m, rows, tokens, n1); j->M the token count. */
#define ROWS_BY_TILES_OF(tile, arg)                                                              \
    do {                                                                                         \
        int64_t n = n0;                                                                          \
        for (; n + NR_MAX <= n1; n += NR_MAX) {                                                  \
            int64_t m = 0;                                                                       \
            for (; m + MT <= j->M; m += MT) tile(arg, n, m, NR_MAX, MT, n1);                     \
            if (m < j->M) tile(arg, n, m, NR_MAX, 1, n1);                                        \
        }                                                                                        \
        for (; n < n1; n++) {                                                                    \
            int64_t m = 0;                                                                       \
            for (; m + MT <= j->M; m += MT) tile(arg, n, m, 1, MT, n1);                          \
            if (m < j->M) tile(arg, n, m, 1, 1, n1);                                             \
        }                                                                                        \
    } while (0)

static void rows_int4(const job_t *j, int64_t n0, int64_t n1) { ROWS_BY_TILES_OF(tile_int4, j); }

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

/* ---- int8 activations: integer dot products per block of 32 ---------------------------------
 *
 * fq_linear_int8_q8 / fq_linear_int4_q8: the same products with each token's x first quantized
 * to int8 in blocks of QB = 32 values (the scheme of llama.cpp's Q8 dot products): per block b
 *   xs[b] = amax|x[32 b .. 32 b + 32)| / 127,  xq[k] = round_half_even(x[k] * (1 / xs[b]))  (0 when amax = 0)
 * and then, with the group g of block b (G a multiple of QB),
 *   int8  y[m, n] = sum_b (scale[n, g] * xs[b]) * sum_{k in b} q[n, k] * xq[k]
 *   int4  y[m, n] = sum_b (scale[n, g] * xs[b]) * sum_{k in b} nib(n, k) * xq[k]
 *                 + sum_g min[n, g] * sum_{k in g} x[k]           (x itself, not xq: exact)
 * The inner sums are exact integers (vpmaddubsw: u8 x s8 pairs into int16, which cannot
 * saturate: int8 |q| <= 128 against |xq| <= 127 gives at most 2 * 128 * 127 = 32512, int4 15 *
 * 127 * 2; vpmaddwd then adds pairs into int32); each block adds one fp32 FMA. Why: the fp32
 * path spends ~19 instructions per 32 int4 weights (shuffle, mask, convert, two FMAs per 8) and
 * runs out of issue slots before the memory does (int4 ~16 GB/s of a 35 GB/s read bandwidth on a
 * Zen 3); here int4 takes ~11 per 64 (two blocks at a time, tile_q4_pairs), int8 ~8 per 32;
 * with AVX-512 VNNI int4 takes ~10 per 128 (four blocks at a time, tile_q4_quads).
 * What it costs is the activations' rounding: at most half a
 * step of xs per value, the error llama.cpp accepts; bench/single_stream.py states the
 * perplexity of each precision. The fp32 entry points above stay exact up to rounding.
 *
 * The quantized tokens live in one scratch buffer per call (malloc: M * K bytes and K / 32
 * floats per token, plus K / G group sums for int4), written before the threads split the rows.
 * Sizes the scheme cannot take (K or G not a multiple of QB) run the fp32-activation path: the
 * result is then that path's. Same tiling, prefetch and threading as above; every output is one
 * fixed sequence of operations, so a token's outputs are the same bits at any M. */
#define QB 32
#ifndef Q8_PF_ROWS
#define Q8_PF_ROWS 16
#endif

typedef struct {
    const job_t *j;
    const int8_t *xq;  /* [M, K] */
    const float *xs;   /* [M, K / QB] */
    const float *xg;   /* [M, K / G] (int4) */
} q8job_t;

/* Each run of P blocks of a token's xq (P = 4 from b = 0 while 4 fit, then 2, then 1) stored
   interleaved as [low halves of its P blocks in order | their high halves], i.e. for a pair
   [b 0..15 | b+1 0..15 | b 16..31 | b+1 16..31]: the order of the nibbles of the run's int4
   bytes split into low and high halves (tile_q4_pairs with P = 2, tile_q4_quads with P = 4). */
static void interleave_blocks(int8_t *q, int64_t nb, int P) {
    int64_t b = 0;
    for (int p = P; p >= 2; p /= 2)
        for (; b + p <= nb; b += p) {
            int8_t tmp[4 * QB];
            memcpy(tmp, q + b * QB, (size_t)p * QB);
            for (int i = 0; i < p; i++) {
                memcpy(q + b * QB + 16 * i, tmp + i * QB, 16);
                memcpy(q + b * QB + 16 * (p + i), tmp + i * QB + 16, 16);
            }
        }
}

/* xq, xs (and xg when not NULL) of the M tokens of x; P > 1: xq interleaved as above. */
static void quantize_tokens(const job_t *j, int8_t *xq, float *xs, float *xg, int P) {
    const int64_t K = j->K, nb = K / QB, ng = K / j->G;
    for (int64_t m = 0; m < j->M; m++) {
        const float *x = j->x + m * j->ldx;
        int8_t *q = xq + m * K;
        for (int64_t b = 0; b < nb; b++) {
            const float *v = x + b * QB;
            float amax = 0.0f;
#if FQ_USE_AVX2
            const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
            __m256 mx = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
            for (int i = 0; i < QB; i += 8) {
                const __m256 vi = _mm256_loadu_ps(v + i);
                mx = _mm256_max_ps(mx, _mm256_and_ps(vi, absmask));
                nan = _mm256_or_ps(nan, _mm256_cmp_ps(vi, vi, _CMP_UNORD_Q)); /* max_ps drops NaNs */
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            amax = _mm256_movemask_ps(nan) ? NAN : _mm_cvtss_f32(m4);
#else
            for (int i = 0; i < QB; i++) amax = (fabsf(v[i]) > amax || isnan(v[i])) ? fabsf(v[i]) : amax;
#endif
            /* a NaN (or inf) value makes xs NaN (inf), so the block's products are NaN, as in fp32 */
            const float d = amax / 127.0f, id = amax != 0.0f ? 1.0f / d : 0.0f;
            xs[m * nb + b] = d;
#if FQ_USE_AVX2
            const __m256 vid = _mm256_set1_ps(id);
            __m256i i32[4];
            for (int i = 0; i < 4; i++)
                i32[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + 8 * i), vid),
                                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            /* packs interleave the 128-bit lanes; the permute puts the 32 values back in order */
            const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]), _mm256_packs_epi32(i32[2], i32[3]));
            _mm256_storeu_si256((__m256i *)(q + b * QB),
                                _mm256_permutevar8x32_epi32(p16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
            for (int i = 0; i < QB; i++) q[b * QB + i] = (int8_t)nearbyintf(v[i] * id);
#endif
        }
        if (P > 1) interleave_blocks(q, nb, P);
        if (xg)
            for (int64_t g = 0; g < ng; g++) {
                float s = 0.0f;
                for (int64_t k = g * j->G; k < (g + 1) * j->G; k++) s += x[k];
                xg[m * ng + g] = s;
            }
    }
}

#if FQ_USE_AVX2
/* sum of the 4 u8 x s8 products of each dword lane, as int32 (exact: see the bounds above) */
static inline __m256i dot_lanes(__m256i w, __m256i x) {
#if FQ_USE_VNNI256 && defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
#elif FQ_USE_VNNI256
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
#endif
}

/* One block's exact integer dot product, as 8 int32 lanes converted to fp32: w unsigned bytes
   (int4 nibbles, or |q| for int8), xs signed bytes (for int8 x with q's sign). */
static inline __m256 dot_block(__m256i w, __m256i x) { return _mm256_cvtepi32_ps(dot_lanes(w, x)); }

/* The two dot products of a pair (lo x xa + hi x xb per lane) as fp32; vpmaddubsw's int16 sums
   of the two halves cannot overflow (<= 2 * 3810). */
static inline __m256 dot_pair(__m256i lo, __m256i hi, __m256i xa, __m256i xb) {
#if FQ_USE_VNNI256
    return _mm256_cvtepi32_ps(_mm256_add_epi32(dot_lanes(lo, xa), dot_lanes(hi, xb)));
#else
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa), _mm256_maddubs_epi16(hi, xb));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

/* y[m0 .. m0 + NT, n .. n + NR) for int8 weights (NT a compile-time 1 or 2): per block, |q| and
   x with q's sign (vpsignb), so that the unsigned x signed product of vpmaddubsw is q * x. */
static inline __attribute__((always_inline)) void tile_q8_int8(const q8job_t *qj, int64_t n, int64_t m0,
                                                               const int NR, const int NT, const int64_t n_end) {
    const job_t *j = qj->j;
    const int64_t K = j->K, G = j->G, ngroups = K / G, nb = K / QB, per_group = G / QB;
    const int8_t *q = (const int8_t *)j->q + n * K;
    const float *sc = j->scale + n * ngroups;
    const int8_t *xq0 = qj->xq + m0 * K, *xq1 = qj->xq + (m0 + (NT > 1)) * K;
    const float *xs0 = qj->xs + m0 * nb, *xs1 = qj->xs + (m0 + (NT > 1)) * nb;
    __m256 acc[NR_MAX][MT];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t g = 0, left = per_group; /* block b's group, and its blocks from b on */
    for (int64_t b = 0; b < nb; b++) {
        if (m0 == 0 && (b & 1) == 0 && n + NR + NR <= n_end) /* the next rows, one line per 2 blocks */
            for (int r = 0; r < NR; r++) _mm_prefetch((const char *)(q + (NR + r) * K + b * QB), _MM_HINT_T0);
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq0 + b * QB));
        const __m256i x1 = NT > 1 ? _mm256_loadu_si256((const __m256i *)(xq1 + b * QB)) : x0;
        for (int r = 0; r < NR; r++) {
            const float s = sc[r * ngroups + g];
            const __m256i w = _mm256_loadu_si256((const __m256i *)(q + r * K + b * QB));
            const __m256i aw = _mm256_sign_epi8(w, w); /* |q| as unsigned bytes (-128 -> 128) */
            acc[r][0] = _mm256_fmadd_ps(dot_block(aw, _mm256_sign_epi8(x0, w)), _mm256_set1_ps(s * xs0[b]), acc[r][0]);
            if (NT > 1)
                acc[r][1] = _mm256_fmadd_ps(dot_block(aw, _mm256_sign_epi8(x1, w)), _mm256_set1_ps(s * xs1[b]),
                                            acc[r][1]);
        }
        if (--left == 0) {
            g++;
            left = per_group;
        }
    }
    const float *bias = j->bias;
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) j->y[(m0 + t) * j->ldy + n + r] = hsum(acc[r][t]) + (bias ? bias[n + r] : 0.0f);
}

/* The int4 int8-activation tiles (tile_q4_pairs, tile_q4_quads) share what one tile reads,
   the steps over a pair or a single block into 256-bit accumulators, and the store. */
typedef struct {
    const uint8_t *q;           /* the tile's first row */
    const float *sc, *mn;       /* its scales and mins, [NR, ngroups] rows apart */
    const int8_t *xq0, *xq1;    /* the tile's tokens (xq1 = xq0 at NT = 1) */
    const float *xs0, *xs1;
    int64_t row_bytes, ngroups, per_group, nb;
} q4tile_t;

static inline q4tile_t q4_tile(const q8job_t *qj, int64_t n, int64_t m0, const int NT) {
    const job_t *j = qj->j;
    const int64_t K = j->K, ngroups = K / j->G, nb = K / QB;
    const q4tile_t t = {(const uint8_t *)j->q + n * (K / 2), j->scale + n * ngroups, j->min + n * ngroups,
                        qj->xq + m0 * K, qj->xq + (m0 + (NT > 1)) * K, qj->xs + m0 * nb,
                        qj->xs + (m0 + (NT > 1)) * nb, K / 2, ngroups, j->G / QB, nb};
    return t;
}

/* Blocks b, b + 1: the rows' 32 bytes give, masked and shifted, all 64 nibbles in two vectors
   whose byte order is the pair layout of interleave_blocks, so one pair costs two dot products
   + 1 convert + 1 FMA, lanes 0-3 for block b, 4-7 for b + 1 (their scales in the matching
   halves of the multiplier): ~11 instructions per 64 weights against ~18 a block at a time. */
static inline __attribute__((always_inline)) void q4_pair_step(const q4tile_t *t, int64_t b, const int NR,
                                                               const int NT, __m256 acc[NR_MAX][MT]) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const int64_t g0 = b / t->per_group, g1 = (b + 1) / t->per_group;
    const __m256i xa0 = _mm256_loadu_si256((const __m256i *)(t->xq0 + b * QB));
    const __m256i xb0 = _mm256_loadu_si256((const __m256i *)(t->xq0 + b * QB + 32));
    const __m256i xa1 = NT > 1 ? _mm256_loadu_si256((const __m256i *)(t->xq1 + b * QB)) : xa0;
    const __m256i xb1 = NT > 1 ? _mm256_loadu_si256((const __m256i *)(t->xq1 + b * QB + 32)) : xb0;
    const __m256 d0 = _mm256_set_m128(_mm_set1_ps(t->xs0[b + 1]), _mm_set1_ps(t->xs0[b]));
    const __m256 d1 = NT > 1 ? _mm256_set_m128(_mm_set1_ps(t->xs1[b + 1]), _mm_set1_ps(t->xs1[b])) : d0;
    for (int r = 0; r < NR; r++) {
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(t->q + r * t->row_bytes + b * 16));
        const __m256i lo = _mm256_and_si256(raw, low4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
        const float *sr = t->sc + r * t->ngroups;
        const __m256 s = _mm256_set_m128(_mm_set1_ps(sr[g1]), _mm_set1_ps(sr[g0]));
        acc[r][0] = _mm256_fmadd_ps(dot_pair(lo, hi, xa0, xb0), _mm256_mul_ps(s, d0), acc[r][0]);
        if (NT > 1) acc[r][1] = _mm256_fmadd_ps(dot_pair(lo, hi, xa1, xb1), _mm256_mul_ps(s, d1), acc[r][1]);
    }
}

/* Block b alone (the odd last block, stored as is). */
static inline __attribute__((always_inline)) void q4_single_step(const q4tile_t *t, int64_t b, const int NR,
                                                                 const int NT, __m256 acc[NR_MAX][MT]) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const int64_t g = b / t->per_group;
    const __m256i x0 = _mm256_loadu_si256((const __m256i *)(t->xq0 + b * QB));
    const __m256i x1 = NT > 1 ? _mm256_loadu_si256((const __m256i *)(t->xq1 + b * QB)) : x0;
    for (int r = 0; r < NR; r++) {
        const float s = t->sc[r * t->ngroups + g];
        const __m128i raw = _mm_loadu_si128((const __m128i *)(t->q + r * t->row_bytes + b * QB / 2));
        const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low4);
        acc[r][0] = _mm256_fmadd_ps(dot_block(w, x0), _mm256_set1_ps(s * t->xs0[b]), acc[r][0]);
        if (NT > 1) acc[r][1] = _mm256_fmadd_ps(dot_block(w, x1), _mm256_set1_ps(s * t->xs1[b]), acc[r][1]);
    }
}

/* y = the accumulators' sums + sum_g min * xg + bias. */
static inline __attribute__((always_inline)) void q4_store(const q8job_t *qj, const q4tile_t *t, int64_t n,
                                                           int64_t m0, const int NR, const int NT,
                                                           __m256 acc[NR_MAX][MT]) {
    const job_t *j = qj->j;
    const int64_t ngroups = t->ngroups;
    for (int r = 0; r < NR; r++)
        for (int k = 0; k < NT; k++) {
            __m256 sum = acc[r][k];
            float tail = 0.0f;
            const float *xg = qj->xg + (m0 + k) * ngroups, *mr = t->mn + r * ngroups;
            int64_t g = 0;
            for (; g + 8 <= ngroups; g += 8) sum = _mm256_fmadd_ps(_mm256_loadu_ps(mr + g), _mm256_loadu_ps(xg + g), sum);
            for (; g < ngroups; g++) tail = fmaf(mr[g], xg[g], tail);
            j->y[(m0 + k) * j->ldy + n + r] = hsum(sum) + tail + (j->bias ? j->bias[n + r] : 0.0f);
        }
}

/* int4 two blocks at a time (the AVX2 layout P = 2), then an odd last block. */
static inline __attribute__((always_inline)) void tile_q4_pairs(const q8job_t *qj, int64_t n, int64_t m0,
                                                                const int NR, const int NT, const int64_t n_end) {
    const q4tile_t t = q4_tile(qj, n, m0, NT);
    __m256 acc[NR_MAX][MT];
    for (int r = 0; r < NR; r++)
        for (int k = 0; k < NT; k++) acc[r][k] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= t.nb; b += 2) {
        if (m0 == 0 && (b & 3) == 0 && n + NR + NR <= n_end) /* the next rows, one line per 4 blocks */
            for (int r = 0; r < NR; r++)
                _mm_prefetch((const char *)(t.q + (NR + r) * t.row_bytes + b * 16), _MM_HINT_T0);
        q4_pair_step(&t, b, NR, NT, acc);
    }
    if (b < t.nb) q4_single_step(&t, b, NR, NT, acc);
    q4_store(qj, &t, n, m0, NR, NT, acc);
}

#if FQ_USE_VNNI512
/* int4 four blocks at a time (layout P = 4): a row's 64 bytes for blocks b .. b + 3 masked and
   shifted into two 512-bit vectors, two vpdpbusd into int32 lanes (lanes 4i .. 4i + 3 for block
   b + i), one convert and one FMA with the four blocks' scale x xs spread over their lanes:
   ~10 instructions per 128 weights. What is left after the quads (a pair, an odd block) takes
   the 256-bit steps, into the same sums. */
static inline __attribute__((always_inline)) void tile_q4_quads(const q8job_t *qj, int64_t n, int64_t m0,
                                                                const int NR, const int NT, const int64_t n_end) {
    const q4tile_t t = q4_tile(qj, n, m0, NT);
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512 wide[NR_MAX][MT];
    for (int r = 0; r < NR; r++)
        for (int k = 0; k < NT; k++) wide[r][k] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= t.nb; b += 4) {
        if (m0 == 0 && n + NR + NR <= n_end) /* the next rows, one line per quad */
            for (int r = 0; r < NR; r++)
                _mm_prefetch((const char *)(t.q + (NR + r) * t.row_bytes + b * 16), _MM_HINT_T0);
        const __m512i xa0 = _mm512_loadu_si512(t.xq0 + b * QB), xb0 = _mm512_loadu_si512(t.xq0 + b * QB + 64);
        const __m512i xa1 = NT > 1 ? _mm512_loadu_si512(t.xq1 + b * QB) : xa0;
        const __m512i xb1 = NT > 1 ? _mm512_loadu_si512(t.xq1 + b * QB + 64) : xb0;
        const __m512 d0 = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(t.xs0 + b)));
        const __m512 d1 =
            NT > 1 ? _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(t.xs1 + b))) : d0;
        for (int r = 0; r < NR; r++) {
            const __m512i raw = _mm512_loadu_si512(t.q + r * t.row_bytes + b * 16);
            const __m512i lo = _mm512_and_si512(raw, low4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
            const float *sr = t.sc + r * t.ngroups;
            const int64_t pg = t.per_group;
            const __m128 s4 = pg == 1 ? _mm_loadu_ps(sr + b)
                                      : _mm_setr_ps(sr[b / pg], sr[(b + 1) / pg], sr[(b + 2) / pg], sr[(b + 3) / pg]);
            const __m512 s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(s4));
            const __m512i p0 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xa0), hi, xb0);
            wide[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_mul_ps(s, d0), wide[r][0]);
            if (NT > 1) {
                const __m512i p1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xa1), hi, xb1);
                wide[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_mul_ps(s, d1), wide[r][1]);
            }
        }
    }
    __m256 acc[NR_MAX][MT];
    for (int r = 0; r < NR; r++)
        for (int k = 0; k < NT; k++)
            acc[r][k] = _mm256_add_ps(_mm512_castps512_ps256(wide[r][k]),
                                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(wide[r][k]), 1)));
    if (b + 2 <= t.nb) {
        q4_pair_step(&t, b, NR, NT, acc);
        b += 2;
    }
    if (b < t.nb) q4_single_step(&t, b, NR, NT, acc);
    q4_store(qj, &t, n, m0, NR, NT, acc);
}
#define TILE_Q4 tile_q4_quads
#define Q4_INTERLEAVE 4
#else
#define TILE_Q4 tile_q4_pairs
#define Q4_INTERLEAVE 2
#endif

static void rows_q8_int8(const q8job_t *qj, int64_t n0, int64_t n1) {
    const job_t *j = qj->j;
    ROWS_BY_TILES_OF(tile_q8_int8, qj);
}
static void rows_q8_int4(const q8job_t *qj, int64_t n0, int64_t n1) {
    const job_t *j = qj->j;
    ROWS_BY_TILES_OF(TILE_Q4, qj);
}

#else /* portable: the same sums, one output at a time */
#define Q4_INTERLEAVE 1 /* xq as is */

static void rows_q8(const q8job_t *qj, int64_t n0, int64_t n1, int is_int4) {
    const job_t *j = qj->j;
    const int64_t K = j->K, G = j->G, ngroups = K / G, nb = K / QB;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < j->M; m++) {
            const int8_t *xq = qj->xq + m * K;
            float v = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int32_t dot = 0;
                for (int i = 0; i < QB; i++) {
                    const int64_t k = b * QB + i;
                    int32_t w;
                    if (is_int4) {
                        const uint8_t byte = ((const uint8_t *)j->q)[n * (K / 2) + b * (QB / 2) + i % 16];
                        w = i < 16 ? (byte & 0x0F) : (byte >> 4);
                    } else {
                        w = ((const int8_t *)j->q)[n * K + k];
                    }
                    dot += w * xq[k];
                }
                v = fmaf((float)dot, j->scale[n * ngroups + b * QB / G] * qj->xs[m * nb + b], v);
            }
            if (is_int4)
                for (int64_t g = 0; g < ngroups; g++) v = fmaf(j->min[n * ngroups + g], qj->xg[m * ngroups + g], v);
            j->y[m * j->ldy + n] = v + (j->bias ? j->bias[n] : 0.0f);
        }
}
static void rows_q8_int8(const q8job_t *qj, int64_t n0, int64_t n1) { rows_q8(qj, n0, n1, 0); }
static void rows_q8_int4(const q8job_t *qj, int64_t n0, int64_t n1) { rows_q8(qj, n0, n1, 1); }
#endif

/* ---- entry points ------------------------------------------------------------------------- */

int fq_uses_avx2(void) { return FQ_USE_AVX2; }

/* Whether the GEMV entry points must refuse these sizes (FQ_ERR_ARGS, y untouched). */
static int bad_args(const job_t *job, int is_int4) {
    return job->M < 0 || job->K < 1 || job->N < 0 || job->G < 1 || job->K % job->G != 0 || job->ldx < job->K ||
           job->ldy < job->N || (is_int4 && job->G % 32 != 0);
}

/* Threads for a GEMV call: the caller's count, fewer for small matrices, at most one per row. */
static int64_t team_size(const job_t *job, int nthreads) {
    int64_t n = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    const int64_t by_work = (job->N * job->K) / WORK_PER_THREAD;
    if (n > by_work) n = by_work < 1 ? 1 : by_work;
    return n > job->N ? job->N : n;
}

static int run(const job_t *job, int is_int4, int nthreads) {
    if (bad_args(job, is_int4))
        return FQ_ERR_ARGS;
    if (job->M == 0 || job->N == 0)
        return FQ_OK;
    const int64_t n = team_size(job, nthreads);
    if (n <= 1) {
        (is_int4 ? rows_int4 : rows_int8)(job, 0, job->N);
        return FQ_OK;
    }
#pragma omp parallel num_threads((int)n)
    {
        THREAD_IDS(tid, nt);
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

/* The int8-activation products (section above): quantize the tokens, then split the rows. Sizes
   the scheme cannot take, or a failed allocation, run the fp32-activation path instead. */
static int run_q8(const job_t *job, int is_int4, int nthreads) {
    if (bad_args(job, is_int4))
        return FQ_ERR_ARGS;
    if (job->M == 0 || job->N == 0)
        return FQ_OK;
    if (job->K % QB != 0 || job->G % QB != 0)
        return run(job, is_int4, nthreads);
    const int64_t M = job->M, K = job->K;
    const int64_t xs_floats = M * (K / QB), xg_floats = is_int4 ? M * (K / job->G) : 0;
    float *floats = malloc((size_t)(xs_floats + xg_floats) * sizeof(float) + (size_t)(M * K));
    if (!floats)
        return run(job, is_int4, nthreads);
    int8_t *xq = (int8_t *)(floats + xs_floats + xg_floats);
    quantize_tokens(job, xq, floats, is_int4 ? floats + xs_floats : NULL, is_int4 ? Q4_INTERLEAVE : 1);
    const q8job_t qj = {job, xq, floats, is_int4 ? floats + xs_floats : NULL};
    const int64_t n = team_size(job, nthreads);
    if (n <= 1) {
        (is_int4 ? rows_q8_int4 : rows_q8_int8)(&qj, 0, job->N);
    } else {
#pragma omp parallel num_threads((int)n)
        {
            THREAD_IDS(tid, nt);
            (is_int4 ? rows_q8_int4 : rows_q8_int8)(&qj, job->N * tid / nt, job->N * (tid + 1) / nt);
        }
    }
    free(floats);
    return FQ_OK;
}

/* fq_linear_int8 with x quantized to int8 per block of 32 (same arguments and codes). */
int fq_linear_int8_q8(const float *x, int64_t ldx, const int8_t *q, const float *scale, int64_t G, const float *bias,
                      float *y, int64_t ldy, int64_t M, int64_t K, int64_t N, int nthreads) {
    const job_t job = {x, ldx, q, scale, NULL, G, bias, y, ldy, M, K, N};
    return run_q8(&job, 0, nthreads);
}

/* fq_linear_int4 with x quantized to int8 per block of 32 (same arguments and codes). */
int fq_linear_int4_q8(const float *x, int64_t ldx, const uint8_t *q, const float *scale, const float *min, int64_t G,
                      const float *bias, float *y, int64_t ldy, int64_t M, int64_t K, int64_t N, int nthreads) {
    const job_t job = {x, ldx, q, scale, min, G, bias, y, ldy, M, K, N};
    return run_q8(&job, 1, nthreads);
}

/* Rows [n0, n1) of dequantize(q) into out (row stride ldo): the values rows_int8 / rows_int4
   compute in registers (int4: one FMA, nib * scale + min, rounded once). */
static void dequant_rows(const void *q, const float *scale, const float *min, int64_t G, int is_int4,
                         float *out, int64_t ldo, int64_t K, int64_t n0, int64_t n1) {
    const int64_t ngroups = K / G;
    for (int64_t n = n0; n < n1; n++) {
        float *o = out + (n - n0) * ldo;
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
}

/* out [N, K] fp32 (row stride ldo >= K) = dequantize(q), for an fp32 GEMM after it where
   fq_gemm is not built (no AVX2) or not chosen (batches past quant_gemm_max_tokens). is_int4 picks the format; min is ignored for int8.
   0 or FQ_ERR_ARGS. */
int fq_dequantize(const void *q, const float *scale, const float *min, int64_t G, int is_int4, float *out,
                  int64_t ldo, int64_t K, int64_t N, int nthreads) {
    if (K < 1 || N < 0 || G < 1 || K % G != 0 || ldo < K || (is_int4 && G % 32 != 0))
        return FQ_ERR_ARGS;
    int64_t n_threads = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    if (n_threads > (N * K) / WORK_PER_THREAD) n_threads = (N * K) / WORK_PER_THREAD < 1 ? 1 : (N * K) / WORK_PER_THREAD;
#pragma omp parallel for schedule(static) num_threads((int)n_threads)
    for (int64_t n = 0; n < N; n++)
        dequant_rows(q, scale, min, G, is_int4, out + n * ldo, ldo, K, n, n + 1);
    return FQ_OK;
}

/* ---- batch-sized M: fq_gemm, dequantize a block of rows, then a SIMD GEMM over it -----------
 *
 * For M above the GEMV's range (quant_gemv_max_tokens: a decode step of many sequences, a
 * prefill chunk). The GEMV re-dequantizes each weight for every tile of MT tokens; here each
 * thread dequantizes a block of NB weight rows once (dequant_rows, into its part of the
 * caller's workspace: NB x K fp32, L2-resident) and multiplies it with every token. Vectors
 * hold VW tokens: 16 (AVX-512) or 8 (AVX2), GEMM_MV = 4 or 2 of them a tile:
 *
 *   xp    x packed transposed once per call, in m-blocks of GEMM_MB = VW * GEMM_MV tokens:
 *         xp[b][k][i] = x[GEMM_MB b + i, k] (zeros past M; the last block VW * MV wide, MV =
 *         ceil(rows / VW)), split over the threads by k, then a barrier;
 *   tile  y[GEMM_MB b .. + VW MV, n0 .. n0 + NR) in MV x NR accumulators (NR <= 6; AVX-512 24 + 4
 *         of the 32 zmm registers, AVX2 12 + 3 of the 16 ymm): per k, MV vector loads of xp and
 *         NR broadcasts of the dequantized w[n0 + r, k], MV x NR FMAs; the tile is written to y
 *         through a small buffer (its columns are y's rows), + bias.
 *
 * Each y element is one fp32 FMA chain over k in order (then + bias), as in the GEMV, but from
 * weights dequantized to fp32 first (x read unrounded), so results agree with the fp32 GEMV's
 * within rounding, not bit for bit. Measured on SmolLM2's shapes (2 threads, AVX-512 Zen): the
 * tile alone on fp32 weights runs at 0.86-1.37x oneDNN's packed linear from 16 to 64 tokens,
 * where the dequantize + oneDNN path it replaces spent ~25% more than oneDNN on fp32 (the
 * dense weight reordered per call, and the whole fp32 matrix written and read again).
 *
 * Threads: static split of the 6-row groups; each thread walks its rows in blocks of NB rows,
 * and for each block every m-block. Workspace (the caller's, fq_gemm_workspace_floats floats):
 * xp, then one NB x K block per thread, each 64-byte aligned.
 */
#if defined(__AVX512F__) || FQ_USE_AVX2
#define FQ_USE_GEMM 1
#define GEMM_NR 6
#define GEMM_BLOCK_FLOATS (48 << 10) /* a thread's dequantized block: NB x K <= 192 KB */
#if defined(__AVX512F__)
typedef __m512 vec_t;                /* 16 tokens a vector, up to 4 (+ 6 rows: 24 + 4 of 32 zmm) */
#define VW 16
#define GEMM_MV 4
#define VZERO _mm512_setzero_ps
#define VLOAD _mm512_loadu_ps
#define VSTORE _mm512_storeu_ps
#define VSET1 _mm512_set1_ps
#define VFMA _mm512_fmadd_ps
#else
typedef __m256 vec_t;                /* 8 tokens a vector, up to 2 (+ 6 rows: 12 + 3 of 16 ymm) */
#define VW 8
#define GEMM_MV 2
#define VZERO _mm256_setzero_ps
#define VLOAD _mm256_loadu_ps
#define VSTORE _mm256_storeu_ps
#define VSET1 _mm256_set1_ps
#define VFMA _mm256_fmadd_ps
#endif
#define GEMM_MB (VW * GEMM_MV) /* tokens per m-block */

static int64_t gemm_block_rows(int64_t K) {
    int64_t nb = GEMM_BLOCK_FLOATS / K / GEMM_NR * GEMM_NR;
    return nb < GEMM_NR ? GEMM_NR : nb;
}

static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

#define DEF_TILE(MV, NR)                                                                         \
    static void tile_##MV##_##NR(const float *xp, const float *w, int64_t K, const float *bias,  \
                                 float *y, int64_t ldy, int64_t rows) {                          \
        vec_t acc[NR][MV];                                                                       \
        for (int r = 0; r < NR; r++)                                                             \
            for (int v = 0; v < MV; v++) acc[r][v] = VZERO();                                    \
        for (int64_t k = 0; k < K; k++) {                                                        \
            vec_t xv[MV];                                                                        \
            for (int v = 0; v < MV; v++) xv[v] = VLOAD(xp + k * VW * MV + VW * v);               \
            for (int r = 0; r < NR; r++) {                                                       \
                const vec_t b = VSET1(w[r * K + k]);                                             \
                for (int v = 0; v < MV; v++) acc[r][v] = VFMA(b, xv[v], acc[r][v]);              \
            }                                                                                    \
        }                                                                                        \
        float out[NR][VW * MV];                                                                  \
        for (int r = 0; r < NR; r++)                                                             \
            for (int v = 0; v < MV; v++) VSTORE(&out[r][VW * v], acc[r][v]);                     \
        for (int64_t i = 0; i < rows; i++)                                                       \
            for (int r = 0; r < NR; r++) y[i * ldy + r] = out[r][i] + (bias ? bias[r] : 0.0f);   \
    }
#define DEF_TILES(MV) DEF_TILE(MV, 1) DEF_TILE(MV, 2) DEF_TILE(MV, 3) DEF_TILE(MV, 4) DEF_TILE(MV, 5) DEF_TILE(MV, 6)
typedef void (*tile_fn)(const float *, const float *, int64_t, const float *, float *, int64_t, int64_t);
#define TILE_ROW(MV) {tile_##MV##_1, tile_##MV##_2, tile_##MV##_3, tile_##MV##_4, tile_##MV##_5, tile_##MV##_6}
DEF_TILES(1)
DEF_TILES(2)
#if GEMM_MV == 4
DEF_TILES(3)
DEF_TILES(4)
static const tile_fn TILES[GEMM_MV][GEMM_NR] = {TILE_ROW(1), TILE_ROW(2), TILE_ROW(3), TILE_ROW(4)};
#else
static const tile_fn TILES[GEMM_MV][GEMM_NR] = {TILE_ROW(1), TILE_ROW(2)};
#endif
#else
#define FQ_USE_GEMM 0
#endif

int fq_gemm_available(void) { return FQ_USE_GEMM; }

/* Floats of workspace fq_gemm needs for these sizes and thread count (0 without AVX2). */
int64_t fq_gemm_workspace_floats(int64_t M, int64_t K, int nthreads) {
#if FQ_USE_GEMM
    const int64_t threads = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    return round_up(round_up(M, 16) * K, 16) + threads * round_up(gemm_block_rows(K) * K, 16);
#else
    (void)M; (void)K; (void)nthreads;
    return 0;
#endif
}

/* y = x @ dequantize(q)^T + bias for any M (int4 when is_int4; min ignored for int8), using
   `work` (>= fq_gemm_workspace_floats(M, K, nthreads) floats, 64-byte aligned). 0, FQ_ERR_ARGS,
   or FQ_ERR_UNSUPPORTED (built without AVX2: use fq_dequantize + an fp32 GEMM). */
int fq_gemm(const float *x, int64_t ldx, const void *q, const float *scale, const float *min, int64_t G,
            int is_int4, const float *bias, float *y, int64_t ldy, int64_t M, int64_t K, int64_t N,
            float *work, int64_t work_floats, int nthreads) {
    if (M < 0 || K < 1 || N < 0 || G < 1 || K % G != 0 || ldx < K || ldy < N || (is_int4 && G % 32 != 0))
        return FQ_ERR_ARGS;
#if FQ_USE_GEMM
    int64_t n = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    if (work_floats < fq_gemm_workspace_floats(M, K, (int)n) || ((uintptr_t)work & 63) != 0)
        return FQ_ERR_ARGS;
    if (M == 0 || N == 0)
        return FQ_OK;
    const int64_t groups = (N + GEMM_NR - 1) / GEMM_NR;
    if (n > groups) n = groups;
    const int64_t by_work = (M * N * K) / (WORK_PER_THREAD * 16);
    if (n > by_work) n = by_work < 1 ? 1 : by_work;
    const int64_t nb = gemm_block_rows(K), blocks = (M + GEMM_MB - 1) / GEMM_MB;
    float *xp = work, *wbase = work + round_up(round_up(M, 16) * K, 16);
#pragma omp parallel num_threads((int)n)
    {
        THREAD_IDS(tid, nt);
        /* pack x: this thread's k range of every m-block */
        const int64_t k0 = K * tid / nt, k1 = K * (tid + 1) / nt;
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t m0 = b * GEMM_MB, rows = M - m0 < GEMM_MB ? M - m0 : GEMM_MB;
            const int64_t width = round_up(rows, VW);
            float *xb = xp + m0 * K;
            for (int64_t k = k0; k < k1; k++) {
                float *dst = xb + k * width;
                for (int64_t i = 0; i < rows; i++) dst[i] = x[(m0 + i) * ldx + k];
                for (int64_t i = rows; i < width; i++) dst[i] = 0.0f;
            }
        }
#pragma omp barrier
        float *wblock = wbase + tid * round_up(nb * K, 16);
        const int64_t r0 = groups * tid / nt * GEMM_NR, r1_ = groups * (tid + 1) / nt * GEMM_NR;
        const int64_t r1 = r1_ < N ? r1_ : N;
        for (int64_t nb0 = r0; nb0 < r1; nb0 += nb) {
            const int64_t nb1 = nb0 + nb < r1 ? nb0 + nb : r1;
            dequant_rows(q, scale, min, G, is_int4, wblock, K, K, nb0, nb1);
            for (int64_t b = 0; b < blocks; b++) {
                const int64_t m0 = b * GEMM_MB, rows = M - m0 < GEMM_MB ? M - m0 : GEMM_MB;
                const tile_fn *row = TILES[(rows + VW - 1) / VW - 1];
                for (int64_t g = nb0; g < nb1; g += GEMM_NR) {
                    const int64_t nr = nb1 - g < GEMM_NR ? nb1 - g : GEMM_NR;
                    row[nr - 1](xp + m0 * K, wblock + (g - nb0) * K, K, bias ? bias + g : NULL,
                                y + m0 * ldy + g, ldy, rows);
                }
            }
        }
    }
    return FQ_OK;
#else
    (void)x; (void)q; (void)scale; (void)min; (void)bias; (void)y; (void)work; (void)work_floats; (void)nthreads;
    return FQ_ERR_UNSUPPORTED;
#endif
}
