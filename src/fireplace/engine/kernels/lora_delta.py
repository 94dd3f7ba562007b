"""ctypes wrapper of lora_delta.c: the batched multi-LoRA delta of one projection, in one call.

    lora_delta_(x, a, b, ranks, token_slots, y)        y[t] += (x[t] @ a[s, :r]^T) @ b[s, :r]

x [T, K], a [S, R, K], b [S, R, N] (the LoRAStack tensors), ranks [S], token_slots [T] (-1 =
base model only) -> y [T, N] updated in place, s = token_slots[t], r = ranks[s]. y may be a
column slice of a wider output (row stride > N), x a row-strided view.
The library is compiled on first use (see cpu_build); `available()` says whether that worked.

x, a and b must not overlap y. `lora_delta_` validates its arguments (~4 us a call);
`lora_delta_unchecked_` skips that for callers that built the tensors themselves (the decode
hot path: ~200 calls a step), and still reports bad slots and ranks.
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from fireplace.engine.kernels.arg_checks import check_tensor, thread_count
from fireplace.engine.kernels.cpu_build import KernelLibrary

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("lora_delta.c")
# Return codes of fp_lora_delta (FP_ERR_* in the C source). y is untouched when one is returned.
_ERRORS = {
    1: (ValueError, "token_slots holds a slot outside [-1, S)"),
    2: (ValueError, "ranks holds a rank outside [0, R]"),
    3: (ValueError, "invalid sizes or strides passed to the LoRA delta kernel"),
    4: (MemoryError, "LoRA delta kernel ran out of memory"),
}

def _declare(lib: ctypes.CDLL) -> None:
    fn = lib.fp_lora_delta
    c_i64, c_ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [c_ptr, c_i64, c_ptr, c_ptr,  # x, ldx, a, b
                   c_ptr, c_ptr, c_ptr, c_i64,  # ranks, token_slots, y, ldy
                   c_i64, c_i64, c_i64, c_i64, c_i64,  # T, K, N, S, R
                   ctypes.c_int]  # nthreads
    fn.restype = ctypes.c_int


_kernels = KernelLibrary(_SOURCE, "lora_delta", _declare)
_load = _kernels.get

def available() -> bool:
    """Whether the kernel compiled and loaded on this machine (cached after the first call)."""
    return _load() is not None


def _check_rows(name: str, t: torch.Tensor) -> None:
    """Unit column stride, and rows that do not overlap (the kernel writes y rows in parallel)."""
    (rows, cols), (row_stride, col_stride) = t.shape, t.stride()
    if col_stride != 1 and cols > 1:
        raise ValueError(f"{name} must have unit column stride, got strides {(row_stride, col_stride)}")
    if row_stride < cols and rows > 1:
        raise ValueError(f"{name} rows overlap: strides {(row_stride, col_stride)} for shape {(rows, cols)}")


def _raise_for(code: int) -> None:
    exc_type, message = _ERRORS.get(code, (RuntimeError, f"LoRA delta kernel failed ({code})"))
    raise exc_type(message)


def lora_delta_(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ranks: torch.Tensor,
                token_slots: torch.Tensor, y: torch.Tensor, num_threads: int | None = None) -> torch.Tensor:
    """x [T, K] fp32, a [S, R, K] fp32 contiguous, b [S, R, N] fp32 contiguous, ranks [S] int32,
    token_slots [T] int32 (-1 or a slot), y [T, N] fp32 -> y, with every token's delta added in
    place. x and y need unit column stride (any row stride: views of wider tensors are fine)
    and must not overlap; all tensors on the CPU. num_threads defaults to torch's.

    Raises ValueError for bad shapes, dtypes, devices, strides, slots or ranks (y is then left
    unchanged), TypeError for arguments that are not tensors, RuntimeError when the kernel is
    unavailable (check `available()` first). Autograd does not see the update.
    The checks add ~4 us a call to lora_delta_unchecked_'s ~4; use that one on the decode hot path."""
    check_tensor("x", x, 2, torch.float32)
    check_tensor("a", a, 3, torch.float32)
    check_tensor("b", b, 3, torch.float32)
    check_tensor("ranks", ranks, 1, torch.int32)
    check_tensor("token_slots", token_slots, 1, torch.int32)
    check_tensor("y", y, 2, torch.float32)
    num_tokens, in_features = x.shape
    num_slots, max_rank, a_in = a.shape
    out_features = y.shape[1]
    if a_in != in_features:
        raise ValueError(f"a {tuple(a.shape)} does not match x {tuple(x.shape)}: expected [S, R, {in_features}]")
    if b.shape != (num_slots, max_rank, out_features):
        raise ValueError(f"b {tuple(b.shape)} does not match a {tuple(a.shape)} and y {tuple(y.shape)}: "
                         f"expected {(num_slots, max_rank, out_features)}")
    if y.shape[0] != num_tokens or token_slots.shape[0] != num_tokens:
        raise ValueError(f"x {tuple(x.shape)}, y {tuple(y.shape)} and token_slots {tuple(token_slots.shape)} "
                         f"must have {num_tokens} rows, one per token")
    if ranks.shape[0] != num_slots:
        raise ValueError(f"ranks {tuple(ranks.shape)} must have {num_slots} entries, one per slot")
    if not (a.is_contiguous() and b.is_contiguous() and ranks.is_contiguous() and token_slots.is_contiguous()):
        raise ValueError("a, b, ranks and token_slots must be contiguous")
    _check_rows("x", x)
    _check_rows("y", y)
    num_threads = thread_count(num_threads)
    if _load() is None:
        raise RuntimeError("LoRA delta CPU kernel is unavailable (see available())")
    return lora_delta_unchecked_(x, a, b, ranks, token_slots, y, num_threads)


def lora_delta_unchecked_(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ranks: torch.Tensor,
                          token_slots: torch.Tensor, y: torch.Tensor, num_threads: int | None = None) -> torch.Tensor:
    """lora_delta_ without the Python-side checks, for trusted callers on the decode hot path
    (~4 us of Python a call instead of ~8, half of it the ctypes call itself; 2-core AVX2 machine).

    The caller guarantees what lora_delta_ checks: CPU tensors of the stated dtypes and shapes,
    a, b, ranks and token_slots contiguous, x and y with unit column stride, and `available()`
    true. Breaking that reads or writes out of bounds. Slots, ranks and row strides are still
    checked by the kernel (ValueError, y unchanged)."""
    num_tokens, in_features = x.shape
    num_slots, max_rank, _ = a.shape
    # .stride() and .shape: a tuple each, 3x cheaper than .stride(0) (argument parsing)
    code = _kernels.get().fp_lora_delta(
        x.data_ptr(), x.stride()[0], a.data_ptr(), b.data_ptr(), ranks.data_ptr(), token_slots.data_ptr(),
        y.data_ptr(), y.stride()[0], num_tokens, in_features, y.shape[1], num_slots, max_rank,
        torch.get_num_threads() if num_threads is None else num_threads)
    if code != 0:
        _raise_for(code)
    return y
