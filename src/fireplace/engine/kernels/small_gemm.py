"""ctypes wrapper of small_gemm.c: a dense fp32 linear layer for decode-sized batches.

    y = linear(x, weight, bias=None, out=None)        y = x @ weight^T + bias

x [M, K], weight [N, K] (nn.Linear layout, used as is: no packed copy), bias [N] -> y [M, N],
all fp32 on the CPU. Meant for the M of a decode step (16..128 tokens): on a 2-core Zen 3 it
ran 1.2-2x as fast as F.linear (MKL) at M = 64 and 1.6-3.4x at M = 16 on SmolLM2-135M's
shapes (bench/small_gemm_kernel.py). Correct for any M >= 0. x may be a row-strided view and
`out` a column slice of a wider matrix (e.g. one part of a fused projection's output).
Each output is one fp32 FMA chain over k: a token's result does not depend on the batch around
it or on the thread count.
The library is compiled on first use (see cpu_build); `available()` says whether that worked,
`uses_avx2()` whether it got the fast path (else callers should stay with torch).

`linear` validates its arguments (~4 us per call on that machine); `linear_unchecked` skips
that, for callers on the decode hot path that built the tensors themselves (~3 us per call in
all, ~2 us of it the ctypes call itself).
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from fireplace.engine.kernels.arg_checks import check_tensor, thread_count
from fireplace.engine.kernels.cpu_build import KernelLibrary

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("small_gemm.c")
# Return codes of fp_linear (FP_ERR_* in the C source).
_ERRORS = {
    1: (ValueError, "invalid sizes or strides passed to the small GEMM kernel"),
    2: (MemoryError, "small GEMM kernel ran out of memory"),
}

def _declare(lib: ctypes.CDLL) -> None:
    fn = lib.fp_linear
    c_i64, c_ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [c_ptr, c_i64, c_ptr, c_ptr,  # x, ldx, w, bias (NULL: none)
                   c_ptr, c_i64,  # y, ldy
                   c_i64, c_i64, c_i64,  # M, K, N
                   ctypes.c_int]  # nthreads
    fn.restype = ctypes.c_int
    lib.fp_linear_uses_avx2.argtypes = []
    lib.fp_linear_uses_avx2.restype = ctypes.c_int


_kernels = KernelLibrary(_SOURCE, "small_gemm", _declare)
_load = _kernels.get

def available() -> bool:
    """Whether the kernel compiled and loaded on this machine (cached after the first call)."""
    return _load() is not None


def uses_avx2() -> bool:
    """Whether the library was built with its AVX2/FMA kernel (-march=native on a CPU that has
    both). Without, a portable path gives the same results, but no faster than F.linear: callers
    should then keep to torch. False when the kernel is unavailable."""
    lib = _load()
    return lib is not None and bool(lib.fp_linear_uses_avx2())


def _check_matrix_strides(name: str, t: torch.Tensor) -> None:
    """Unit column stride and rows that do not overlap (strides of size-1 dims do not matter)."""
    rows, cols = t.shape
    if cols > 1 and t.stride(1) != 1:
        raise ValueError(f"{name} must have unit column stride, got strides {t.stride()}")
    if rows > 1 and t.stride(0) < cols:
        raise ValueError(f"{name} rows overlap: strides {t.stride()} for shape {tuple(t.shape)}")


def _raise_for(code: int) -> None:
    exc_type, message = _ERRORS.get(code, (RuntimeError, f"small GEMM kernel failed ({code})"))
    raise exc_type(message)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None, num_threads: int | None = None) -> torch.Tensor:
    """x [M, K] fp32, weight [N, K] fp32 contiguous, bias [N] fp32 or None -> y [M, N] fp32,
    y = x @ weight^T + bias (like F.linear), written into `out` when given (then returned).

    x and out need unit column stride; any row stride that keeps rows apart is fine (views of
    wider tensors). out must not overlap x, weight or bias. num_threads defaults to torch's.
    Accumulation is fp32 (with AVX2: one FMA chain per output, k in order), so a token's
    outputs are the same bits whatever num_threads, M or its row in x. Autograd does not see
    this op (use it under no_grad / inference_mode).

    Raises ValueError for bad shapes, dtypes, devices or strides, TypeError for arguments of the
    wrong type, RuntimeError when the kernel is unavailable (check `available()` first)."""
    check_tensor("x", x, 2, torch.float32)
    check_tensor("weight", weight, 2, torch.float32)
    num_tokens, in_features = x.shape
    out_features, weight_in = weight.shape
    if weight_in != in_features:
        raise ValueError(f"weight {tuple(weight.shape)} does not match x {tuple(x.shape)}: "
                         f"expected [N, {in_features}]")
    if not weight.is_contiguous():
        raise ValueError(f"weight must be contiguous, got strides {weight.stride()}")
    _check_matrix_strides("x", x)
    if bias is not None:
        check_tensor("bias", bias, 1, torch.float32)
        if bias.shape[0] != out_features:
            raise ValueError(f"bias {tuple(bias.shape)} must have {out_features} entries, one per weight row")
        if out_features > 1 and bias.stride(0) != 1:
            raise ValueError(f"bias must be contiguous, got stride {bias.stride()}")
    if out is not None:
        check_tensor("out", out, 2, torch.float32)
        if out.shape != (num_tokens, out_features):
            raise ValueError(f"out {tuple(out.shape)} must have shape {(num_tokens, out_features)}")
        _check_matrix_strides("out", out)
    num_threads = thread_count(num_threads)
    if _load() is None:
        raise RuntimeError("small GEMM CPU kernel is unavailable (see available())")
    return linear_unchecked(x, weight, bias, out, num_threads)


def linear_unchecked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     out: torch.Tensor | None = None, num_threads: int | None = None) -> torch.Tensor:
    """linear without the argument checks, for trusted callers on the decode hot path.

    The caller guarantees what linear checks: fp32 CPU tensors of matching shapes, weight and
    bias contiguous, x and out with unit column stride and non-overlapping rows, out not
    overlapping the inputs, num_threads >= 1, and `available()` true. Breaking that reads or
    writes out of bounds."""
    num_tokens, in_features = x.shape
    out_features, _ = weight.shape
    if out is None:
        out = torch.empty((num_tokens, out_features), dtype=torch.float32)
    code = _kernels.get().fp_linear(
        x.data_ptr(), x.stride()[0], weight.data_ptr(), None if bias is None else bias.data_ptr(),
        out.data_ptr(), out.stride()[0], num_tokens, in_features, out_features,
        torch.get_num_threads() if num_threads is None else num_threads)
    if code != 0:
        _raise_for(code)
    return out
