"""What our engine needs to know about a Llama-family checkpoint, read from its HF config.json.

One `ModelConfig` covers llama (SmolLM2 included), mistral, qwen2 and qwen3: they differ only in
attention biases, per-head q/k RMSNorm (qwen3), head_dim and RoPE scaling. Both the
transformers 4.x layout (`rope_theta` + `rope_scaling`, `torch_dtype`) and the 5.x layout
(`rope_parameters`, `dtype`) are read.

Sliding-window attention (mistral, qwen2 with `use_sliding_window`) is not implemented: the
window is kept in `sliding_window` and `max_model_len` is capped to it, so every sequence we
serve fits inside the window and full attention is exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or an option of it is not implemented by our engine."""


SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
_ARCHITECTURE_BY_CLASS = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. rope_type "default" means none."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int | None = None  # llama3


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # one of SUPPORTED_ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    qkv_bias: bool = False  # bias on q/k/v projections (qwen2; llama/qwen3 attention_bias)
    o_bias: bool = False  # bias on o_proj (llama/qwen3 attention_bias)
    mlp_bias: bool = False  # bias on gate/up/down (llama mlp_bias)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (qwen3)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: torch.dtype = torch.float32  # the checkpoint's dtype

    @property
    def max_model_len(self) -> int:
        """Longest sequence we can serve exactly (see module docstring on sliding windows)."""
        if self.sliding_window:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        architecture = _architecture_of(d)
        if d.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act {d['hidden_act']!r} is not supported (only 'silu')")
        num_heads = int(d["num_attention_heads"])
        num_kv_heads = int(d.get("num_key_value_heads") or num_heads)
        if num_heads % num_kv_heads:
            raise UnsupportedModelError(f"num_attention_heads {num_heads} is not a multiple of "
                                        f"num_key_value_heads {num_kv_heads}")
        head_dim = int(d.get("head_dim") or d["hidden_size"] // num_heads)
        rope_theta, rope_scaling = _rope_of(d)

        attention_bias = bool(d.get("attention_bias", False))
        if architecture == "qwen2":  # Qwen2 hardcodes bias on q/k/v only
            qkv_bias, o_bias = True, False
        elif architecture == "mistral":
            qkv_bias = o_bias = False
        else:
            qkv_bias = o_bias = attention_bias

        sliding_window = d.get("sliding_window")
        if architecture in ("qwen2", "qwen3") and not d.get("use_sliding_window", False):
            sliding_window = None

        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        dtype_name = d.get("dtype") or d.get("torch_dtype") or "float32"
        if dtype_name not in _DTYPES:
            raise UnsupportedModelError(f"checkpoint dtype {dtype_name!r} is not supported")

        return cls(
            architecture=architecture,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=architecture == "qwen3",
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            sliding_window=int(sliding_window) if sliding_window else None,
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            torch_dtype=_DTYPES[dtype_name],
        )


def _architecture_of(d: dict[str, Any]) -> str:
    model_type = d.get("model_type")
    if model_type in SUPPORTED_ARCHITECTURES:
        return model_type
    for name in d.get("architectures") or ():
        if name in _ARCHITECTURE_BY_CLASS:
            return _ARCHITECTURE_BY_CLASS[name]
    seen = model_type or ", ".join(d.get("architectures") or ()) or "unknown"
    raise UnsupportedModelError(
        f"model architecture {seen!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")


def _rope_of(d: dict[str, Any]) -> tuple[float, RopeScaling]:
    # transformers 5.x: rope_parameters = {"rope_theta": ..., "rope_type": ..., scaling keys}
    # transformers 4.x: rope_theta at top level, rope_scaling = {"rope_type"|"type": ..., ...} | None
    params = dict(d.get("rope_parameters") or {})
    if "full_attention" in params and isinstance(params["full_attention"], dict):
        params = dict(params["full_attention"])  # per-layer-type layout; we only have one type
    legacy = d.get("rope_scaling") or {}
    merged = {**legacy, **params}
    theta = float(merged.get("rope_theta", d.get("rope_theta", 10000.0)))
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if float(merged.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UnsupportedModelError("partial_rotary_factor != 1 is not supported")
    if rope_type == "default":
        return theta, RopeScaling()
    original = merged.get("original_max_position_embeddings") or d.get("max_position_embeddings", 2048)
    return theta, RopeScaling(
        rope_type=rope_type,
        factor=float(merged["factor"]),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(original) if original else None,
    )
