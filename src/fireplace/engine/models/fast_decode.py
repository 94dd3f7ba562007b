"""The Llama decoder stack for decode-only steps on the cpu-kernels backend, with the per-op
overhead taken out: the same C kernels, called in the same order on the same inputs as
LlamaDecoderLayer's forward, so the hidden states are the same bits (tests/engine/test_fast_decode.py).

Why: at batch 1 a decode step reads ~135 MB of int8 weights (~8 ms at this machine's ~17 GB/s),
and the 30 layers' module calls, argument checks, torch.empty per output, split views and
index_copy_ cost ~4-5 ms more on top of the GEMVs (measured with the GEMVs stubbed out). Here each
step is one call into kernels/decode_stack.c, which makes the kernel calls on pointers resolved once:

    h   = rms_norm(x) | add_rms_norm_(x, residual)          [T, hidden]
    qkv = gemv(h)                                           [T, q + 2 kv]  one buffer, reused
    rotary_(q, k) in place; k, v copied into the pools at the step's slots (memmove per token;
        rounded to bf16 where the pools are bf16, as write_kv's .to(pool dtype) rounds)
    a   = paged_decode_attention(q)                         [T, H * D]
    o   = gemv(a);  h = add_rms_norm_(o, residual)
    gu  = gemv(h);  act = silu_mul(gu[:, :I], gu[:, I:]);  x = gemv(act)

Activations live in buffers kept per batch size T (a few KB each), reused by every layer and
step; only the residual stream (the embedding output, updated in place as on the module path)
and the final norm's output are fresh tensors.

It applies (`FastDecode.applies`) when the step is decode-only with the C attention layout, no
adapter is in the batch (ctx.lora is None: the base path never looks at the LoRA stacks then),
the KV pools are fp32 or bf16, and T is within the limits under which the module path itself takes
these kernels (BackendConfig.quant_gemv_max_tokens for quantized projections,
Backend.small_gemm_max_tokens for fp32 ones: below oneDNN's threshold where that is on); the
model must have no q/k norm (qwen3 runs those in torch) and eager MLPs (ModelRunner.compile).
Anything else runs the modules.

The weights are resolved when the plan is built (lazily, at the first step that applies):
whatever replaces a projection's weight afterwards (quantize_model, apply_gguf_weights) calls
LlamaForCausalLM.reset_fast_decode(). One plan per model; the engine drives a model from one
thread (AsyncEngine), which the shared buffers assume.
"""
from __future__ import annotations

import torch

from fireplace.engine.backend import Backend
from fireplace.engine.forward_context import ForwardContext
from fireplace.engine.kernels import decode_stack, elementwise

_F32 = torch.float32
_POOL_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # decode_stack.c's FS_POOL_F32 / FS_POOL_BF16


class _NotApplicable(Exception):
    """The model has a feature the fast path does not reproduce (it then never applies)."""


def _projection(linear, in_features: int, out_features: int, refs: list) -> decode_stack.Projection:
    """One projection's weight as decode_stack.c reads it: the quantized GEMV's format, or the
    fp32 matrix for the small GEMM (exactly what the module path's matmul would take)."""
    qw, bias = linear.quantized, linear.bias
    refs += [qw, linear.weight, bias]  # keep the storage the pointers point into alive
    bias_ptr = None if bias is None else bias.data_ptr()
    if qw is not None:
        kind = decode_stack.INT8 if qw.scheme == "int8" else decode_stack.INT4
        return decode_stack.Projection(kind, qw.qweight.data_ptr(), qw.scale.data_ptr(),
                                       qw.min.data_ptr() if qw.min is not None else None, bias_ptr, qw.group_size,
                                       in_features, out_features)
    weight = linear.weight
    if weight.dtype is not _F32 or not weight.is_contiguous():
        raise _NotApplicable("an fp32 projection's weight is not contiguous float32")
    return decode_stack.Projection(decode_stack.FP32, weight.data_ptr(), None, None, bias_ptr, 0, in_features,
                                   out_features)


class _Buffers:
    """The activations of one batch size T, contiguous fp32, and the Step pointing at them."""

    def __init__(self, num_tokens: int, hidden: int, q_size: int, qkv: int, inter: int, step_fields: dict):
        self.tensors = {name: torch.empty(num_tokens, size, dtype=_F32) for name, size in (
            ("h", hidden), ("qkv", qkv), ("q", q_size), ("attn", q_size), ("o", hidden), ("gate_up", 2 * inter),
            ("act", inter), ("x", hidden))}
        self.x = self.tensors["x"]  # the last layer's MLP output
        self.step = decode_stack.Step(num_tokens=num_tokens, **step_fields,
                                      **{name: t.data_ptr() for name, t in self.tensors.items()})


