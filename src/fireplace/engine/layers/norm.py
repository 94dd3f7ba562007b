"""RMSNorm as in HF Llama: normalize in fp32, cast back, then scale by the weight.

On the cpu-kernels backend a C kernel does it in one pass, and `add_forward` fuses the residual
add in front of it (the decoder layer's `h = h + sublayer(...); norm(h)`).
"""
from __future__ import annotations

import torch
from torch import nn

from fireplace.engine.backend import Backend, default_backend
from fireplace.engine.kernels import elementwise


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, *, backend: Backend | None = None):
        """backend: the model's (default: Backend.select for device and dtype)."""
        super().__init__()
        self.eps = eps
        self.backend = backend or default_backend(device or "cpu", dtype or torch.float32)
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] -> [..., dim], same dtype."""
        if x.dim() == 2 and self.backend.uses_elementwise_kernels(x):
            return elementwise.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, residual: [T, dim] -> (norm(residual + x), residual + x).

        The sum may be written into `residual` in place (the kernel path does): pass a residual
        stream the caller owns."""
        if self.backend.uses_elementwise_kernels(x):
            return elementwise.add_rms_norm_(x, residual, self.weight, self.eps), residual
        residual = residual + x
        return self(residual), residual
