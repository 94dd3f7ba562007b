"""The Llama family (llama, SmolLM2, mistral, qwen2, qwen3) over the paged KV cache.

Module and parameter names mirror the HF checkpoints (model.layers.N.self_attn.q_proj, ...),
so loading is name-for-name and LoRA adapters (which PEFT names after the same modules) find
their targets. q/k/v and gate/up stay separate `Linear`s, since adapters target each one, but
their weights are slices of one matrix per group (`FusedLinear`): one matmul computes all.

Variants, all from ModelConfig: attention biases (qwen2: q/k/v; llama/qwen3: attention_bias),
per-head q/k RMSNorm before RoPE (qwen3), tied embeddings (SmolLM2, small qwen), RoPE scaling.
Mistral's sliding window is not applied; ModelConfig.max_model_len keeps sequences within it.

All activations are flattened: x: [T, hidden], T = the step's new tokens of every sequence.
Every layer is built with the model's Backend (fireplace.engine.backend), which decides where
our C kernels replace torch ops; the model code itself holds no kernel switch or threshold.
Decode-only steps without adapters on the cpu-kernels backend skip the modules: the decoder
stack then runs as one C call making the same kernel calls (models/fast_decode.py, same bits).
"""
from __future__ import annotations

import torch
from torch import nn

from fireplace.engine.backend import Backend
from fireplace.engine.forward_context import ForwardContext
from fireplace.engine.kv_cache import KVCaches
from fireplace.engine.layers.activation import silu_and_mul
from fireplace.engine.layers.attention import paged_attention
from fireplace.engine.layers.linear import FusedLinear, Linear
from fireplace.engine.layers.norm import RMSNorm
from fireplace.engine.layers.rotary import RotaryEmbedding, apply_rotary_qk
from fireplace.engine.model_config import ModelConfig


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device, backend: Backend):
        super().__init__()
        self.backend = backend
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        hidden, q_size, kv_size = config.hidden_size, config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        # one matmul for q/k/v; the parts keep their HF names for loading and LoRA
        self.qkv = FusedLinear(hidden, [q_size, kv_size, kv_size], bias=config.qkv_bias, dtype=dtype, device=device,
                               backend=backend)
        self.q_proj, self.k_proj, self.v_proj = self.qkv.parts
        self.o_proj = Linear(q_size, hidden, bias=config.o_bias, dtype=dtype, device=device, backend=backend)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype=dtype, device=device, backend=backend)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype=dtype, device=device, backend=backend)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: tuple[torch.Tensor, torch.Tensor], ctx: ForwardContext) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden]."""
        num_tokens = x.shape[0]
        q, k, v = self.qkv(x, ctx)  # row-strided views of one [T, q + 2 kv] product
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [T, H, D]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary_qk(q, k, cos, sin, self.backend)
        out = paged_attention(q, k, v, kv_cache[0], kv_cache[1], ctx)  # [T, H, D]
        return self.o_proj(out.reshape(num_tokens, -1).to(x.dtype), ctx)


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device, backend: Backend):
        super().__init__()
        self.backend = backend
        hidden, inter, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_up = FusedLinear(hidden, [inter, inter], bias=bias, dtype=dtype, device=device, backend=backend)
        self.gate_proj, self.up_proj = self.gate_up.parts
        self.down_proj = Linear(inter, hidden, bias=bias, dtype=dtype, device=device, backend=backend)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """SwiGLU. x: [T, hidden] -> [T, hidden]."""
        gate, up = self.gate_up(x, ctx)
        return self.down_proj(silu_and_mul(gate, up, self.backend), ctx)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device, backend: Backend):
        super().__init__()
        self.self_attn = LlamaAttention(config, dtype, device, backend)
        self.mlp = LlamaMLP(config, dtype, device, backend)
        norm = dict(dtype=dtype, device=device, backend=backend)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **norm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **norm)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: tuple[torch.Tensor, torch.Tensor], ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block, with the residual stream carried separately so that each add is fused
        into the norm after it: x [T, hidden] is the previous layer's MLP output (the embeddings,
        with residual None, for layer 0) -> (this layer's MLP output, residual stream)."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(h, cos, sin, kv_cache, ctx)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(h, ctx), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device, backend: Backend):
        super().__init__()
        # _weight=empty skips the random init: the loader overwrites every weight anyway.
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size,
            _weight=torch.empty(config.vocab_size, config.hidden_size, dtype=dtype, device=device),
            _freeze=True)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, dtype, device, backend) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, device=device, backend=backend)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling, device=device)
        self.backend = backend
        # The decode-only fast path (models/fast_decode.py): built at the first step it may
        # serve (None: not yet, False: this model cannot use it); off when use_fast_decode is False.
        self.use_fast_decode = True
        self._fast_decode = None

    def reset_fast_decode(self) -> None:
        """Forget the fast path's resolved weights: call after replacing any projection's weight."""
        self._fast_decode = None

    def _fast_decode_for(self, ctx: ForwardContext, kv_caches: KVCaches):
        if not (self.use_fast_decode and ctx.is_decode_only) or self._fast_decode is False:
            return None
        if self._fast_decode is None:
            from fireplace.engine.models.fast_decode import FastDecode
            self._fast_decode = FastDecode.build(self, self.backend) or False
            if self._fast_decode is False:
                return None
        return self._fast_decode if self._fast_decode.applies(ctx, kv_caches) else None

    def forward(self, ctx: ForwardContext, kv_caches: KVCaches) -> torch.Tensor:
        if ctx.attention is None:
            raise ValueError("ForwardContext.attention is not set: build it with "
                             "attention_metadata.build_attention_metadata before the forward "
                             "(ModelRunner.prepare does)")
        x = self.embed_tokens(ctx.input_ids)  # [T, hidden]
        cos, sin = self.rotary_emb.cos_sin(ctx.positions, x.dtype)  # [T, 1, D/2], shared by all layers
        fast = self._fast_decode_for(ctx, kv_caches)
        if fast is not None:  # the same kernels on the same inputs, without the per-module overhead
            return fast.forward(x, cos, sin, ctx, kv_caches)
        residual = None  # the residual stream; the layers update it in place on the kernel path
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x, residual = layer(x, residual, cos, sin, kv_cache, ctx)
        return self.norm.add_forward(x, residual)[0] if residual is not None else self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", *, backend: Backend | None = None):
        """backend: chosen by the engine (default: Backend.select(device, dtype), i.e. "auto")."""
        super().__init__()
        self.config = config
        self.backend = backend if backend is not None else Backend.select(device, dtype)
        self.model = LlamaModel(config, dtype, device, self.backend)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype, device=device,
                              backend=self.backend, lm_head=True)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def reset_fast_decode(self) -> None:
        """See LlamaModel.reset_fast_decode (quantize_model and apply_gguf_weights call it)."""
        self.model.reset_fast_decode()

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @torch.inference_mode()
    def forward(self, ctx: ForwardContext, kv_caches: KVCaches) -> torch.Tensor:
        """Run the step; store its K/V in kv_caches. Returns final-norm hidden states [T, hidden]."""
        return self.model(ctx, kv_caches)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [L, hidden] (rows picked by ctx.logits_indices) -> logits [L, vocab] fp32."""
        return self.lm_head(hidden).float()
