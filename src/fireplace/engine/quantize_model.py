"""Quantize a loaded model's base projections in place (weight-only; EngineConfig.quantization).

    summary = quantize_model(model, "int8" | "int4", group_size=32, lm_head=True)

Every projection of the decoder layers (q/k/v and gate/up as their fused matrices, o_proj,
down_proj) gets a `quantized` QuantizedWeight, which its matmul then reads
(layers/quantized_linear.py); its fp32 weight is released (replaced by a zero-stride
placeholder of the same shape and dtype, so code that asks a projection for its shape, dtype or
device still gets them, and any attempt to write it raises). The lm_head, when `lm_head`, is
quantized to int8 per output channel whatever the scheme (it is a fifth of SmolLM2's weight
bytes and its logits are the most sensitive to rounding); tied to the embeddings, its fp32
matrix stays for the embedding lookup.

LoRA addons are untouched: their stacks keep fp32 A/B and add their deltas to the quantized
base's output (the QLoRA-style serving path). Merge an adapter (merged_adapter) before
quantizing: a merge writes the fp32 weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fireplace.engine.layers.linear import FusedLinear, Linear
from fireplace.engine.quantization import (DEFAULT_INT4_GROUP, QuantizationError, QuantizedWeight, quantize,
                                           quantize_int8)


@dataclass(frozen=True)
class QuantizationSummary:
    scheme: str
    group_size: int
    num_matrices: int
    fp32_bytes: int       # what the quantized matrices took in fp32
    quantized_bytes: int  # what they take now (values + scales): the bytes a decode step reads


def quantize_model(model: nn.Module, scheme: str, group_size: int = DEFAULT_INT4_GROUP, *,
                   lm_head: bool = True) -> QuantizationSummary:
    fused_parts: set[int] = set()
    count = fp32_bytes = quantized_bytes = 0

    def account(weight: torch.Tensor, qw: QuantizedWeight) -> None:
        nonlocal count, fp32_bytes, quantized_bytes
        count += 1
        fp32_bytes += weight.numel() * 4
        quantized_bytes += qw.nbytes()

    with torch.no_grad():
        for module_name, module in model.named_modules():
            for attr, value in list(vars(module).items()):
                if isinstance(value, FusedLinear):
                    qw = _quantize(value.weight, scheme, group_size, f"{module_name}.{attr}")
                    account(value.weight, qw)
                    value.quantized = qw
                    placeholder = _placeholder(value.weight)
                    value.weight = placeholder
                    start = 0
                    for part, size in zip(value.parts, value.sizes):
                        part.quantized = qw.rows(start, start + size)
                        part.weight.data = placeholder[start:start + size]
                        fused_parts.add(id(part))
                        start += size
        head = getattr(model, "lm_head", None)
        for name, module in model.named_modules():
            if not isinstance(module, Linear) or id(module) in fused_parts or module.quantized is not None:
                continue
            if module is head:
                if not lm_head:
                    continue
                qw = quantize_int8(module.weight)
            else:
                qw = _quantize(module.weight, scheme, group_size, name)
            account(module.weight, qw)
            module.quantized = qw
            tied = module is head and getattr(getattr(model, "config", None), "tie_word_embeddings", False)
            if not tied:
                module.weight.data = _placeholder(module.weight)
    if hasattr(model, "reset_fast_decode"):  # its decode fast path resolved the old weights
        model.reset_fast_decode()
    return QuantizationSummary(scheme, group_size, count, fp32_bytes, quantized_bytes)


def _quantize(weight: torch.Tensor, scheme: str, group_size: int, where: str) -> QuantizedWeight:
    try:
        return quantize(weight.to("cpu"), scheme, group_size).to(weight.device)
    except QuantizationError as exc:
        raise QuantizationError(f"{where}: {exc}") from None


def _placeholder(weight: torch.Tensor) -> torch.Tensor:
    """A tensor of weight's shape, dtype and device holding no memory (all zeros, stride 0)."""
    return torch.zeros((), dtype=weight.dtype, device=weight.device).expand(weight.shape)
