"""Paged attention over the flattened varlen batch.

Every layer first writes the step's new keys/values into its pools at `ctx.slot_mapping`,
then attends, reading the step's layout from `ctx.attention` (an AttentionMetadata the model
runner built before the forward; see fireplace.engine.attention_metadata):

- decode group (query_len == 1): on the cpu-kernels backend one C call
  (fireplace.engine.kernels.paged_decode) reads K/V straight from the pools through the block
  tables: no gather, each cached byte read once. Otherwise (CUDA, torch backend) the groups of
  similar context length are gathered and attended with SDPA (layers/decode_gather.py).
- prefill sequences (query_len > 1): one call each, of the C kernel (kernels/paged_prefill:
  fp32 on AVX-512 CPUs; 1.5-2.8x SDPA on SmolLM2's shapes, bench/paged_prefill_kernel.py) or
  else SDPA. Without a cached prefix the new k/v are used directly, causally; with one (chunked
  prefill, prefix cache) the sequence's blocks are read from the pools, which already hold the
  chunk's own k/v after the prefix (the kernel reads them in place through the block ids; SDPA
  gets them gathered, with a mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fireplace.engine.attention_metadata import AttentionMetadata, PrefillSeq
from fireplace.engine.forward_context import ForwardContext
from fireplace.engine.kernels import paged_decode as cpu_decode_kernel
from fireplace.engine.kernels import paged_prefill as cpu_prefill_kernel
from fireplace.engine.layers.decode_gather import decode_group_attention


def write_kv(k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k, v: [T, Hkv, D] -> pools [N, block_size, Hkv, D] at flat slots slot_mapping [T]."""
    num_kv_heads, head_dim = k_pool.shape[2], k_pool.shape[3]
    k_pool.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k.to(k_pool.dtype))
    v_pool.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v.to(v_pool.dtype))


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_pool: torch.Tensor, v_pool: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """q: [T, H, D], k, v: [T, Hkv, D] (RoPE applied) -> out: [T, H, D].

    Side effect: the new k/v are stored in the pools at ctx.slot_mapping.
    """
    meta = ctx.attention
    if meta is None:
        raise ValueError("ForwardContext.attention is not set: build it with "
                         "attention_metadata.build_attention_metadata before the forward (ModelRunner.prepare does)")
    write_kv(k, v, k_pool, v_pool, ctx.slot_mapping)
    if meta.decode_rows is not None and meta.decode_rows_are_all:
        return _decode_attention(q, k_pool, v_pool, meta)

    out = torch.empty_like(q)
    if meta.decode_rows is not None:
        out.index_copy_(0, meta.decode_rows,
                        _decode_attention(q.index_select(0, meta.decode_rows), k_pool, v_pool, meta))
    kernel = meta.prefill_kernel and cpu_prefill_kernel.supports(q, k_pool)
    for seq in meta.prefills:
        rows = slice(seq.start, seq.start + seq.query_len)
        if kernel:
            out[rows] = _prefill_kernel(q[rows], k[rows], v[rows], k_pool, v_pool, seq)
        else:
            out[rows] = _prefill_attention(q[rows], k[rows], v[rows], k_pool, v_pool, seq)
    return out


def _decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                      meta: AttentionMetadata) -> torch.Tensor:
    """q: [Bd, H, D] (one query per sequence) -> [Bd, H, D]."""
    if meta.decode_block_tables is not None:
        return cpu_decode_kernel.paged_decode_attention(q, k_pool, v_pool, meta.decode_block_tables,
                                                        meta.decode_context_lens, q.shape[-1] ** -0.5)
    if len(meta.decode_groups) == 1 and meta.decode_groups[0].members is None:
        return decode_group_attention(q, k_pool, v_pool, meta.decode_groups[0])
    out = torch.empty_like(q)
    for group in meta.decode_groups:
        out.index_copy_(0, group.members,
                        decode_group_attention(q.index_select(0, group.members), k_pool, v_pool, group))
    return out


def _prefill_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_pool: torch.Tensor, v_pool: torch.Tensor, seq: PrefillSeq) -> torch.Tensor:
    """The same as _prefill_attention through the C kernel: the chunk's own k/v in place, or
    the pools through the sequence's blocks after a cached prefix (no gather, no mask tensor)."""
    scale = q.shape[-1] ** -0.5
    if seq.block_ids is None:
        return cpu_prefill_kernel.prefill_attention(q, k, v, scale)
    return cpu_prefill_kernel.prefill_attention(q, k_pool, v_pool, scale, block_ids=seq.block_ids,
                                                context_len=seq.context_len)


def _prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       k_pool: torch.Tensor, v_pool: torch.Tensor, seq: PrefillSeq) -> torch.Tensor:
    """One sequence's chunk. q: [q_len, H, D], k, v: [q_len, Hkv, D] -> [q_len, H, D]."""
    if seq.block_ids is None:
        keys, values = k, v
    else:
        # The chunk's own k/v are already in the pools, after the cached prefix.
        keys = _flat_blocks(k_pool, seq.block_ids)[: seq.context_len]  # [ctx_len, Hkv, D]
        values = _flat_blocks(v_pool, seq.block_ids)[: seq.context_len]
    # [1, H, q_len, D] x [1, Hkv, ctx_len, D]: SDPA maps each query head to its KV head itself
    # (enable_gqa; 1.4x repeating K/V per head at 272 tokens). The batch dim matters: with 3-D
    # inputs CPU SDPA takes its unfused math path, 4-7x slower at 512 tokens.
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None].to(keys.dtype), keys.transpose(0, 1)[None],
                                         values.transpose(0, 1)[None], attn_mask=seq.mask,
                                         is_causal=seq.mask is None, enable_gqa=keys.shape[1] != q.shape[1])
    return out[0].transpose(0, 1)  # [q_len, H, D]


def _flat_blocks(pool: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """pool [N, bs, Hkv, D], block_ids [n] -> [n * bs, Hkv, D] in sequence order."""
    return pool.index_select(0, block_ids).flatten(0, 1)
