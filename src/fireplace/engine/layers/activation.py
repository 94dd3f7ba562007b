"""SwiGLU's gate: silu(gate) * up, fused into one pass on the cpu-kernels backend."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fireplace.engine.backend import Backend
from fireplace.engine.kernels import elementwise


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor, backend: Backend) -> torch.Tensor:
    """gate, up: [T, I] (may be the two column halves of one [T, 2I] product) -> [T, I]."""
    if backend.uses_elementwise_kernels(gate):
        return elementwise.silu_mul(gate, up)
    return F.silu(gate) * up
