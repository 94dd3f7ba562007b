"""SwiGLU's gate: silu(gate) * up, fused into one pass on CPU fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fireplace.engine.kernels import elementwise
from fireplace.engine.layers.kernel_paths import uses_elementwise_kernels


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up: [T, I] (may be the two column halves of one [T, 2I] product) -> [T, I]."""
    if uses_elementwise_kernels(gate):
        return elementwise.silu_mul(gate, up)
    return F.silu(gate) * up