class FastDecode:
    def __init__(self, model, backend: Backend):
        """model: a LlamaModel (the decoder stack). Raises _NotApplicable for what it cannot do."""
        from fireplace.engine.models.llama import LlamaMLP

        if not (backend.kind == "cpu-kernels" and backend.elementwise_kernels and backend.paged_decode_kernel):
            raise _NotApplicable("needs the cpu-kernels backend's elementwise and paged-decode kernels")
        if not decode_stack.available():
            raise _NotApplicable("the decode stack driver did not build")
        first = model.layers[0].self_attn
        if first.q_norm is not None:
            raise _NotApplicable("q/k norms run in torch on the module path")
        self.num_layers = len(model.layers)
        self.layers = (decode_stack.Layer * self.num_layers)()
        self._refs: list = []
        kinds = set()
        for i, layer in enumerate(model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            if not isinstance(mlp, LlamaMLP):
                raise _NotApplicable("a compiled MLP")
            hidden = attn.qkv.weight.shape[1]
            q_size, kv_size = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
            inter = mlp.gate_up.sizes[0]
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            self._refs += [n.weight for n in norms]
            entry = self.layers[i]
            entry.qkv = _projection(attn.qkv, hidden, q_size + 2 * kv_size, self._refs)
            entry.o = _projection(attn.o_proj, q_size, hidden, self._refs)
            entry.gate_up = _projection(mlp.gate_up, hidden, 2 * inter, self._refs)
            entry.down = _projection(mlp.down_proj, inter, hidden, self._refs)
            entry.input_norm, entry.input_eps = norms[0].weight.data_ptr(), norms[0].eps
            entry.post_norm, entry.post_eps = norms[1].weight.data_ptr(), norms[1].eps
            kinds |= {p.kind for p in (entry.qkv, entry.o, entry.gate_up, entry.down)}
        if decode_stack.FP32 in kinds and not backend.small_gemm_kernel:
            raise _NotApplicable("fp32 projections need the small GEMM kernel")
        quantized = kinds & {decode_stack.INT8, decode_stack.INT4}
        if quantized and not backend.quant_kernel:
            raise _NotApplicable("quantized projections need the quantized GEMV kernel")
        # the module path takes these kernels only up to these batch sizes
        self.max_tokens = min([backend.small_gemm_max_tokens] * (decode_stack.FP32 in kinds)
                              + [backend.config.quant_gemv_max_tokens] * bool(quantized))
        self.kernels = decode_stack.kernel_table(backend.config)
        self.final_norm, self.final_eps = model.norm.weight, model.norm.eps
        self._sizes = (hidden, q_size, q_size + 2 * kv_size, inter)
        self._step_fields = dict(num_heads=first.num_heads, num_kv_heads=first.num_kv_heads, head_dim=first.head_dim,
                                 hidden=hidden, inter=inter, scale=first.head_dim ** -0.5)
        self._buffers: dict[int, _Buffers] = {}
        self._pools = None  # the KVCaches whose pointers self.layers holds

    @classmethod
    def build(cls, model, backend: Backend) -> FastDecode | None:
        try:
            return cls(model, backend)
        except _NotApplicable:
            return None

    def applies(self, ctx: ForwardContext, kv_caches) -> bool:
        meta = ctx.attention
        return (ctx.lora is None and meta.decode_rows_are_all and meta.decode_block_tables is not None
                and 0 < meta.num_tokens <= self.max_tokens and kv_caches[0][0].dtype in _POOL_DTYPES)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: ForwardContext,
                kv_caches) -> torch.Tensor:
        """x [T, hidden]: the embeddings (becomes the residual stream, updated in place) ->
        the final norm's output [T, hidden], as LlamaModel.forward's module path computes it."""
        num_tokens = x.shape[0]
        buf = self._buffers.get(num_tokens)
        if buf is None:
            buf = self._buffers[num_tokens] = _Buffers(num_tokens, *self._sizes, self._step_fields)
        if kv_caches is not self._pools:
            if len(kv_caches) != self.num_layers:
                raise ValueError(f"{len(kv_caches)} KV caches for {self.num_layers} layers")
            for entry, (k_pool, v_pool) in zip(self.layers, kv_caches):
                if not (k_pool.is_contiguous() and v_pool.is_contiguous()):
                    raise ValueError("the KV pools must be contiguous")
                entry.k_pool, entry.v_pool = k_pool.data_ptr(), v_pool.data_ptr()
            self._pools = kv_caches
        meta, step = ctx.attention, buf.step
        tables, lens, slots = meta.decode_block_tables, meta.decode_context_lens, ctx.slot_mapping
        if slots.dtype is not torch.int64 or not slots.is_contiguous():
            slots = slots.to(torch.int64).contiguous()
        step.residual, step.cos, step.sin = x.data_ptr(), cos.data_ptr(), sin.data_ptr()
        step.slots, step.tables, step.lens = slots.data_ptr(), tables.data_ptr(), lens.data_ptr()
        step.max_blocks = tables.shape[1]
        step.block_size, step.num_blocks = kv_caches[0][0].shape[1], kv_caches[0][0].shape[0]
        step.threads = torch.get_num_threads()
        step.pool_dtype = _POOL_DTYPES[kv_caches[0][0].dtype]
        decode_stack.run(self.kernels, self.layers, self.num_layers, step)
        return elementwise.add_rms_norm_(buf.x, x, self.final_norm, self.final_eps)
