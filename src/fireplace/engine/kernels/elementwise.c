/*
 * The elementwise parts of a Llama layer on CPU, fp32, each one pass over its rows:
 *
 *   fp_silu_mul      out[t, i] = silu(g[t, i]) * u[t, i]           g, u [T, I] row-strided, out [T, I]
 *   fp_rms_norm      out[t] = w * (x[t] * rsqrt(mean(x[t]^2) + eps))  x [T, H] row-strided, w [H], out [T, H]
 *   fp_add_rms_norm  r[t] += x[t], then out[t] = rms_norm(r[t])      r [T, H] row-strided, updated in place
 *   fp_rotary        q [T, Hq, D] and k [T, Hk, D] rotated in place   cos, sin [T, D/2]
 *
 * "Row-strided": row t starts row_stride floats after row t - 1 and its elements are contiguous,
 * so the halves of a fused [T, 2I] gate/up product, or the q and k columns of a fused qkv
 * product, are passed as they are, without a copy. Outputs are contiguous [T, n]. Rows that are
 * only read may share memory (stride 0: a broadcast row); rows written in place may not.
 *
 * They replace chains of torch ops (silu, mul; pow, mean, add, rsqrt, mul, mul; chunk, 4 muls,
 * sub, add, cat), each of which reads and writes the whole tensor and costs ~10 us of dispatch
 * on small decode batches. The arithmetic follows the torch code op by op (see elementwise.py
 * for where results can differ: sums of squares in another order, and gcc contracts a * b + c
 * into one fused multiply-add, which rounds once where torch rounds twice).
 *
 * Threads: OpenMP over rows, on torch's own libgomp (see paged_decode.c for why), and only for
 * calls with enough work: waking the pool costs a few microseconds, so small (decode) calls stay
 * on the calling thread (the if() clause). Each row is computed the same way on any thread, so
 * results do not depend on the thread count.
 *
 * Built with -O3 -march=native and without -ffast-math (see cpu_build.CFLAGS): the loops are
 * written so gcc vectorizes them anyway (sums in LANES independent partial sums, exp in plain
 * arithmetic instead of libm calls, selects instead of branches).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Return codes, mirrored in elementwise.py (same numbering as paged_decode.c). */
enum { FP_OK = 0, FP_ERR_ARGS = 4 };

#define LANES 16 /* partial sums of a sum of squares: two AVX2 registers, so two FMA chains */
#define MAX_THREADS 256
/* Floats a thread must have to process before a call is split over threads. Back to back with
   other OpenMP work (a forward pass), torch's pool threads are still spinning and take work in
   ~1-2 us; a second thread then pays off early. Measured on 2 cores (AVX2, znver3), 1 vs 2
   threads: silu_mul (~0.8 ns per output on one thread) gains from ~6k outputs on, the memory-
   bound norms and rotary (~0.2 ns per element) from ~16k elements; the limits sit at about
   those sizes (a call goes to 2 threads from twice the limit on). */
#define SILU_WORK_PER_THREAD 4096
#define NORM_WORK_PER_THREAD 8192
#define ROTARY_WORK_PER_THREAD 8192

/* Threads for `rows` rows of `row_work` floats each: at most one per `per_thread` floats and
   one per row, at least 1 (num_threads() must be positive even where if() is false). */
static int thread_count(int64_t rows, int64_t row_work, int64_t per_thread, int nthreads) {
    int64_t n = rows * row_work / per_thread;
    if (n > nthreads)
        n = nthreads;
    if (n > rows)
        n = rows;
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    return n < 1 ? 1 : (int)n;
}

/* ---- silu(g) * u ------------------------------------------------------------------------- */

/* exp(x) in fp32, within ~1 ulp over the whole float range (subnormal results included), in
   plain arithmetic that gcc vectorizes (libm's expf is a call per element, which keeps the
   whole loop scalar). Not for NaN: a NaN x gives 0 or inf, not NaN (silu carries NaN itself).
   - |x| is clamped to 104 first, so exp(x) is 0 below -103.97 (< half the smallest subnormal)
     and inf above 88.73 without tests on the result. The clamp works on the bits (sign kept,
     magnitude an unsigned min), not with x < lo ? lo : x: on such a float select gcc threads
     the clamped cases separately (exp of a constant) and emits a second division in silu.
   - x = n ln2 + r with n = rint(x / ln2) in [-150, 150] (the shifter trick: adding 1.5 * 2^23
     rounds to an integer and leaves it in the low mantissa bits) and |r| <= ln2 / 2 (ln2 in
     two parts, so that n * LN2_HI is exact);
   - exp(r) by its Taylor polynomial to r^7 (truncation < 6e-9 relative);
   - 2^n as 2^n1 * 2^n2 with n1 = n >> 1, n2 = n - n1 in [-75, 75], each a normal float built in
     the exponent bits, so that results beyond 2^127 overflow to inf and below 2^-126 round to
     subnormals correctly (one rounding, in the second product). */
