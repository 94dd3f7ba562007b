"""ctypes wrapper of quant_gemv.c: y = x @ dequantize(qw)^T + bias, the weight read quantized.

    y = linear(x, qw, bias=None, out=None)

x [M, K] fp32, qw a fireplace.engine.quantization.QuantizedWeight (int8 or int4) of shape
[N, K], bias [N] -> y [M, N] fp32. For small M: dequantizes in registers (AVX2 + FMA; a
portable path otherwise), one fp32 accumulation per output, reusing each weight row for all M
tokens from L1 without register blocking over tokens; or, with activations="int8" (the
backend's default for 4-bit weights: BackendConfig.quant_activations), rounds x to int8 per
block of 32 and takes integer dot products per block (faster, not exact: quantize_activations
states the rounding). Larger M: gemm_unchecked (fq_gemm, AVX2 or AVX-512 builds: a block of
rows dequantized into L2, then a register-blocked GEMM over every token), or
dequantize_unchecked + an fp32 GEMM. The library is compiled on first use (cpu_build);
`available()` says whether that worked, `uses_avx2()` whether it got the fast path.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch

from fireplace.engine.backend_config import QUANT_ACTIVATIONS
from fireplace.engine.kernels.arg_checks import check_tensor, thread_count
from fireplace.engine.kernels.cpu_build import KernelLibrary
from fireplace.engine.quantization import QuantizedWeight

_SOURCE = Path(__file__).with_name("quant_gemv.c")


def _declare(lib: ctypes.CDLL) -> None:
    c_i64, c_ptr = ctypes.c_int64, ctypes.c_void_p
    lib.fq_linear_int8.argtypes = [c_ptr, c_i64, c_ptr, c_ptr, c_i64, c_ptr,  # x, ldx, q, scale, G, bias
                                   c_ptr, c_i64, c_i64, c_i64, c_i64, ctypes.c_int]  # y, ldy, M, K, N, threads
    lib.fq_linear_int8.restype = ctypes.c_int
    lib.fq_linear_int4.argtypes = [c_ptr, c_i64, c_ptr, c_ptr, c_ptr, c_i64, c_ptr,  # x, ldx, q, scale, min, G, bias
                                   c_ptr, c_i64, c_i64, c_i64, c_i64, ctypes.c_int]
    lib.fq_linear_int4.restype = ctypes.c_int
    for name in ("fq_linear_int8", "fq_linear_int4"):  # the int8-activation twins, same arguments
        twin = getattr(lib, name + "_q8")
        twin.argtypes, twin.restype = getattr(lib, name).argtypes, ctypes.c_int
    lib.fq_dequantize.argtypes = [c_ptr, c_ptr, c_ptr, c_i64, ctypes.c_int,  # q, scale, min, G, is_int4
                                  c_ptr, c_i64, c_i64, c_i64, ctypes.c_int]  # out, ldo, K, N, threads
    lib.fq_dequantize.restype = ctypes.c_int
    lib.fq_uses_avx2.argtypes = []
    lib.fq_uses_avx2.restype = ctypes.c_int
    lib.fq_gemm.argtypes = [c_ptr, c_i64, c_ptr, c_ptr, c_ptr, c_i64, ctypes.c_int,  # x, ldx, q, scale, min, G, is_int4
                            c_ptr, c_ptr, c_i64, c_i64, c_i64, c_i64,  # bias, y, ldy, M, K, N
                            c_ptr, c_i64, ctypes.c_int]  # work, work_floats, threads
    lib.fq_gemm.restype = ctypes.c_int
    lib.fq_gemm_available.argtypes = []
    lib.fq_gemm_available.restype = ctypes.c_int
    lib.fq_gemm_workspace_floats.argtypes = [c_i64, c_i64, ctypes.c_int]
    lib.fq_gemm_workspace_floats.restype = c_i64


_kernels = KernelLibrary(_SOURCE, "quant_gemv", _declare)
ACTIVATIONS = tuple(a for a in QUANT_ACTIVATIONS if a != "auto")  # how the GEMV reads x
ACTIVATION_BLOCK = 32
_workspace = threading.local()  # .buffer: fp32 storage fq_gemm works in, per calling thread, kept


def available() -> bool:
    """Whether the kernel compiled and loaded here (cached after the first call)."""
    return _kernels.get() is not None


def uses_avx2() -> bool:
    """Whether the library has its AVX2/FMA path (else the portable loops: correct, slow)."""
    lib = _kernels.get()
    return lib is not None and bool(lib.fq_uses_avx2())


def gemm_available() -> bool:
    """Whether the batch-sized kernel (fq_gemm: dequantize a block of rows, an AVX2 or AVX-512
    GEMM over it) is built here; without it larger batches dequantize the whole weight instead."""
    lib = _kernels.get()
    return lib is not None and bool(lib.fq_gemm_available())


def gemm_unchecked(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                   out: torch.Tensor | None = None, num_threads: int | None = None) -> torch.Tensor:
    """The same product as linear_unchecked for any number of rows, through fq_gemm (the
    caller checks gemm_available() and linear's argument rules). Its workspace (x packed plus
    one block of dequantized rows per thread: 1.4 MB at 64 tokens, K = 1536, 2 threads) is
    kept per calling thread."""
    num_tokens = x.shape[0]
    if out is None:
        out = torch.empty((num_tokens, qw.out_features), dtype=torch.float32)
    threads = torch.get_num_threads() if num_threads is None else num_threads
    lib = _kernels.get()
    need = lib.fq_gemm_workspace_floats(num_tokens, qw.in_features, threads)
    buffer = getattr(_workspace, "buffer", None)
    if buffer is None or buffer.numel() < need:
        buffer = _workspace.buffer = torch.empty(need, dtype=torch.float32)  # 64-byte aligned (c10)
    ldx = x.stride()[0] if num_tokens > 1 else qw.in_features
    ldy = out.stride()[0] if num_tokens > 1 else qw.out_features
    is_int4 = qw.scheme == "int4"
    code = lib.fq_gemm(x.data_ptr(), ldx, qw.qweight.data_ptr(), qw.scale.data_ptr(),
                       qw.min.data_ptr() if is_int4 else None, qw.group_size, int(is_int4),
                       None if bias is None else bias.data_ptr(), out.data_ptr(), ldy, num_tokens,
                       qw.in_features, qw.out_features, buffer.data_ptr(), buffer.numel(), threads)
    if code != 0:
        raise ValueError("invalid sizes or strides passed to the quantized GEMM kernel"
                         if code == 1 else "the quantized GEMM kernel is not built here (no AVX2)")
    return out


def linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None, num_threads: int | None = None,
           activations: str = "fp32") -> torch.Tensor:
    """x [M, K] fp32 (unit column stride, rows apart), qw [N, K] on the CPU, bias [N] fp32 or
    None -> y [M, N] fp32 (into `out` when given: [M, N], unit column stride). activations
    "fp32" reads x as it is; "int8" first rounds each token's x to int8 in blocks of 32
    (quant_gemv.c: integer dot products, faster, not exact; `quantize_activations` gives the
    values it uses), except where K or the group size is not a multiple of 32.
    Raises TypeError / ValueError for bad arguments, RuntimeError when the kernel is unavailable."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw must be a QuantizedWeight, got {type(qw).__name__}")
    check_tensor("x", x, 2, torch.float32)
    if x.shape[1] != qw.in_features:
        raise ValueError(f"x {tuple(x.shape)} does not match the weight {qw.shape}: expected [M, {qw.in_features}]")
    if (x.shape[1] > 1 and x.stride(1) != 1) or (x.shape[0] > 1 and x.stride(0) < x.shape[1]):
        raise ValueError(f"x needs unit column stride and non-overlapping rows, got strides {x.stride()}")
    for name, t in (("qweight", qw.qweight), ("scale", qw.scale), ("min", qw.min)):
        if t is not None and not t.is_cpu:
            raise ValueError(f"the weight's {name} must be on the CPU, got {t.device}")
    if bias is not None:
        check_tensor("bias", bias, 1, torch.float32)
        if bias.shape[0] != qw.out_features or (bias.shape[0] > 1 and bias.stride(0) != 1):
            raise ValueError(f"bias must be contiguous with {qw.out_features} entries, got {tuple(bias.shape)}")
    if out is not None:
        check_tensor("out", out, 2, torch.float32)
        if out.shape != (x.shape[0], qw.out_features):
            raise ValueError(f"out {tuple(out.shape)} must have shape {(x.shape[0], qw.out_features)}")
        if (out.shape[1] > 1 and out.stride(1) != 1) or (out.shape[0] > 1 and out.stride(0) < out.shape[1]):
            raise ValueError(f"out needs unit column stride and non-overlapping rows, got strides {out.stride()}")
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
    num_threads = thread_count(num_threads)
    if not available():
        raise RuntimeError("quantized GEMV CPU kernel is unavailable (see available())")
    return linear_unchecked(x, qw, bias, out, num_threads, activations)


