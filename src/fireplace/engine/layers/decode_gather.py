"""Decode attention in plain torch (CUDA, or CPU without the C kernel): gather, then SDPA.

A group's blocks are gathered into [Bg, Hkv, L, D] (L = its longest context rounded up to
whole blocks, the tail masked), and the H query heads are viewed as [Bg, Hkv, G, D]
(G = H / Hkv) so grouped-query attention needs no repeat of K/V: the G heads sharing a KV head
play the role of G "query rows". The groups come from attention_metadata._decode_groups.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from fireplace.engine.attention_metadata import DecodeGroup

_scratch = threading.local()  # per-thread gather buffers, see _gather_blocks


def decode_group_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           group: DecodeGroup) -> torch.Tensor:
    """q: [Bg, H, D] -> [Bg, H, D] over the group's gathered blocks."""
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_pool.shape[2]
    keys = _gather_blocks(k_pool, group.block_tables, 0)  # [Bg, Hkv, L, D]
    values = _gather_blocks(v_pool, group.block_tables, 1)
    q = q.view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim).to(keys.dtype)  # [Bg, Hkv, G, D]
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=group.mask)  # [Bg, Hkv, G, D]
    return out.reshape(num_seqs, num_heads, head_dim)


def _gather_blocks(pool: torch.Tensor, block_tables: torch.Tensor, which: int) -> torch.Tensor:
    """pool [N, bs, Hkv, D], block_tables [B, M] -> [B, Hkv, M * bs, D].

    The gather writes into a per-thread scratch buffer that is reused across layers and steps:
    a fresh multi-MB tensor per layer costs more in page faults than the copy itself. It is a
    cache of memory only; each call overwrites the rows it returns."""
    num_seqs, max_blocks = block_tables.shape
    _, block_size, num_kv_heads, head_dim = pool.shape
    num_rows = num_seqs * max_blocks
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    key = (which, pool.device, pool.dtype, pool.shape[1:])
    buf = buffers.get(key)
    if buf is None or buf.shape[0] < num_rows:
        grown = min(2 * buf.shape[0], pool.shape[0]) if buf is not None else 0
        buf = buffers[key] = torch.empty((max(num_rows, grown), *pool.shape[1:]), dtype=pool.dtype,
                                         device=pool.device)
    blocks = torch.index_select(pool, 0, block_tables.reshape(-1), out=buf[:num_rows])  # [B * M, bs, Hkv, D]
    return blocks.view(num_seqs, max_blocks * block_size, num_kv_heads, head_dim).transpose(1, 2)
