"""ctypes wrapper of paged_decode.c: decode attention read straight from the KV block pool.

    out = paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, scale)

q [B, H, D] (one query token per sequence), pools [N, block_size, Hkv, D], block_tables [B, M],
context_lens [B] -> out [B, H, D] in q's dtype. Token t of sequence b is row t % block_size of
block block_tables[b, t // block_size]; query head h attends with KV head h // (H / Hkv).
The library is compiled on first use (see cpu_build); `available()` says whether that worked.
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from fireplace.engine.kernels.arg_checks import check_tensor, thread_count
from fireplace.engine.kernels.cpu_build import KernelLibrary

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("paged_decode.c")
# The kernel uses a thread per this many context tokens at most (TOKENS_PER_THREAD in the C
# source): smaller calls run on the calling thread whatever num_threads says.
TOKENS_PER_THREAD = 256
_POOL_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the C side's pool_dtype flag
_Q_DTYPES = (torch.float32, torch.bfloat16)
# Return codes of fp_paged_decode_attention (FP_ERR_* in the C source).
_ERRORS = {
    1: (ValueError, "context_lens must lie in [1, block_tables.shape[1] * block_size]"),
    2: (ValueError, "block_tables holds a block id outside [0, num_blocks) within a sequence's context"),
    3: (MemoryError, "paged decode attention kernel ran out of memory"),
    4: (ValueError, "invalid sizes passed to the paged decode attention kernel"),
}

def _declare(lib: ctypes.CDLL) -> None:
    fn = lib.fp_paged_decode_attention
    c_i64 = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,  # q, k, v, pool dtype
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # block_tables, context_lens, out
                   c_i64, c_i64, c_i64, c_i64, c_i64, c_i64, c_i64,  # B, H, Hkv, D, bs, M, N
                   ctypes.c_float, ctypes.c_int]  # scale, nthreads
    fn.restype = ctypes.c_int


_kernels = KernelLibrary(_SOURCE, "paged_decode", _declare)
_load = _kernels.get

def available() -> bool:
    """Whether the kernel compiled and loaded on this machine (cached after the first call)."""
    return _load() is not None


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           num_threads: int | None = None) -> torch.Tensor:
    """q [B, H, D] fp32/bf16, k_pool/v_pool [N, bs, Hkv, D] fp32/bf16 contiguous,
    block_tables [B, M] int32/int64, context_lens [B] int32/int64 -> [B, H, D] in q's dtype.

    Raises ValueError for bad shapes, dtypes, devices or out-of-range lengths/block ids
    (TypeError for arguments that are not tensors), RuntimeError when the kernel is
    unavailable (check `available()` first)."""
    check_tensor("q", q, 3)
    check_tensor("k_pool", k_pool, 4)
    check_tensor("v_pool", v_pool, 4)
    check_tensor("block_tables", block_tables, 2)
    check_tensor("context_lens", context_lens, 1)
    num_seqs, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, pool_dim = k_pool.shape
    if q.dtype not in _Q_DTYPES:
        raise ValueError(f"q must be float32 or bfloat16, got {q.dtype}")
    if k_pool.dtype not in _POOL_DTYPES or v_pool.dtype != k_pool.dtype:
        raise ValueError(f"k_pool and v_pool must both be float32 or both bfloat16, got {k_pool.dtype}, {v_pool.dtype}")
    if v_pool.shape != k_pool.shape:
        raise ValueError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} differ in shape")
    if not (k_pool.is_contiguous() and v_pool.is_contiguous()):
        raise ValueError("k_pool and v_pool must be contiguous")
    if pool_dim != head_dim:
        raise ValueError(f"head_dim of q ({head_dim}) and of the pools ({pool_dim}) differ")
    if num_kv_heads == 0 or num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if block_tables.shape[0] != num_seqs or context_lens.shape[0] != num_seqs:
        raise ValueError(f"block_tables {tuple(block_tables.shape)} and context_lens {tuple(context_lens.shape)} "
                         f"must have {num_seqs} rows, one per query")
    for name, t in (("block_tables", block_tables), ("context_lens", context_lens)):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    num_threads = thread_count(num_threads)

    if num_seqs == 0 or num_heads == 0 or head_dim == 0:
        return torch.empty(q.shape, dtype=q.dtype)
    if num_blocks == 0 or block_size == 0 or block_tables.shape[1] == 0:
        raise ValueError("empty pool or block table: no sequence can have a context")
    lib = _load()
    if lib is None:
        raise RuntimeError("paged decode attention CPU kernel is unavailable (see available())")

    # Conversions only where needed: this runs once per layer and decode step, and a no-op
    # .to() still costs microseconds of dispatch.
    q32 = q.detach() if q.dtype == torch.float32 else q.detach().float()
    q32 = q32 if q32.is_contiguous() else q32.contiguous()
    tables = block_tables if block_tables.dtype == torch.int32 else block_tables.to(torch.int32)
    tables = tables if tables.is_contiguous() else tables.contiguous()
    lens = context_lens if context_lens.dtype == torch.int32 else context_lens.to(torch.int32)
    lens = lens if lens.is_contiguous() else lens.contiguous()
    out = torch.empty((num_seqs, num_heads, head_dim), dtype=torch.float32)
    code = lib.fp_paged_decode_attention(
        q32.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), _POOL_DTYPES[k_pool.dtype],
        tables.data_ptr(), lens.data_ptr(), out.data_ptr(),
        num_seqs, num_heads, num_kv_heads, head_dim, block_size, tables.shape[1], num_blocks,
        float(scale), num_threads)
    if code != 0:
        exc_type, message = _ERRORS.get(code, (RuntimeError, f"paged decode attention kernel failed ({code})"))
        raise exc_type(message)
    return out if q.dtype == torch.float32 else out.to(q.dtype)
