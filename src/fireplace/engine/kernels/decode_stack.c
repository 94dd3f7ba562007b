/*
 * The decoder stack of one decode-only step in one call: the sequence of kernel calls that
 * models/fast_decode.py describes (per layer: RMSNorm, qkv projection, rotary, K/V written into
 * the pools, paged decode attention, o projection, add + RMSNorm, gate/up projection,
 * SiLU-and-multiply, down projection), made from C instead of ~11 ctypes calls per layer
 * (~2.5-3 us each: ~1 ms per step of a 30-layer model, a tenth of an int8 step at batch 1).
 *
 * It computes nothing itself: the kernels are the ones of elementwise.c, quant_gemv.c,
 * small_gemm.c and paged_decode.c, reached through the function pointers in `fs_kernels`
 * (Python takes their addresses from the loaded libraries), called with the same arguments as
 * the module path gives them, so the results are the same bits.
 *
 * Shapes (T tokens, one per sequence; all activations contiguous fp32 buffers of the caller):
 *   residual [T, hidden] (the embeddings; updated in place: the residual stream)
 *   h [T, hidden], qkv [T, q + 2 kv], q [T, q] (T > 1 only), attn [T, q], o [T, hidden],
 *   gate_up [T, 2 I], act [T, I], x [T, hidden] (the last layer's MLP output on return)
 *   cos, sin [T, D/2]; slots [T] int64 (flat KV slot per token); tables [T, M], lens [T] int32
 *   pools per layer [N, block_size, Hkv, D] fp32, or bf16 (pool_dtype; a bf16 model's KV cache:
 *   k, v rounded to nearest even as torch's .to(torch.bfloat16) does)
 * Returns 0, or stage * 256 + the failing kernel's own code (stage: FS_STAGE_*).
 */
#include <stdint.h>
#include <string.h>

enum { FS_STAGE_NORM = 1, FS_STAGE_QKV, FS_STAGE_ROTARY, FS_STAGE_ATTENTION, FS_STAGE_O, FS_STAGE_POST_NORM,
       FS_STAGE_GATE_UP, FS_STAGE_SILU, FS_STAGE_DOWN, FS_STAGE_ARGS };
enum { FS_FP32 = 0, FS_INT8 = 1, FS_INT4 = 2 };
enum { FS_POOL_F32 = 0, FS_POOL_BF16 = 1 }; /* paged_decode.c's pool_dtype flag */

typedef int (*norm_fn)(const float *, int64_t, const float *, float, float *, int64_t, int64_t, int);
typedef int (*add_norm_fn)(const float *, int64_t, float *, int64_t, const float *, float, float *, int64_t, int64_t,
                           int);
typedef int (*rotary_fn)(float *, int64_t, int64_t, float *, int64_t, int64_t, const float *, const float *, int64_t,
                         int64_t, int);
typedef int (*silu_fn)(const float *, int64_t, const float *, int64_t, float *, int64_t, int64_t, int);
typedef int (*attention_fn)(const float *, const void *, const void *, int, const int32_t *, const int32_t *, float *,
                            int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, int);
typedef int (*int8_fn)(const float *, int64_t, const int8_t *, const float *, int64_t, const float *, float *, int64_t,
                       int64_t, int64_t, int64_t, int);
typedef int (*int4_fn)(const float *, int64_t, const uint8_t *, const float *, const float *, int64_t, const float *,
                       float *, int64_t, int64_t, int64_t, int64_t, int);
typedef int (*fp32_fn)(const float *, int64_t, const float *, const float *, float *, int64_t, int64_t, int64_t,
                       int64_t, int);

typedef struct {
    norm_fn rms_norm;
    add_norm_fn add_rms_norm;
    rotary_fn rotary;
    silu_fn silu_mul;
    attention_fn attention;
    int8_fn linear_int8;
    int4_fn linear_int4;
    fp32_fn linear_fp32;
} fs_kernels;

typedef struct {
    int64_t kind;        /* FS_FP32 | FS_INT8 | FS_INT4 */
    const void *weight;  /* fp32 [N, K] | int8 [N, K] | uint8 [N, K / 2] */
    const float *scale;  /* [N, K / G] (quantized) */
    const float *min;    /* [N, K / G] (int4) */
    const float *bias;   /* [N] or NULL */
    int64_t group, in_features, out_features;
} fs_projection;

typedef struct {
    fs_projection qkv, o, gate_up, down;
    const float *input_norm, *post_norm;  /* [hidden] */
    double input_eps, post_eps;
    void *k_pool, *v_pool;  /* in the step's pool_dtype */
} fs_layer;

typedef struct {
    float *residual, *h, *qkv, *q, *attn, *o, *gate_up, *act, *x;
    const float *cos, *sin;
    const int64_t *slots;
    const int32_t *tables, *lens;
    int64_t num_tokens, max_blocks, block_size, num_blocks;
    int64_t num_heads, num_kv_heads, head_dim, hidden, inter;
    double scale;
    int64_t threads;
    int64_t pool_dtype;  /* FS_POOL_F32 | FS_POOL_BF16 */
} fs_step;