static inline float exp_f32(float x) {
    const float LOG2E = 1.44269504088896341f, LN2_HI = 0.693145751953125f, LN2_LO = 1.42860682030941723e-6f;
    const float SHIFTER = 12582912.0f; /* 1.5 * 2^23 */
    const uint32_t SHIFTER_BITS = 0x4B400000u, LIMIT_BITS = 0x42D00000u /* 104.0f */;
    uint32_t xb;
    memcpy(&xb, &x, sizeof xb);
    const uint32_t mag = xb & 0x7FFFFFFFu;
    const uint32_t clamped = (xb & 0x80000000u) | (mag < LIMIT_BITS ? mag : LIMIT_BITS);
    float xc;
    memcpy(&xc, &clamped, sizeof xc);

    const float shifted = xc * LOG2E + SHIFTER;
    const float n = shifted - SHIFTER; /* rint(xc / ln2), exactly */
    const float r = (xc - n * LN2_HI) - n * LN2_LO;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;

    uint32_t sb;
    memcpy(&sb, &shifted, sizeof sb);
    const int32_t ni = (int32_t)(sb - SHIFTER_BITS); /* n as an integer */
    const int32_t n1 = ni >> 1, n2 = ni - n1;
    const uint32_t bits1 = (uint32_t)(n1 + 127) << 23, bits2 = (uint32_t)(n2 + 127) << 23;
    float scale1, scale2;
    memcpy(&scale1, &bits1, sizeof scale1);
    memcpy(&scale2, &bits2, sizeof scale2);
    return (p * scale1) * scale2;
}

/* out[i] = silu(g[i]) * u[i] over n floats, silu(x) = x / (1 + exp(-x)) as torch computes it:
   x < -88.7 gives exp(-x) = inf and silu = -0, x = -inf gives -inf / inf = NaN (torch too),
   large positive x gives exp(-x) = 0 and silu = x, and NaN x gives NaN / (1 + e) = NaN. gcc
   fuses 1 + exp(-x) into the last multiply of exp_f32 (one rounding instead of two). */
static inline void silu_mul_row(const float *restrict g, const float *restrict u, float *restrict out, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float silu = g[i] / (1.0f + exp_f32(-g[i]));
        out[i] = silu * u[i];
    }
}

/*
 * g, u [T, I] with row strides g_stride, u_stride (floats); out [T, I] contiguous.
 * Returns 0, or FP_ERR_ARGS for negative sizes or strides.
 */
int fp_silu_mul(const float *g, int64_t g_stride, const float *u, int64_t u_stride, float *out,
                int64_t num_rows, int64_t row_len, int nthreads) {
    if (num_rows < 0 || row_len < 0 || g_stride < 0 || u_stride < 0)
        return FP_ERR_ARGS;
    const int n = thread_count(num_rows, row_len, SILU_WORK_PER_THREAD, nthreads);
#pragma omp parallel for num_threads(n) if (n > 1) schedule(static)
    for (int64_t t = 0; t < num_rows; t++)
        silu_mul_row(g + t * g_stride, u + t * u_stride, out + t * row_len, row_len);
    return FP_OK;
}

/* ---- RMSNorm ----------------------------------------------------------------------------- */

/* Sum of the LANES (16) partial sums, halving step by step (each step written out: a loop over
   the widths would stay a loop). */
static inline float fold_lanes(float lane[LANES]) {
    for (int j = 0; j < 8; j++)
        lane[j] += lane[j + 8];
    for (int j = 0; j < 4; j++)
        lane[j] += lane[j + 4];
    for (int j = 0; j < 2; j++)
        lane[j] += lane[j + 2];
    return lane[0] + lane[1];
}

/* x[0]^2 + ... + x[n-1]^2 in LANES independent partial sums: gcc vectorizes that without
   -ffast-math (no reassociation needed), two registers keep two FMA chains in flight. */
static inline float sum_squares(const float *restrict x, int64_t n) {
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += x[i + j] * x[i + j];
    float sum = fold_lanes(lane);
    for (; i < n; i++)
        sum += x[i] * x[i];
    return sum;
}

/* r[i] += x[i] (one fp32 add, as torch's x + r), then the sum of the new r[i]^2, in one pass. */
static inline float add_sum_squares(float *restrict r, const float *restrict x, int64_t n) {
    float lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            const float v = r[i + j] + x[i + j];
            r[i + j] = v;
            lane[j] += v * v;
        }
    float sum = fold_lanes(lane);
    for (; i < n; i++) {
        const float v = r[i] + x[i];
        r[i] = v;
        sum += v * v;
    }
    return sum;
}

/* 1 / sqrt(mean + eps) with mean = sum / n, as torch's h.pow(2).mean(-1) + eps, then rsqrt
   (a division by the square root on CPU, not an approximate rsqrt instruction). */
static inline float inv_rms(float sum, int64_t n, float eps) {
    return 1.0f / sqrtf(sum / (float)n + eps);
}

/* out[i] = w[i] * (x[i] * inv): torch's order, h = x * inv, then weight * h (two roundings). */
static inline void scale_row(const float *restrict x, const float *restrict w, float inv, float *restrict out,
                             int64_t n) {
    for (int64_t i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * inv);
}

/*
 * x [T, H] with row stride x_stride (floats), weight [H], out [T, H] contiguous.
 * Returns 0, or FP_ERR_ARGS for negative sizes or a negative stride.
 */
