"""ctypes wrapper of elementwise.c: the non-matmul ops of a Llama layer, fused, fp32 on CPU.

    out = silu_mul(g, u)                        silu(g) * u; g, u [T, I] -> out [T, I]
    out = rms_norm(x, weight, eps)              RMSNorm; x [T, H], weight [H] -> out [T, H]
    out = add_rms_norm_(x, residual, weight, eps)  residual += x (in place), out = rms_norm(residual)
    rotary_(q, k, cos, sin)                     RoPE on q [T, Hq, D] and k [T, Hk, D], in place

Inputs may be row-strided views (each row contiguous, rows any distance apart): the two halves
of a fused gate/up product, the q and k columns of a fused qkv product viewed as heads. Outputs
are new contiguous tensors. Everything is float32 on CPU; there is no autograd (the kernels
write through raw pointers: use them under torch.inference_mode / no_grad only).

Results against the torch code they replace (F.silu(g) * u, layers/norm.RMSNorm,
layers/rotary.apply_rotary):
  - silu_mul: exp is the kernel's own (within ~1 ulp), not torch's; results agree within a few
    ulp (tests: 2e-6 relative), special values as torch (silu(-inf) = NaN, silu(x) = -0 for
    x < -88.7, NaN propagates).
  - rms_norm: the sum of squares is taken in another order than torch's reduction (and with
    fused multiply-adds), so the results differ by a few ulp; residual += x is one fp32 add,
    bitwise equal to torch's x + residual.
  - rotary: gcc fuses a * cos - b * sin into one multiply-add (one rounding where torch rounds
    twice), so the results differ by at most ~1 ulp of the products.

Per-call cost outside the C work, ~6-7 us on 2 cores (bench/elementwise_kernels.py, last
table): ~2-2.5 us for the ctypes call itself (argtypes conversion of 8-11 arguments), ~1.5 us
for torch.empty of the output, ~2 us for the argument checks. The checks are attribute reads and
comparisons only (dtype, device, dims, sizes, the element and head strides); what the C side can
check on the ints it gets (negative sizes and strides, overlapping rows written in place) it
does, returning FP_ERR_ARGS. Not checked: that q and k, or x and residual, do not overlap each
other (their memory is not inspected).

The library is compiled on first use (see cpu_build); `available()` says whether that worked.
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from fireplace.engine.kernels.arg_checks import thread_count
from fireplace.engine.kernels.cpu_build import KernelLibrary

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("elementwise.c")
# Floats of work per thread before a call is split over threads (*_WORK_PER_THREAD in the C
# source): smaller calls run on the calling thread whatever num_threads says.
SILU_WORK_PER_THREAD = 4096
NORM_WORK_PER_THREAD = 8192
ROTARY_WORK_PER_THREAD = 8192
_F32 = torch.float32
# Return codes of the fp_* functions (FP_ERR_* in the C source).
_ERR_ARGS = 4

def _declare(lib: ctypes.CDLL) -> None:
    """argtypes/restype of each kernel (pointers as c_void_p, sizes and strides in floats)."""
    ptr, i64, f32, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    signatures = {
        # g, g_stride, u, u_stride, out, T, I, nthreads
        "fp_silu_mul": [ptr, i64, ptr, i64, ptr, i64, i64, c_int],
        # x, x_stride, weight, eps, out, T, H, nthreads
        "fp_rms_norm": [ptr, i64, ptr, f32, ptr, i64, i64, c_int],
        # x, x_stride, residual, r_stride, weight, eps, out, T, H, nthreads
        "fp_add_rms_norm": [ptr, i64, ptr, i64, ptr, f32, ptr, i64, i64, c_int],
        # q, q_stride, Hq, k, k_stride, Hk, cos, sin, T, D, nthreads
        "fp_rotary": [ptr, i64, i64, ptr, i64, i64, ptr, ptr, i64, i64, c_int],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int


_kernels = KernelLibrary(_SOURCE, "elementwise", _declare)
_load = _kernels.get

def available() -> bool:
    """Whether the kernels compiled and loaded on this machine (cached after the first call)."""
    return _load() is not None


def _library() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError("elementwise CPU kernels are unavailable (see available())")
    return lib


def _tensor(name: str, t: object, dim: int) -> tuple[torch.Size, tuple[int, ...]]:
    """(shape, strides) of t, a float32 CPU tensor of `dim` dims whose last dim has stride 1.
    Attribute reads only (~0.1 us each): this runs for every argument of every call."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype is not _F32:
        raise ValueError(f"{name} must be float32, got {t.dtype}")
    if not t.is_cpu:
        raise ValueError(f"{name} must be a CPU tensor, got device {t.device}")
    shape, strides = t.shape, t.stride()
    if len(shape) != dim:
        raise ValueError(f"{name} must have {dim} dims, got shape {tuple(shape)}")
    if dim and strides[-1] != 1 and shape[-1] > 1:
        raise ValueError(f"{name} must have contiguous rows (last-dim stride 1), got strides {strides}")
    return shape, strides


def _check_weight(weight: object, size: int) -> None:
    shape, _ = _tensor("weight", weight, 1)
    if shape[0] != size:
        raise ValueError(f"weight has {shape[0]} elements, rows have {size}")


def _raise_for(code: int, kernel: str) -> None:
    if code == _ERR_ARGS:
        raise ValueError(f"invalid sizes or strides passed to the {kernel} kernel (overlapping rows written in place?)")
    raise RuntimeError(f"{kernel} kernel failed ({code})")


