"""The Llama decoder stack for decode-only steps on the cpu-kernels backend, with the per-op
overhead taken out: the same C kernels, called in the same order on the same inputs as
LlamaDecoderLayer's forward, so the hidden states are the same bits (tests/engine/test_fast_decode.py).

Why: at batch 1 a decode step reads ~135 MB of int8 weights (~8 ms at this machine's ~17 GB/s),
and the 30 layers' module calls, argument checks, torch.empty per output, split views and
index_copy_ cost ~4-5 ms more on top of the GEMVs (measured with the GEMVs stubbed out). Here each
layer is ~11 direct ctypes calls on pointers resolved once:

    h   = rms_norm(x) | add_rms_norm_(x, residual)          [T, hidden]
    qkv = gemv(h)                                           [T, q + 2 kv]  one buffer, reused
    rotary_(q, k) in place; k, v copied into the pools at the step's slots (memmove per token)
    a   = paged_decode_attention(q)                         [T, H * D]
    o   = gemv(a);  h = add_rms_norm_(o, residual)
    gu  = gemv(h);  act = silu_mul(gu[:, :I], gu[:, I:]);  x = gemv(act)

Activations live in buffers kept per batch size T (a few KB each), reused by every layer and
step; only the residual stream (the embedding output, updated in place as on the module path)
and the final norm's output are fresh tensors.

It applies (`FastDecode.applies`) when the step is decode-only with the C attention layout, no
adapter is in the batch (ctx.lora is None: the base path never looks at the LoRA stacks then),
the KV pools are fp32, and T is within the limits under which the module path itself takes
these kernels (BackendConfig.quant_gemv_max_tokens for quantized projections,
small_gemm_max_tokens for fp32 ones); the model must have no q/k norm (qwen3 runs those in
torch) and eager MLPs (ModelRunner.compile). Anything else runs the modules.

The weights are resolved when the plan is built (lazily, at the first step that applies):
whatever replaces a projection's weight afterwards (quantize_model, apply_gguf_weights) calls
LlamaForCausalLM.reset_fast_decode(). One plan per model; the engine drives a model from one
thread (AsyncEngine), which the shared buffers assume.
"""
from __future__ import annotations

import ctypes

import torch

from fireplace.engine.backend import Backend
from fireplace.engine.forward_context import ForwardContext
from fireplace.engine.kernels import elementwise, paged_decode, quant_gemv, small_gemm

_F32 = torch.float32
_memmove = ctypes.memmove


class _Projection:
    """One projection's matmul, resolved: quantized GEMV or fp32 small GEMM, pointers as ints."""

    def __init__(self, linear, in_features: int, out_features: int):
        qw = linear.quantized
        bias = linear.bias
        self.bias = None if bias is None else bias.data_ptr()
        self.refs = (qw, linear.weight, bias)  # keep the storage the pointers point into alive
        self.in_features, self.out_features = in_features, out_features
        if qw is not None:
            self.kind = qw.scheme  # int8 | int4
            self.q, self.scale = qw.qweight.data_ptr(), qw.scale.data_ptr()
            self.min = qw.min.data_ptr() if qw.min is not None else None
            self.group = qw.group_size
        else:
            weight = linear.weight
            if weight.dtype is not _F32 or not weight.is_contiguous():
                raise _NotApplicable("an fp32 projection's weight is not contiguous float32")
            self.kind, self.q = "fp32", weight.data_ptr()

    def run(self, libs, x: int, y: int, num_tokens: int, threads: int) -> None:
        """y [T, out] = x [T, in] @ W^T (+ bias), both contiguous buffers."""
        k, n = self.in_features, self.out_features
        if self.kind == "int8":
            code = libs.quant.fq_linear_int8(x, k, self.q, self.scale, self.group, self.bias, y, n, num_tokens, k, n,
                                             threads)
        elif self.kind == "int4":
            code = libs.quant.fq_linear_int4(x, k, self.q, self.scale, self.min, self.group, self.bias, y, n,
                                             num_tokens, k, n, threads)
        else:
            code = libs.gemm.fp_linear(x, k, self.q, self.bias, y, n, num_tokens, k, n, threads)
        if code != 0:
            raise RuntimeError(f"{self.kind} projection kernel failed ({code})")


class _NotApplicable(Exception):
    """The model has a feature the fast path does not reproduce (it then never applies)."""


