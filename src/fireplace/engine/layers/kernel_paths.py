"""Where the layers run fireplace.engine.kernels' C code instead of torch ops.

The kernels are fp32 on CPU only, compiled at first use (no compiler: torch ops as before).
The flag lets tests cover both paths; torch.compile traces the torch ops (a ctypes call would
only break its graph).
"""
from __future__ import annotations

import torch

from fireplace.engine.kernels import elementwise as elementwise_kernels
from fireplace.engine.kernels import small_gemm

# Fused RMSNorm (+ residual add), rotary and SiLU-and-multiply on CPU fp32.
CPU_ELEMENTWISE = True
# Projections of batches up to SMALL_GEMM_MAX_TOKENS tokens (decode) through our GEMM: MKL's
# sgemm barely uses the second core at these sizes (SmolLM2 shapes, 2 threads, 64 tokens:
# 1.3-2.2x F.linear per projection, 1.1x for a lone 576 -> 192; bench/small_gemm_kernel.py).
# Larger batches stay with MKL, which does well there.
CPU_SMALL_GEMM = True
SMALL_GEMM_MAX_TOKENS = 256


def uses_elementwise_kernels(t: torch.Tensor) -> bool:
    """Whether the layers handle activation t (and the tensors beside it) with the C kernels."""
    return (CPU_ELEMENTWISE and t.dtype == torch.float32 and t.device.type == "cpu"
            and not torch.compiler.is_compiling() and elementwise_kernels.available())


def uses_small_gemm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x [T, in] @ weight [out, in]^T runs through the C GEMM (small_gemm.linear_unchecked's
    preconditions included: fp32 CPU, contiguous weight, unit column stride of x)."""
    return (CPU_SMALL_GEMM and x.shape[0] <= SMALL_GEMM_MAX_TOKENS and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.device.type == "cpu" and weight.device.type == "cpu"
            and x.dim() == 2 and x.stride()[1] == 1 and weight.is_contiguous()
            and not torch.compiler.is_compiling() and small_gemm.available() and small_gemm.uses_avx2())
