"""The matmul of a projection whose base weight is quantized (fireplace.engine.quantization).

    y = quantized_linear(x, qw, bias, backend)      x [T, in] fp32 -> y [T, out] fp32

Which code runs is the Backend's choice (uses_quant_kernel, uses_quant_gemm): small batches on
the cpu-kernels backend read the weight as stored through the quantized GEMV (kernels/quant_gemv;
activations as BackendConfig.quant_activations says); decode-step-sized ones (up to
quant_gemm_max_tokens, AVX2 / AVX-512 builds) through its GEMM, which dequantizes a block of
rows at a time into L2 and multiplies it with every token; larger batches dequantize the whole
weight with the C loops into a per-thread scratch matrix and run the fp32 path (oneDNN's linear
on it, else our small GEMM or MKL); without the C kernels (torch backend) the weight is
dequantized by torch ops. LoRA deltas are added on top by the Linear, unchanged (they read x,
not the base weight).
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from fireplace.engine.backend import Backend
from fireplace.engine.kernels import onednn_linear, quant_gemv, small_gemm
from fireplace.engine.quantization import QuantizedWeight, dequantize

_scratch = threading.local()  # .buffer: fp32 storage reused for dequantized weights on this thread


def quantized_linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None,
                     backend: Backend) -> torch.Tensor:
    if backend.uses_quant_kernel(x):
        return quant_gemv.linear_unchecked(x, qw, bias, activations=backend.config.activations_for(qw.scheme))
    if backend.uses_quant_gemm(x):
        return quant_gemv.gemm_unchecked(x, qw, bias)
    if backend.quant_kernel and x.is_cpu:
        weight = quant_gemv.dequantize_unchecked(qw, _scratch_matrix(qw.out_features, qw.in_features))
        if backend.uses_onednn(x):  # on the dense matrix as it is (packing it would cost more)
            return onednn_linear.linear(x, weight, bias)
        if backend.uses_small_gemm(x, weight):
            return small_gemm.linear_unchecked(x, weight, bias)
        return F.linear(x, weight, bias)
    return F.linear(x, dequantize(qw).to(x.dtype), bias)


def _scratch_matrix(rows: int, cols: int) -> torch.Tensor:
    """A [rows, cols] fp32 view of this thread's scratch buffer (grown as needed, kept: the
    largest matrix of the model, lm_head's, is dequantized at every prefill)."""
    needed = rows * cols
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < needed:
        buffer = _scratch.buffer = torch.empty(needed, dtype=torch.float32)
    return buffer[:needed].view(rows, cols)
