"""ctypes wrapper of paged_prefill.c: causal prefill attention of one sequence's chunk (AVX-512).

    out = prefill_attention(q, k, v, scale)                            no cached prefix
    out = prefill_attention(q, k_pool, v_pool, scale, block_ids=ids)   keys in the paged pools

q [Lq, H, D] fp32 (token rows may be strided: a view of the qkv product), k/v [Lk, Hkv, D] fp32
with Lk == Lq and token rows strided alike; or the pools [N, bs, Hkv, D] fp32 or bf16 (a bf16
model's KV cache, widened to fp32 as read) contiguous with the sequence's block_ids
[ceil(Lk / bs)] int64 and context_len Lk (the chunk's own k/v already written after the prefix). Query i is at position Lk - Lq + i and sees keys 0..that position;
query head h reads KV head h // (H / Hkv). -> out [Lq, H, D] fp32 contiguous.

`available()`: the library built and has the AVX-512 kernel (other builds compile a stub that
says no, and the attention layer keeps torch's SDPA). Measured on SmolLM2-135M's shapes (D 64,
9 heads over 3 KV heads), 2 threads: see bench/paged_prefill_kernel.py.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from fireplace.engine.kernels.arg_checks import check_tensor, thread_count
from fireplace.engine.kernels.cpu_build import KernelLibrary

_SOURCE = Path(__file__).with_name("paged_prefill.c")
_ERRORS = {
    1: (ValueError, "invalid sizes passed to the prefill attention kernel"),
    2: (ValueError, "block_ids holds a block id outside [0, num_blocks)"),
    3: (RuntimeError, "the prefill attention kernel needs AVX-512 (see available())"),
    4: (MemoryError, "the prefill attention kernel ran out of memory"),
}
MAX_HEAD_DIM = 256  # head_dim must be a multiple of 64 up to this (MAX_D in the C source)
_POOL_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the C side's pool_dtype (POOL_F32 / POOL_BF16)


def _declare(lib: ctypes.CDLL) -> None:
    c_i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn = lib.fp_prefill_attention
    fn.argtypes = [ptr, c_i64, ptr, ptr, ctypes.c_int, c_i64,  # q, q stride, k, v, pool dtype, kv stride
                   ptr, c_i64, c_i64, ptr,  # block_ids, block size, number of pool blocks, out
                   c_i64, c_i64, c_i64, c_i64, c_i64,  # Lq, Lk, H, Hkv, D
                   ctypes.c_float, ctypes.c_int]  # scale, threads
    fn.restype = ctypes.c_int
    lib.fp_prefill_available.argtypes = []
    lib.fp_prefill_available.restype = ctypes.c_int


_kernels = KernelLibrary(_SOURCE, "paged_prefill", _declare)


def available() -> bool:
    """Whether the AVX-512 kernel is built and loaded here (cached after the first call)."""
    lib = _kernels.get()
    return lib is not None and bool(lib.fp_prefill_available())


def supports(q: torch.Tensor, pool: torch.Tensor) -> bool:
    """Whether a layer's prefill can use the kernel: fp32 queries, fp32 or bf16 pools, a head_dim
    it takes."""
    head_dim = q.shape[-1]
    return (q.dtype is torch.float32 and pool.dtype in _POOL_DTYPES and head_dim % 64 == 0
            and head_dim <= MAX_HEAD_DIM)


def _token_rows(name: str, t: torch.Tensor) -> int:
    """The token stride of t [L, heads, D] whose heads and D are packed (a row-strided view)."""
    check_tensor(name, t, 3, torch.float32)
    if t.stride(2) != 1 or t.stride(1) != t.shape[2] or t.stride(0) < t.shape[1] * t.shape[2]:
        raise ValueError(f"{name} must have contiguous [heads, D] rows (strides {t.stride()})")
    return t.stride(0)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *,
                      block_ids: torch.Tensor | None = None, context_len: int | None = None,
                      num_threads: int | None = None) -> torch.Tensor:
    """See the module docstring. Raises ValueError for bad shapes, dtypes or block ids,
    RuntimeError where the kernel is unavailable (check `available()` first)."""
    q_stride = _token_rows("q", q)
    q_len, num_heads, head_dim = q.shape
    if block_ids is None:
        kv_stride = _token_rows("k", k)
        if _token_rows("v", v) != kv_stride or v.shape != k.shape:
            raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must match in shape and strides")
        if k.shape[0] != q_len:
            raise ValueError(f"without block_ids k/v hold the chunk's own {q_len} tokens, got {k.shape[0]}")
        ctx_len, num_kv_heads, block_size, num_blocks, ids_ptr = q_len, k.shape[1], 0, 0, None
        pool_dtype = _POOL_DTYPES[torch.float32]
    else:
        check_tensor("k_pool", k, 4)
        check_tensor("v_pool", v, 4)
        check_tensor("block_ids", block_ids, 1, torch.int64)
        if k.dtype not in _POOL_DTYPES or v.dtype != k.dtype:
            raise ValueError(f"k_pool and v_pool must both be float32 or both bfloat16, got {k.dtype}, {v.dtype}")
        if v.shape != k.shape or not (k.is_contiguous() and v.is_contiguous()):
            raise ValueError("k_pool and v_pool must be contiguous and of one shape")
        pool_dtype = _POOL_DTYPES[k.dtype]
        num_blocks, block_size, num_kv_heads, _ = k.shape
        ctx_len = int(context_len) if context_len is not None else q_len
        if not q_len <= ctx_len <= block_ids.shape[0] * block_size or block_ids.shape[0] * block_size < 1:
            raise ValueError(f"context_len {ctx_len} must lie in [{q_len}, {block_ids.shape[0] * block_size}] "
                             f"(the query length, the blocks' capacity)")
        block_ids = block_ids if block_ids.is_contiguous() else block_ids.contiguous()
        kv_stride, ids_ptr = 0, block_ids.data_ptr()
    if k.shape[-1] != head_dim:
        raise ValueError(f"head_dim of q ({head_dim}) and of k/v ({k.shape[-1]}) differ")
    num_threads = thread_count(num_threads)
    lib = _kernels.get()
    if lib is None:
        raise RuntimeError("the prefill attention CPU kernel is unavailable (see available())")
    out = torch.empty((q_len, num_heads, head_dim), dtype=torch.float32)
    if q_len == 0:
        return out
    code = lib.fp_prefill_attention(q.data_ptr(), q_stride, k.data_ptr(), v.data_ptr(), pool_dtype, kv_stride,
                                    ids_ptr, block_size, num_blocks, out.data_ptr(),
                                    q_len, ctx_len, num_heads, num_kv_heads, head_dim, float(scale), num_threads)
    if code != 0:
        exc_type, message = _ERRORS.get(code, (RuntimeError, f"prefill attention kernel failed ({code})"))
        raise exc_type(message)
    return out