int fp_rms_norm(const float *x, int64_t x_stride, const float *weight, float eps, float *out,
                int64_t num_rows, int64_t row_len, int nthreads) {
    if (num_rows < 0 || row_len < 0 || x_stride < 0)
        return FP_ERR_ARGS;
    const int n = thread_count(num_rows, row_len, NORM_WORK_PER_THREAD, nthreads);
#pragma omp parallel for num_threads(n) if (n > 1) schedule(static)
    for (int64_t t = 0; t < num_rows; t++) {
        const float *row = x + t * x_stride;
        scale_row(row, weight, inv_rms(sum_squares(row, row_len), row_len, eps), out + t * row_len, row_len);
    }
    return FP_OK;
}

/*
 * residual [T, H] (row stride r_stride) += x [T, H] (row stride x_stride), in place; then
 * out [T, H] (contiguous) = rms_norm(residual) with weight [H]. The second pass reads the
 * residual row back from L1, so memory sees one read of x and r, and one write of r and out.
 * Returns 0, or FP_ERR_ARGS for negative sizes or strides, or residual rows that overlap.
 */
int fp_add_rms_norm(const float *x, int64_t x_stride, float *residual, int64_t r_stride, const float *weight,
                    float eps, float *out, int64_t num_rows, int64_t row_len, int nthreads) {
    if (num_rows < 0 || row_len < 0 || x_stride < 0 || (num_rows > 1 && r_stride < row_len))
        return FP_ERR_ARGS;
    const int n = thread_count(num_rows, row_len, NORM_WORK_PER_THREAD, nthreads);
#pragma omp parallel for num_threads(n) if (n > 1) schedule(static)
    for (int64_t t = 0; t < num_rows; t++) {
        float *r = residual + t * r_stride;
        const float sum = add_sum_squares(r, x + t * x_stride, row_len);
        scale_row(r, weight, inv_rms(sum, row_len, eps), out + t * row_len, row_len);
    }
    return FP_OK;
}

/* ---- rotary ------------------------------------------------------------------------------ */

/* One row's heads [heads, 2 * half], in place: with x1 = head[:half], x2 = head[half:],
   head = cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin), as apply_rotary in layers/rotary.py.
   Inlined into copies for D = 64 and 128 (the common head sizes), where the constant half lets
   gcc unroll the inner loop completely, with no remainder loop. */
static inline __attribute__((always_inline)) void rotate_row(float *x, int64_t heads, const float *restrict cos,
                                                             const float *restrict sin, const int64_t half) {
    for (int64_t h = 0; h < heads; h++) {
        float *restrict x1 = x + h * 2 * half;
        float *restrict x2 = x1 + half;
        for (int64_t i = 0; i < half; i++) {
            const float a = x1[i], b = x2[i];
            x1[i] = a * cos[i] - b * sin[i];
            x2[i] = b * cos[i] + a * sin[i];
        }
    }
}

typedef void (*rotate_fn)(float *, int64_t, const float *, const float *, int64_t);
static void rotate_row_d64(float *x, int64_t heads, const float *cos, const float *sin, int64_t half) {
    (void)half;
    rotate_row(x, heads, cos, sin, 32);
}
static void rotate_row_d128(float *x, int64_t heads, const float *cos, const float *sin, int64_t half) {
    (void)half;
    rotate_row(x, heads, cos, sin, 64);
}
static void rotate_row_any(float *x, int64_t heads, const float *cos, const float *sin, int64_t half) {
    rotate_row(x, heads, cos, sin, half);
}

/*
 * q [T, Hq, D] and k [T, Hk, D], in place: rows q_stride / k_stride floats apart, heads
 * contiguous within a row (head stride D); cos, sin [T, D/2] contiguous. k_heads may be 0.
 * Returns 0, or FP_ERR_ARGS for negative sizes, an odd D, or rows of q or k that overlap.
 */
int fp_rotary(float *q, int64_t q_stride, int64_t q_heads, float *k, int64_t k_stride, int64_t k_heads,
              const float *cos, const float *sin, int64_t num_rows, int64_t head_dim, int nthreads) {
    if (num_rows < 0 || q_heads < 0 || k_heads < 0 || head_dim < 0 || head_dim % 2 != 0 ||
        (num_rows > 1 && (q_stride < q_heads * head_dim || k_stride < k_heads * head_dim)))
        return FP_ERR_ARGS;
    const int64_t half = head_dim / 2;
    const rotate_fn rotate = half == 32 ? rotate_row_d64 : half == 64 ? rotate_row_d128 : rotate_row_any;
    const int n = thread_count(num_rows, (q_heads + k_heads) * head_dim, ROTARY_WORK_PER_THREAD, nthreads);
#pragma omp parallel for num_threads(n) if (n > 1) schedule(static)
    for (int64_t t = 0; t < num_rows; t++) {
        rotate(q + t * q_stride, q_heads, cos + t * half, sin + t * half, half);
        rotate(k + t * k_stride, k_heads, cos + t * half, sin + t * half, half);
    }
    return FP_OK;
}
