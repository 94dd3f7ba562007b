"""Where the layers run fireplace.engine.kernels' C code instead of torch ops.

The kernels are fp32 on CPU only, compiled at first use (no compiler: torch ops as before).
The flag lets tests cover both paths; torch.compile traces the torch ops (a ctypes call would
only break its graph).
"""
from __future__ import annotations

import torch

from fireplace.engine.kernels import elementwise as elementwise_kernels

# Fused RMSNorm (+ residual add), rotary and SiLU-and-multiply on CPU fp32.
CPU_ELEMENTWISE = True


def uses_elementwise_kernels(t: torch.Tensor) -> bool:
    """Whether the layers handle activation t (and the tensors beside it) with the C kernels."""
    return (CPU_ELEMENTWISE and t.dtype == torch.float32 and t.device.type == "cpu"
            and not torch.compiler.is_compiling() and elementwise_kernels.available())