class _Libraries:
    def __init__(self):
        self.elementwise = elementwise._kernels.get()
        self.attention = paged_decode._kernels.get()
        self.quant = quant_gemv._kernels.get()
        self.gemm = small_gemm._kernels.get()


class _Layer:
    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.input_norm = layer.input_layernorm.weight.data_ptr()
        self.input_eps = layer.input_layernorm.eps
        self.post_norm = layer.post_attention_layernorm.weight.data_ptr()
        self.post_eps = layer.post_attention_layernorm.eps
        self.norm_refs = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
        hidden = attn.qkv.weight.shape[1]
        q_size, kv_size = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
        inter = mlp.gate_up.sizes[0]
        self.qkv = _Projection(attn.qkv, hidden, q_size + 2 * kv_size)
        self.o = _Projection(attn.o_proj, q_size, hidden)
        self.gate_up = _Projection(mlp.gate_up, hidden, 2 * inter)
        self.down = _Projection(mlp.down_proj, inter, hidden)
        self.projections = (self.qkv, self.o, self.gate_up, self.down)


class _Buffers:
    """The activations of one batch size T, contiguous fp32, with their pointers."""

    def __init__(self, num_tokens: int, hidden: int, qkv: int, attn: int, inter: int):
        self.h = torch.empty(num_tokens, hidden, dtype=_F32)
        self.qkv = torch.empty(num_tokens, qkv, dtype=_F32)
        self.q = torch.empty(num_tokens, attn, dtype=_F32)  # q gathered for T > 1 (the kernel wants [T, H, D])
        self.attn = torch.empty(num_tokens, attn, dtype=_F32)
        self.o = torch.empty(num_tokens, hidden, dtype=_F32)
        self.gate_up = torch.empty(num_tokens, 2 * inter, dtype=_F32)
        self.act = torch.empty(num_tokens, inter, dtype=_F32)
        self.x = torch.empty(num_tokens, hidden, dtype=_F32)
        for name in ("h", "qkv", "q", "attn", "o", "gate_up", "act", "x"):
            setattr(self, name + "_ptr", getattr(self, name).data_ptr())


