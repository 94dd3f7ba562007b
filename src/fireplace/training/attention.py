"""Attention kept within each packed example, registered with transformers as
"fireplace_packed".

transformers builds no mask for an attention implementation it does not know (so no [T, T]
tensor exists); the layers hand our function q/k/v [1, heads, T, d] plus the forward's extra
kwargs, from which we read `packed_segments` (cu_seqlens as Python ints) and run causal SDPA
on each example's slice. Cost: sum of L_i^2 instead of T^2, and nothing spent on padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "fireplace_packed"
_registered = False


def packed_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0,
                     scaling: float | None = None, is_causal=None, **kwargs):
    segments = kwargs.get("packed_segments") or (0, query.shape[2])
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    outs = []
    for lo, hi in zip(segments[:-1], segments[1:]):
        outs.append(F.scaled_dot_product_attention(query[:, :, lo:hi], key[:, :, lo:hi], value[:, :, lo:hi],
                                                   dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        AttentionInterface.register(NAME, packed_attention)
        _registered = True
    return NAME