static int project(const fs_kernels *k, const fs_projection *p, const float *x, float *y, int64_t T, int threads) {
    const int64_t K = p->in_features, N = p->out_features;
    switch (p->kind) {
    case FS_INT8:
        return k->linear_int8(x, K, (const int8_t *)p->weight, p->scale, p->group, p->bias, y, N, T, K, N, threads);
    case FS_INT4:
        return k->linear_int4(x, K, (const uint8_t *)p->weight, p->scale, p->min, p->group, p->bias, y, N, T, K, N,
                              threads);
    case FS_FP32:
        return k->linear_fp32(x, K, (const float *)p->weight, p->bias, y, N, T, K, N, threads);
    default:
        return -1;
    }
}

/* fp32 -> bf16, round to nearest even (NaN: the quiet NaN), as torch's conversion does. */
static inline uint16_t to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0;
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* One token's k (or v) row of kv_size floats into its pool slot, in the pool's dtype. */
static inline void store_kv(void *pool, int64_t pool_dtype, int64_t slot, const float *row, int64_t kv_size) {
    if (pool_dtype == FS_POOL_BF16) {
        uint16_t *dst = (uint16_t *)pool + slot * kv_size;
        for (int64_t i = 0; i < kv_size; i++)
            dst[i] = to_bf16(row[i]);
    } else {
        memcpy((float *)pool + slot * kv_size, row, (size_t)kv_size * sizeof(float));
    }
}

#define STAGE(stage, call)                         \
    do {                                           \
        const int code_ = (call);                  \
        if (code_ != 0) return (stage) * 256 + (code_ & 255); \
    } while (0)

int fs_decode_stack(const fs_kernels *k, const fs_layer *layers, int64_t num_layers, const fs_step *s) {
    if (!k || !layers || !s || num_layers < 1 || s->num_tokens < 1 || s->head_dim < 1
        || (s->pool_dtype != FS_POOL_F32 && s->pool_dtype != FS_POOL_BF16))
        return FS_STAGE_ARGS * 256;
    const int64_t T = s->num_tokens, H = s->hidden, I = s->inter, D = s->head_dim;
    const int64_t q_size = s->num_heads * D, kv_size = s->num_kv_heads * D, width = q_size + 2 * kv_size;
    const int threads = (int)s->threads;
    const float *q_in = T == 1 ? s->qkv : s->q; /* the attention kernel wants q as [T, H, D] */
    for (int64_t l = 0; l < num_layers; l++) {
        const fs_layer *L = &layers[l];
        if (l == 0)
            STAGE(FS_STAGE_NORM, k->rms_norm(s->residual, H, L->input_norm, (float)L->input_eps, s->h, T, H, threads));
        else
            STAGE(FS_STAGE_NORM, k->add_rms_norm(s->x, H, s->residual, H, L->input_norm, (float)L->input_eps, s->h, T,
                                                 H, threads));
        STAGE(FS_STAGE_QKV, project(k, &L->qkv, s->h, s->qkv, T, threads));
        STAGE(FS_STAGE_ROTARY, k->rotary(s->qkv, width, s->num_heads, s->qkv + q_size, width, s->num_kv_heads, s->cos,
                                         s->sin, T, D, threads));
        for (int64_t t = 0; t < T; t++) { /* the step's k, v rows into the pools (write_kv) */
            const float *row = s->qkv + t * width;
            store_kv(L->k_pool, s->pool_dtype, s->slots[t], row + q_size, kv_size);
            store_kv(L->v_pool, s->pool_dtype, s->slots[t], row + q_size + kv_size, kv_size);
            if (T > 1)
                memcpy(s->q + t * q_size, row, (size_t)q_size * sizeof(float));
        }
        STAGE(FS_STAGE_ATTENTION, k->attention(q_in, L->k_pool, L->v_pool, (int)s->pool_dtype, s->tables, s->lens, s->attn, T,
                                               s->num_heads, s->num_kv_heads, D, s->block_size, s->max_blocks,
                                               s->num_blocks, (float)s->scale, threads));
        STAGE(FS_STAGE_O, project(k, &L->o, s->attn, s->o, T, threads));
        STAGE(FS_STAGE_POST_NORM, k->add_rms_norm(s->o, H, s->residual, H, L->post_norm, (float)L->post_eps, s->h, T,
                                                  H, threads));
        STAGE(FS_STAGE_GATE_UP, project(k, &L->gate_up, s->h, s->gate_up, T, threads));
        STAGE(FS_STAGE_SILU, k->silu_mul(s->gate_up, 2 * I, s->gate_up + I, 2 * I, s->act, T, I, threads));
        STAGE(FS_STAGE_DOWN, project(k, &L->down, s->act, s->x, T, threads));
    }
    return 0;
}
