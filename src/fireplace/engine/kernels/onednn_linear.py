"""oneDNN's linear layer on a pre-packed weight (the library kernel torch ships; no C of ours).

    packed = pack(weight)                 weight [N, K] fp32 | bf16 -> oneDNN's blocked layout
    y = linear(x, packed, bias=None)      x [M, K] (same dtype) -> y [M, N] = x @ weight^T + bias
    packed = pack(weight, torch.bfloat16); y = linear(x, packed, bias, torch.bfloat16)
                                          fp32 x and y, the product in bf16 (x and the weight
                                          rounded to bf16, fp32 accumulation, y rounded to bf16)

Why: torch's F.linear runs MKL's sgemm for fp32, and on this AMD machine MKL takes its AVX2
code path (~150-170 GFLOP/s on 2 cores) while oneDNN's inner product uses AVX-512: measured
here on SmolLM2-135M's shapes, 2 threads, 2.0-2.6x F.linear from 4 to 2048 rows and ~1.8x our
C small GEMM at 64 rows (a decode step's projections: 47 vs 85 ms); bf16 goes through oneDNN in
F.linear already, packing saves its per-call weight reorder. The packed copy is a second copy
of the weight (the dense one stays: loading, merging, quantizing and the fast decode path read
it), so fp32 weights take twice their size in memory with this path on.

Rounding: not batch invariant. oneDNN blocks the reduction by the number of rows for some
shapes (here K = 1536, down_proj: row 0 of a 64-row product differs in the last bits from the
same row alone; K = 576 happened to agree), and it sums in a different order from our small
GEMM. backend.py's "Batch invariance" says what holds with this path on.

These are the ops torch's own inductor uses for CPU linear layers (torch.ops.mkldnn.
_reorder_linear_weight / _linear_pointwise); `available()` probes them once (present, and
equal to F.linear within rounding on a small case) so a torch build without them, or without
oneDNN, falls back to the other paths with one log line.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def available() -> bool:
    """Whether torch's oneDNN linear ops exist and agree with F.linear here (probed once)."""
    try:
        if not torch.backends.mkldnn.is_available():
            raise RuntimeError("torch was built without oneDNN (mkldnn)")
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 40, generator=gen)
        x = torch.randn(5, 40, generator=gen)
        bias = torch.randn(48, generator=gen)
        with torch.inference_mode():
            got = linear(x, pack(weight), bias)
        if not torch.allclose(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5):
            raise RuntimeError("its result differs from F.linear")
        return True
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        logger.info("oneDNN linear not used (%s); projections run F.linear / our small GEMM", exc)
        return False


@functools.cache
def supports(dtype: torch.dtype) -> bool:
    """Whether `pack` / `linear` run here in dtype: fp32 where available(); bf16 also needs a CPU
    oneDNN has a bf16 path for (AVX512BW/VL/DQ or AVX-NE-CONVERT: emulated, not necessarily
    fast, see bf16_is_native); on an AVX2-only CPU its weight reorder refuses bf16."""
    if dtype not in DTYPES or not available():
        return False
    if dtype is torch.float32:
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (RuntimeError, AttributeError):
        return False


@functools.cache
def bf16_is_native() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX), without which
    oneDNN emulates bf16 and a bf16 product is slower than fp32 (Linux: /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pack(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """weight [N, K] (fp32 or bf16, CPU) -> an opaque oneDNN tensor for `linear` (a copy), in
    `dtype` (default: the weight's)."""
    weight = weight.detach()
    if dtype is not None:
        weight = weight.to(dtype)
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [M, K] -> [M, N]; packed from `pack` (in `dtype` when given, else x's), bias [N] or None.
    dtype: the product's dtype when it differs from x's (x is converted in, y back out)."""
    if dtype is None or dtype is x.dtype:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    y = torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, None if bias is None else bias.to(dtype),
                                           "none", [], "")
    return y.to(x.dtype)