class FastDecode:
    def __init__(self, model, backend: Backend):
        """model: a LlamaModel (the decoder stack). Raises _NotApplicable for what it cannot do."""
        from fireplace.engine.models.llama import LlamaMLP

        if not (backend.kind == "cpu-kernels" and backend.elementwise_kernels and backend.paged_decode_kernel):
            raise _NotApplicable("needs the cpu-kernels backend's elementwise and paged-decode kernels")
        first = model.layers[0].self_attn
        if first.q_norm is not None:
            raise _NotApplicable("q/k norms run in torch on the module path")
        self.layers = []
        for layer in model.layers:
            if not isinstance(layer.mlp, LlamaMLP):
                raise _NotApplicable("a compiled MLP")
            self.layers.append(_Layer(layer))
        kinds = {p.kind for layer in self.layers for p in layer.projections}
        if "fp32" in kinds and not backend.small_gemm_kernel:
            raise _NotApplicable("fp32 projections need the small GEMM kernel")
        if kinds & {"int8", "int4"} and not backend.quant_kernel:
            raise _NotApplicable("quantized projections need the quantized GEMV kernel")
        limits = []
        if "fp32" in kinds:
            limits.append(backend.config.small_gemm_max_tokens)
        if kinds & {"int8", "int4"}:
            limits.append(backend.config.quant_gemv_max_tokens)
        self.max_tokens = min(limits)
        self.num_heads, self.num_kv_heads, self.head_dim = first.num_heads, first.num_kv_heads, first.head_dim
        self.scale = first.head_dim ** -0.5
        self.final_norm, self.final_eps = model.norm.weight, model.norm.eps
        self.libs = _Libraries()
        self._sizes = (self.layers[0].qkv.in_features, self.layers[0].qkv.out_features,
                       self.layers[0].o.in_features, self.layers[0].down.in_features)
        self._buffers: dict[int, _Buffers] = {}

    @classmethod
    def build(cls, model, backend: Backend) -> FastDecode | None:
        try:
            return cls(model, backend)
        except _NotApplicable:
            return None

    def applies(self, ctx: ForwardContext, kv_caches) -> bool:
        meta = ctx.attention
        return (ctx.lora is None and meta.decode_rows_are_all and meta.decode_block_tables is not None
                and 0 < meta.num_tokens <= self.max_tokens and kv_caches[0][0].dtype is _F32)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: ForwardContext,
                kv_caches) -> torch.Tensor:
        """x [T, hidden]: the embeddings (becomes the residual stream, updated in place) ->
        the final norm's output [T, hidden], as LlamaModel.forward's module path computes it."""
        num_tokens = x.shape[0]
        buf = self._buffers.get(num_tokens)
        if buf is None:
            buf = self._buffers[num_tokens] = _Buffers(num_tokens, *self._sizes)
        libs, ew = self.libs, self.libs.elementwise
        threads = torch.get_num_threads()
        meta = ctx.attention
        tables, lens = meta.decode_block_tables, meta.decode_context_lens
        tables_ptr, lens_ptr, max_blocks = tables.data_ptr(), lens.data_ptr(), tables.shape[1]
        slots = ctx.slot_mapping.tolist()
        cos_ptr, sin_ptr = cos.data_ptr(), sin.data_ptr()
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        q_size, kv_size = heads * dim, kv_heads * dim
        qkv_width = q_size + 2 * kv_size
        row_bytes, kv_bytes = qkv_width * 4, kv_size * 4
        hidden = x.shape[1]
        inter = self._sizes[3]
        residual = x.data_ptr()
        qkv, h, o, attn = buf.qkv_ptr, buf.h_ptr, buf.o_ptr, buf.attn_ptr
        q_in = qkv if num_tokens == 1 else buf.q_ptr
        layer_in = None  # the previous layer's MLP output (None: layer 0 normalizes the embeddings)
        for layer, (k_pool, v_pool) in zip(self.layers, kv_caches, strict=True):
            if layer_in is None:
                code = ew.fp_rms_norm(residual, hidden, layer.input_norm, layer.input_eps, h, num_tokens, hidden,
                                      threads)
            else:
                code = ew.fp_add_rms_norm(layer_in, hidden, residual, hidden, layer.input_norm, layer.input_eps, h,
                                          num_tokens, hidden, threads)
            _check(code, "rms_norm")
            layer.qkv.run(libs, h, qkv, num_tokens, threads)
            _check(ew.fp_rotary(qkv, qkv_width, heads, qkv + q_size * 4, qkv_width, kv_heads, cos_ptr, sin_ptr,
                                num_tokens, dim, threads), "rotary")
            k_base, v_base = k_pool.data_ptr(), v_pool.data_ptr()
            for t, slot in enumerate(slots):  # write_kv: the step's k, v rows into the pools
                row = qkv + t * row_bytes
                _memmove(k_base + slot * kv_bytes, row + q_size * 4, kv_bytes)
                _memmove(v_base + slot * kv_bytes, row + (q_size + kv_size) * 4, kv_bytes)
                if num_tokens > 1:
                    _memmove(q_in + t * q_size * 4, row, q_size * 4)
            code = libs.attention.fp_paged_decode_attention(
                q_in, k_base, v_base, 0, tables_ptr, lens_ptr, attn, num_tokens, heads, kv_heads, dim,
                k_pool.shape[1], max_blocks, k_pool.shape[0], self.scale, threads)
            if code != 0:
                exc_type, message = paged_decode._ERRORS.get(code, (RuntimeError, f"attention kernel failed ({code})"))
                raise exc_type(message)
            layer.o.run(libs, attn, o, num_tokens, threads)
            _check(ew.fp_add_rms_norm(o, hidden, residual, hidden, layer.post_norm, layer.post_eps, h, num_tokens,
                                      hidden, threads), "add_rms_norm")
            layer.gate_up.run(libs, h, buf.gate_up_ptr, num_tokens, threads)
            _check(ew.fp_silu_mul(buf.gate_up_ptr, 2 * inter, buf.gate_up_ptr + inter * 4, 2 * inter, buf.act_ptr,
                                  num_tokens, inter, threads), "silu_mul")
            layer.down.run(libs, buf.act_ptr, buf.x_ptr, num_tokens, threads)
            layer_in = buf.x_ptr
        return elementwise.add_rms_norm_(buf.x, x, self.final_norm, self.final_eps)


def _check(code: int, kernel: str) -> None:
    if code != 0:
        elementwise._raise_for(code, kernel)
