"""Paged attention over the flattened varlen batch, in plain torch (CPU and CUDA alike).

Every layer first writes the step's new keys/values into its pools at `ctx.slot_mapping`,
then attends, splitting the batch in two groups:

- decode group (query_len == 1): one batched call for all of them. Their blocks are gathered
  into [Bd, Hkv, L, D] (L = max context rounded up to whole blocks, tail masked), and the H
  query heads are viewed as [Bd, Hkv, G, D] (G = H / Hkv) so grouped-query attention needs no
  repeat of K/V: the G heads sharing a KV head play the role of G "query rows".
- prefill sequences (query_len > 1): one call each. Without a cached prefix the new k/v are
  used directly with a causal mask; with one (chunked prefill, prefix cache) the sequence's
  blocks are gathered and the chunk's queries, which sit at positions
  context_len - query_len .. context_len - 1, see every key up to their own position.

The index tensors and masks of a step depend only on the batch layout, not on the layer, so
`attention_metadata(ctx)` builds them once per forward and caches them in `ctx.extras`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fireplace.engine.forward_context import ForwardContext

_EXTRAS_KEY = "paged_attention"


@dataclass
class PrefillSeq:
    start: int  # first row of this sequence's queries in T
    query_len: int
    context_len: int
    block_ids: torch.Tensor | None  # [ceil(context_len / block_size)]; None without cached prefix
    mask: torch.Tensor | None  # [query_len, context_len] bool (True = attend); None -> causal


@dataclass
class AttentionMetadata:
    num_tokens: int
    decode_rows: torch.Tensor | None  # [Bd] rows of T holding decode queries; None if no decodes
    decode_rows_are_all: bool  # decode_rows == arange(T): no gather/scatter of q needed
    decode_block_tables: torch.Tensor | None  # [Bd, Md] int64
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, Md * block_size] bool, True = key is in context
    prefills: list[PrefillSeq]


def attention_metadata(ctx: ForwardContext) -> AttentionMetadata:
    """The step's attention layout, built on first use and cached in ctx.extras."""
    meta = ctx.extras.get(_EXTRAS_KEY)
    if meta is None:
        meta = _build_metadata(ctx)
        ctx.extras[_EXTRAS_KEY] = meta
    return meta


def _build_metadata(ctx: ForwardContext) -> AttentionMetadata:
    device = ctx.block_tables.device
    bs = ctx.block_size
    decode_seqs, decode_rows, prefills = [], [], []
    start = 0
    for i, (q_len, ctx_len) in enumerate(zip(ctx.query_lens, ctx.context_lens)):
        if q_len == 1:
            decode_seqs.append(i)
            decode_rows.append(start)
        elif q_len > 1:
            if ctx_len == q_len:  # nothing cached before this chunk: attend to new k/v only
                prefills.append(PrefillSeq(start, q_len, ctx_len, None, None))
            else:
                num_blocks = -(-ctx_len // bs)
                block_ids = ctx.block_tables[i, :num_blocks].to(torch.int64)
                # query j sits at absolute position ctx_len - q_len + j and sees keys <= it
                query_pos = torch.arange(ctx_len - q_len, ctx_len, device=device)
                key_pos = torch.arange(ctx_len, device=device)
                mask = key_pos[None, :] <= query_pos[:, None]  # [q_len, ctx_len]
                prefills.append(PrefillSeq(start, q_len, ctx_len, block_ids, mask))
        start += q_len

    if not decode_seqs:
        return AttentionMetadata(start, None, False, None, None, prefills)
    decode_ctx = [ctx.context_lens[i] for i in decode_seqs]
    max_blocks = -(-max(decode_ctx) // bs)
    seq_index = torch.tensor(decode_seqs, dtype=torch.int64, device=device)
    block_tables = ctx.block_tables.index_select(0, seq_index)[:, :max_blocks].to(torch.int64)  # [Bd, Md]
    ctx_lens = torch.tensor(decode_ctx, dtype=torch.int64, device=device)
    key_pos = torch.arange(max_blocks * bs, device=device)
    mask = (key_pos[None, :] < ctx_lens[:, None])[:, None, None, :]  # [Bd, 1, 1, L]
    all_decode = len(decode_rows) == start
    rows = torch.tensor(decode_rows, dtype=torch.int64, device=device)
    return AttentionMetadata(start, rows, all_decode, block_tables, mask, prefills)


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
    meta = attention_metadata(ctx)
    write_kv(k, v, k_pool, v_pool, ctx.slot_mapping)
    if meta.decode_rows is not None and meta.decode_rows_are_all:
        return _decode_attention(q, k_pool, v_pool, meta)

    out = torch.empty_like(q)
    if meta.decode_rows is not None:
        out.index_copy_(0, meta.decode_rows,
                        _decode_attention(q.index_select(0, meta.decode_rows), k_pool, v_pool, meta))
    for seq in meta.prefills:
        rows = slice(seq.start, seq.start + seq.query_len)
        out[rows] = _prefill_attention(q[rows], k[rows], v[rows], k_pool, v_pool, seq)
    return out


def _decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                      meta: AttentionMetadata) -> torch.Tensor:
    """q: [Bd, H, D] (one query per sequence) -> [Bd, H, D]."""
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_pool.shape[2]
    keys = _gather_blocks(k_pool, meta.decode_block_tables)  # [Bd, Hkv, L, D]
    values = _gather_blocks(v_pool, meta.decode_block_tables)
    q = q.view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim).to(keys.dtype)  # [Bd, Hkv, G, D]
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=meta.decode_mask)  # [Bd, Hkv, G, D]
    return out.reshape(num_seqs, num_heads, head_dim)


def _gather_blocks(pool: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """pool [N, bs, Hkv, D], block_tables [B, M] -> [B, Hkv, M * bs, D]."""
    num_seqs, max_blocks = block_tables.shape
    _, block_size, num_kv_heads, head_dim = pool.shape
    blocks = pool.index_select(0, block_tables.reshape(-1))  # [B * M, bs, Hkv, D]
    return blocks.view(num_seqs, max_blocks * block_size, num_kv_heads, head_dim).transpose(1, 2)


def _prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       k_pool: torch.Tensor, v_pool: torch.Tensor, seq: PrefillSeq) -> torch.Tensor:
    """One sequence's chunk. q: [q_len, H, D], k, v: [q_len, Hkv, D] -> [q_len, H, D]."""
    if seq.block_ids is None:
        keys, values = k, v
    else:
        # The chunk's own k/v are already in the pools, after the cached prefix.
        keys = _flat_blocks(k_pool, seq.block_ids)[: seq.context_len]  # [ctx_len, Hkv, D]
        values = _flat_blocks(v_pool, seq.block_ids)[: seq.context_len]
    group = q.shape[1] // keys.shape[1]
    # [H, q_len, D] x [Hkv, ctx_len, D]: repeat K/V so each query head has its KV head
    # (a prefill's attention is matmul-bound, and the copy is small next to it).
    keys = keys.transpose(0, 1).repeat_interleave(group, dim=0)
    values = values.transpose(0, 1).repeat_interleave(group, dim=0)
    out = F.scaled_dot_product_attention(q.transpose(0, 1).to(keys.dtype), keys, values,
                                         attn_mask=seq.mask, is_causal=seq.mask is None)
    return out.transpose(0, 1)  # [q_len, H, D]


def _flat_blocks(pool: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """pool [N, bs, Hkv, D], block_ids [n] -> [n * bs, Hkv, D] in sequence order."""
    return pool.index_select(0, block_ids).flatten(0, 1)