def silu_mul(g: torch.Tensor, u: torch.Tensor, num_threads: int | None = None) -> torch.Tensor:
    """g, u [T, I] float32, rows contiguous (any row stride, e.g. the halves of a [T, 2I]
    tensor) -> out [T, I] = F.silu(g) * u, contiguous.

    Raises TypeError for non-tensors, ValueError for bad shapes, dtypes, devices or strides,
    RuntimeError when the kernels are unavailable (check `available()` first)."""
    (rows, n), (g_stride, _) = _tensor("g", g, 2)
    u_shape, (u_stride, _) = _tensor("u", u, 2)
    if u_shape != (rows, n):
        raise ValueError(f"g {(rows, n)} and u {tuple(u_shape)} differ in shape")
    nthreads = thread_count(num_threads)
    out = torch.empty(rows, n, dtype=_F32)
    if rows == 0 or n == 0:
        return out
    code = _library().fp_silu_mul(g.data_ptr(), g_stride, u.data_ptr(), u_stride, out.data_ptr(),
                                  rows, n, nthreads)
    if code != 0:
        _raise_for(code, "silu_mul")
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, num_threads: int | None = None) -> torch.Tensor:
    """x [T, H] float32, rows contiguous (any row stride), weight [H] float32 ->
    out [T, H] = weight * (x * rsqrt(mean(x^2, -1) + eps)), contiguous (layers/norm.RMSNorm).

    Raises as silu_mul."""
    (rows, n), (x_stride, _) = _tensor("x", x, 2)
    _check_weight(weight, n)
    nthreads = thread_count(num_threads)
    out = torch.empty(rows, n, dtype=_F32)
    if rows == 0 or n == 0:
        return out
    code = _library().fp_rms_norm(x.data_ptr(), x_stride, weight.data_ptr(), eps, out.data_ptr(),
                                  rows, n, nthreads)
    if code != 0:
        _raise_for(code, "rms_norm")
    return out


def add_rms_norm_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                  num_threads: int | None = None) -> torch.Tensor:
    """x, residual [T, H] float32, rows contiguous (any row stride; residual's rows must not
    overlap), weight [H] float32. In one pass: residual += x (in place, one fp32 add per element,
    bitwise equal to torch's residual + x), then returns out [T, H] = rms_norm(residual), contiguous.

    The pre-norm residual stream of a decoder layer: h = h + attn(...); mlp_in = norm(h) becomes
    mlp_in = add_rms_norm_(attn(...), h, norm.weight, norm.eps). Raises as silu_mul."""
    (rows, n), (x_stride, _) = _tensor("x", x, 2)
    r_shape, (r_stride, _) = _tensor("residual", residual, 2)
    if r_shape != (rows, n):
        raise ValueError(f"x {(rows, n)} and residual {tuple(r_shape)} differ in shape")
    _check_weight(weight, n)
    nthreads = thread_count(num_threads)
    out = torch.empty(rows, n, dtype=_F32)
    if rows == 0 or n == 0:
        return out
    code = _library().fp_add_rms_norm(x.data_ptr(), x_stride, residual.data_ptr(), r_stride,
                                      weight.data_ptr(), eps, out.data_ptr(), rows, n, nthreads)
    if code != 0:
        _raise_for(code, "add_rms_norm")
    return out


def _heads(name: str, t: object) -> tuple[torch.Size, int]:
    """(shape [T, H, D], row stride) of t, with heads contiguous within a row (strides (*, D, 1))."""
    shape, strides = _tensor(name, t, 3)
    if strides[1] != shape[2] and shape[1] > 1:
        raise ValueError(f"{name}'s heads must be contiguous within a row (strides (*, D, 1)), got {strides}")
    return shape, strides[0]


def _check_angles(name: str, t: object, rows: int, half: int) -> None:
    """cos/sin: [T, D/2] or [T, 1, D/2], contiguous."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype is not _F32 or not t.is_cpu:
        raise ValueError(f"{name} must be a float32 CPU tensor, got {t.dtype} on {t.device}")
    shape = t.shape
    if len(shape) not in (2, 3) or shape[0] != rows or shape[-1] != half or (len(shape) == 3 and shape[1] != 1):
        raise ValueError(f"{name} must be [T, D/2] or [T, 1, D/2] = [{rows}, (1,) {half}], got {tuple(shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            num_threads: int | None = None) -> None:
    """q [T, Hq, D], k [T, Hk, D] float32, heads contiguous within a row (e.g. column slices of
    a fused [T, (Hq + 2 Hk) D] qkv product viewed as heads), D even; cos, sin [T, D/2] or
    [T, 1, D/2] (RotaryEmbedding.cos_sin) float32 contiguous. Rotates q and k in place as
    layers/rotary.apply_rotary does: with x1, x2 the halves of each head,
    x = cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin). Returns None.

    q and k must not overlap each other (not checked). Raises as silu_mul."""
    (rows, q_heads, dim), q_stride = _heads("q", q)
    (k_rows, k_heads, k_dim), k_stride = _heads("k", k)
    if k_rows != rows or k_dim != dim:
        raise ValueError(f"q {(rows, q_heads, dim)} and k {(k_rows, k_heads, k_dim)} differ in T or head_dim")
    if dim % 2:
        raise ValueError(f"head_dim must be even, got {dim}")
    _check_angles("cos", cos, rows, dim // 2)
    _check_angles("sin", sin, rows, dim // 2)
    nthreads = thread_count(num_threads)
    if rows == 0 or dim == 0:
        return
    code = _library().fp_rotary(q.data_ptr(), q_stride, q_heads, k.data_ptr(), k_stride, k_heads,
                                cos.data_ptr(), sin.data_ptr(), rows, dim, nthreads)
    if code != 0:
        _raise_for(code, "rotary")