def linear_unchecked(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None,
                     out: torch.Tensor | None = None, num_threads: int | None = None,
                     activations: str = "fp32") -> torch.Tensor:
    """linear without the argument checks (the decode hot path): the caller guarantees them,
    and that `activations` is one of ACTIVATIONS."""
    num_tokens = x.shape[0]
    if out is None:
        out = torch.empty((num_tokens, qw.out_features), dtype=torch.float32)
    threads = torch.get_num_threads() if num_threads is None else num_threads
    bias_ptr = None if bias is None else bias.data_ptr()
    lib = _kernels.get()
    ldx = x.stride()[0] if num_tokens > 1 else qw.in_features  # a 1-row view may report any stride
    ldy = out.stride()[0] if num_tokens > 1 else qw.out_features
    int8_x = activations == "int8"
    if qw.scheme == "int8":
        kernel = lib.fq_linear_int8_q8 if int8_x else lib.fq_linear_int8
        code = kernel(x.data_ptr(), ldx, qw.qweight.data_ptr(), qw.scale.data_ptr(), qw.group_size, bias_ptr,
                      out.data_ptr(), ldy, num_tokens, qw.in_features, qw.out_features, threads)
    else:
        kernel = lib.fq_linear_int4_q8 if int8_x else lib.fq_linear_int4
        code = kernel(x.data_ptr(), ldx, qw.qweight.data_ptr(), qw.scale.data_ptr(), qw.min.data_ptr(),
                      qw.group_size, bias_ptr, out.data_ptr(), ldy, num_tokens, qw.in_features,
                      qw.out_features, threads)
    if code != 0:
        raise ValueError("invalid sizes or strides passed to the quantized GEMV kernel")
    return out


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 activations the "int8" GEMV computes with, in torch (its reference): x [M, K]
    fp32, K a multiple of 32 -> (xq int8 [M, K], xs fp32 [M, K / 32]) with x ~ xq * xs per block:
    xs = amax / 127, xq = round_half_even(x * (1 / xs)) (0 for an all-zero block)."""
    blocks = x.reshape(x.shape[0], -1, ACTIVATION_BLOCK)
    xs = blocks.abs().amax(dim=2) / 127.0
    inverse = torch.where(xs != 0, 1.0 / xs, torch.zeros_like(xs))
    xq = torch.round(blocks * inverse.unsqueeze(2)).to(torch.int8)
    return xq.reshape(x.shape), xs


def dequantize_unchecked(qw: QuantizedWeight, out: torch.Tensor | None = None,
                         num_threads: int | None = None) -> torch.Tensor:
    """The fp32 [N, K] weight of qw (quantization.dequantize's values; the int4 ones rounded
    once, by an FMA), written by C loops into `out` (contiguous [N, K] fp32) when given.
    For CPU tensors, with available() true (the caller checks)."""
    if out is None:
        out = torch.empty(qw.shape, dtype=torch.float32)
    is_int4 = qw.scheme == "int4"
    code = _kernels.get().fq_dequantize(
        qw.qweight.data_ptr(), qw.scale.data_ptr(), qw.min.data_ptr() if is_int4 else None, qw.group_size,
        int(is_int4), out.data_ptr(), qw.in_features, qw.in_features, qw.out_features,
        torch.get_num_threads() if num_threads is None else num_threads)
    if code != 0:
        raise ValueError("invalid sizes passed to the dequantize kernel")
    return out
