"""The projection layer every model uses, with a hook for LoRA addons.

`Linear` is a plain y = x W^T (+ b). When the LoRA subsystem attaches a stack of
adapters to it (`lora_stack`), the per-token adapter delta is added:
    y[t] += scale[s_t] * (x[t] @ A[s_t]^T) @ B[s_t]^T     with s_t = ctx.lora slot of token t.
Models call `proj(x, ctx)`; the base path never looks at `ctx`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
                     if bias else None)
        # Set by fireplace.engine.lora when adapters may target this projection.
        # Interface: lora_stack.apply(x [T, in], y [T, out], lora_batch) -> y' [T, out]
        self.lora_stack = None

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.lora_stack is not None and ctx is not None and ctx.lora is not None:
            y = self.lora_stack.apply(x, y, ctx.lora)
        return y
