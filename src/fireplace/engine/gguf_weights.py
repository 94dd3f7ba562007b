"""GGUF Q4_1 / Q8_0 weights as they are stored: blocks -> QuantizedWeight, no fp32 detour.

    weights = read_gguf_weights(path)        {HF parameter name: QuantizedWeight | fp32 tensor}
    summary = apply_gguf_weights(model, path) the model's projections read the GGUF's blocks

Block formats (ggml; 32 weights per block, along a row's K):
    Q4_1  20 bytes: fp16 d, fp16 m, 16 bytes of nibbles     w = nib * d + m
    Q8_0  34 bytes: fp16 d, 32 int8                         w = q * d
The nibble order inside a block is the one fireplace.engine.quantization uses for int4, so a
Q4_1 tensor becomes an int4 QuantizedWeight with group 32 by reshaping, and Q8_0 an int8 one
with group 32; the fp16 d / m widen to fp32 exactly. F32 tensors (norms) stay tensors.

llama.cpp's converter permutes the rows of attn_q / attn_k (its RoPE pairs adjacent dims, HF's
the two halves of a head); reading undoes that, per head, on whole rows (blocks never cross a
row), so the result is in HF order, the one our model (and transformers' GGUF loader) uses.
Other quantized types (Q4_0, Q4_K, ...) are refused with a QuantizationError naming the tensor.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fireplace.engine.quantization import QuantizationError, QuantizedWeight, concat_rows
from fireplace.engine.quantize_model import QuantizationSummary

_BLOCK = 32
_NAMES = {  # GGUF tensor name -> our (HF) parameter name; {n}: layer index
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{n}.attn_norm.weight": "model.layers.{n}.input_layernorm.weight",
    "blk.{n}.ffn_norm.weight": "model.layers.{n}.post_attention_layernorm.weight",
    "blk.{n}.attn_q.weight": "model.layers.{n}.self_attn.q_proj.weight",
    "blk.{n}.attn_k.weight": "model.layers.{n}.self_attn.k_proj.weight",
    "blk.{n}.attn_v.weight": "model.layers.{n}.self_attn.v_proj.weight",
    "blk.{n}.attn_output.weight": "model.layers.{n}.self_attn.o_proj.weight",
    "blk.{n}.ffn_gate.weight": "model.layers.{n}.mlp.gate_proj.weight",
    "blk.{n}.ffn_up.weight": "model.layers.{n}.mlp.up_proj.weight",
    "blk.{n}.ffn_down.weight": "model.layers.{n}.mlp.down_proj.weight",
}
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_name(gguf_name: str) -> str | None:
    match = _BLK.match(gguf_name)
    if match:
        template = _NAMES.get(f"blk.{{n}}.{match.group(2)}")
        return template.format(n=match.group(1)) if template else None
    return _NAMES.get(gguf_name)


def read_gguf_weights(path: str | Path) -> dict[str, QuantizedWeight | torch.Tensor]:
    """Every tensor of a llama-architecture GGUF under its HF name (F32 as tensors, Q4_1 / Q8_0
    as QuantizedWeights, q/k rows back in HF order)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise QuantizationError(f"{path}: GGUF architecture {arch!r} is not supported (llama only)")
    heads, kv_heads = int(_field(reader, "llama.attention.head_count")), int(_field(reader, "llama.attention.head_count_kv"))
    out: dict[str, QuantizedWeight | torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None:
            continue
        kind = tensor.tensor_type.name
        raw = np.asarray(tensor.data)
        if kind == "F32":
            value = torch.from_numpy(raw.copy()).reshape([int(d) for d in reversed(tensor.shape)])
        elif kind in ("Q4_1", "Q8_0"):
            value = _blocks(raw, kind, int(tensor.shape[0]), tensor.name)
        else:
            raise QuantizationError(f"{path}: tensor {tensor.name} is {kind}; only F32, Q4_1 and Q8_0 load as stored")
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            value = _unpermute(value, heads if "q_proj" in name else kv_heads)
        out[name] = value
    return out


def apply_gguf_weights(model: nn.Module, path: str | Path) -> QuantizationSummary:
    """Make the model's projections (and a tied lm_head) read the GGUF's quantized blocks, as
    quantize_model does with its own. The model's fp32 parameters (embedding lookup, norms) are
    left as loaded; the GGUF's projections must all be Q4_1 / Q8_0 and match the model's shapes."""
    from fireplace.engine.layers.linear import FusedLinear, Linear
    from fireplace.engine.quantize_model import _placeholder

    weights = read_gguf_weights(path)
    count = fp32_bytes = quantized_bytes = 0
    linears = {f"{name}.weight": module for name, module in model.named_modules() if isinstance(module, Linear)}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for attr, value in list(vars(module).items()):
                if not isinstance(value, FusedLinear):
                    continue
                names = [n for n, m in linears.items() if any(m is p for p in value.parts)]
                names.sort(key=lambda n: [i for i, p in enumerate(value.parts) if linears[n] is p][0])
                parts = [_expect_quantized(weights, n, linears[n]) for n in names]
                qw = concat_rows(parts)
                value.quantized, value.weight = qw, _placeholder(value.weight)
                start = 0
                for name, part in zip(names, parts):
                    linears[name].quantized = part
                    linears[name].weight.data = value.weight[start:start + part.out_features]
                    start += part.out_features
                count, fp32_bytes, quantized_bytes = count + 1, fp32_bytes + qw.out_features * qw.in_features * 4, quantized_bytes + qw.nbytes()
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        for name, module in linears.items():
            if module.quantized is not None:
                continue
            source = "model.embed_tokens.weight" if name == "lm_head.weight" and tied else name
            qw = _expect_quantized(weights, source, module)
            module.quantized = qw
            if source == name:
                module.weight.data = _placeholder(module.weight)
            count, fp32_bytes, quantized_bytes = count + 1, fp32_bytes + qw.out_features * qw.in_features * 4, quantized_bytes + qw.nbytes()
    if hasattr(model, "reset_fast_decode"):  # its decode fast path resolved the old weights
        model.reset_fast_decode()
    return QuantizationSummary("gguf", _BLOCK, count, fp32_bytes, quantized_bytes)


def _expect_quantized(weights: dict, name: str, module) -> QuantizedWeight:
    value = weights.get(name)
    if not isinstance(value, QuantizedWeight):
        raise QuantizationError(f"GGUF tensor for {name} is {'missing' if value is None else 'not quantized'}")
    if value.shape != tuple(module.weight.shape):
        raise QuantizationError(f"GGUF tensor for {name} has shape {list(value.shape)}, the model's is "
                                f"{list(module.weight.shape)}")
    return value


def _blocks(raw: np.ndarray, kind: str, in_features: int, name: str) -> QuantizedWeight:
    block_bytes = 20 if kind == "Q4_1" else 34
    rows = raw.shape[0]
    if in_features % _BLOCK or raw.shape[-1] != in_features // _BLOCK * block_bytes:
        raise QuantizationError(f"GGUF tensor {name}: {kind} row of {raw.shape[-1]} bytes does not hold "
                                f"{in_features} weights")
    blocks = torch.from_numpy(raw.reshape(rows, in_features // _BLOCK, block_bytes).copy())
    d = blocks[:, :, 0:2].contiguous().view(torch.float16).squeeze(2).to(torch.float32).contiguous()
    if kind == "Q4_1":
        m = blocks[:, :, 2:4].contiguous().view(torch.float16).squeeze(2).to(torch.float32).contiguous()
        nibbles = blocks[:, :, 4:20].reshape(rows, in_features // 2).contiguous()
        return QuantizedWeight("int4", rows, in_features, _BLOCK, nibbles, d, m)
    q = blocks[:, :, 2:34].reshape(rows, in_features).contiguous().view(torch.int8)
    return QuantizedWeight("int8", rows, in_features, _BLOCK, q, d)


def _unpermute(value: QuantizedWeight | torch.Tensor, heads: int):
    """Rows of each head from llama.cpp's interleaved order back to HF's halves."""
    rows = value.shape[0]
    head_dim = rows // heads
    index = torch.arange(rows).view(heads, head_dim // 2, 2).transpose(1, 2).reshape(rows)
    if isinstance(value, torch.Tensor):
        return value[index].contiguous()
    return QuantizedWeight(value.scheme, value.out_features, value.in_features, value.group_size,
                           value.qweight[index].contiguous(), value.scale[index].contiguous(),
                           None if value.min is None else value.min[index].contiguous())


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise QuantizationError(f"GGUF metadata {key} is missing")
    part = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(part).decode()
    return part[0]
