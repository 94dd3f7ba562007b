"""Paged attention over the flattened varlen batch, in plain torch (CPU and CUDA alike).

Every layer first writes the step's new keys/values into its pools at `ctx.slot_mapping`,
then attends, splitting the batch in two groups:

- decode group (query_len == 1). On CPU, when our C kernel is built
  (fireplace.engine.kernels.paged_decode), one call reads K/V straight from the pools through
  the block tables: no gather, each cached byte read once. Otherwise (CUDA, or no compiler)
  their blocks are gathered into [Bd, Hkv, L, D] (L = max context rounded up to whole blocks,
  tail masked), in a few calls bucketed by context length, and the H query heads are viewed
  as [Bd, Hkv, G, D] (G = H / Hkv) so grouped-query attention needs no repeat of K/V: the G
  heads sharing a KV head play the role of G "query rows".
- prefill sequences (query_len > 1): one call each. Without a cached prefix the new k/v are
  used directly with a causal mask; with one (chunked prefill, prefix cache) the sequence's
  blocks are gathered and the chunk's queries, which sit at positions
  context_len - query_len .. context_len - 1, see every key up to their own position.

The index tensors and masks of a step depend only on the batch layout, not on the layer, so
`attention_metadata(ctx)` builds them once per forward and caches them in `ctx.extras`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fireplace.engine.forward_context import ForwardContext
from fireplace.engine.kernels import paged_decode as cpu_decode_kernel

# Use the C decode kernel on CPU when it builds; tests switch it off to cover the torch path.
CPU_DECODE_KERNEL = True
_EXTRAS_KEY = "paged_attention"
DECODE_BUCKETS = 4  # decode calls per layer at most (sorted by context length)
MIN_DECODE_GROUP = 8  # fewer sequences than this per group are not worth a separate call


@dataclass
class PrefillSeq:
    start: int  # first row of this sequence's queries in T
    query_len: int
    context_len: int
    block_ids: torch.Tensor | None  # [ceil(context_len / block_size)]; None without cached prefix
    mask: torch.Tensor | None  # [query_len, context_len] bool (True = attend); None -> causal


@dataclass
class DecodeGroup:
    """Decode sequences of similar context length, attended in one call (padding stays small)."""
    members: torch.Tensor | None  # [Bg] positions within the decode rows; None = all, in order
    block_tables: torch.Tensor  # [Bg, Mg] int64
    mask: torch.Tensor  # [Bg, 1, 1, Mg * block_size] bool, True = key is in context


@dataclass
class AttentionMetadata:
    num_tokens: int
    decode_rows: torch.Tensor | None  # [Bd] rows of T holding decode queries; None if no decodes
    decode_rows_are_all: bool  # decode_rows == arange(T): no gather/scatter of q needed
    decode_groups: list[DecodeGroup]  # decodes bucketed by context length (torch path; else [])
    prefills: list[PrefillSeq]
    # C kernel path (else None): the decode sequences' tables [Bd, M] and context lengths [Bd], int32
    decode_block_tables: torch.Tensor | None = None
    decode_context_lens: torch.Tensor | None = None


def uses_cpu_decode_kernel(device: torch.device) -> bool:
    return device.type == "cpu" and CPU_DECODE_KERNEL and cpu_decode_kernel.available()


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
        return AttentionMetadata(start, None, False, [], prefills)
    all_decode = len(decode_rows) == start
    rows = torch.tensor(decode_rows, dtype=torch.int64, device=device)
    if uses_cpu_decode_kernel(device):
        tables = ctx.block_tables if all_decode else ctx.block_tables.index_select(
            0, torch.tensor(decode_seqs, dtype=torch.int64, device=device))
        lens = torch.tensor([ctx.context_lens[i] for i in decode_seqs], dtype=torch.int32, device=device)
        return AttentionMetadata(start, rows, all_decode, [], prefills, tables.to(torch.int32).contiguous(), lens)
    return AttentionMetadata(start, rows, all_decode, _decode_groups(ctx, decode_seqs), prefills)


def _decode_groups(ctx: ForwardContext, decode_seqs: list[int]) -> list[DecodeGroup]:
    """Split decodes into at most DECODE_BUCKETS groups by context length.

    One call over the whole batch pads every sequence to the longest context; with contexts
    of 32..640 tokens that reads (and gathers) about twice the KV actually there. Sorting by
    length and cutting into a few groups keeps the padding small at a few extra calls."""
    device = ctx.block_tables.device
    bs = ctx.block_size
    lens = [ctx.context_lens[i] for i in decode_seqs]
    order = sorted(range(len(decode_seqs)), key=lambda j: lens[j])
    num_groups = max(1, min(DECODE_BUCKETS, len(order) // MIN_DECODE_GROUP))
    size = -(-len(order) // num_groups)
    groups = []
    for g in range(0, len(order), size):
        members = order[g:g + size]
        group_lens = [lens[j] for j in members]
        max_blocks = -(-max(group_lens) // bs)
        seq_index = torch.tensor([decode_seqs[j] for j in members], dtype=torch.int64, device=device)
        tables = ctx.block_tables.index_select(0, seq_index)[:, :max_blocks].to(torch.int64)  # [Bg, Mg]
        ctx_lens = torch.tensor(group_lens, dtype=torch.int64, device=device)
        key_pos = torch.arange(max_blocks * bs, device=device)
        mask = (key_pos[None, :] < ctx_lens[:, None])[:, None, None, :]  # [Bg, 1, 1, L]
        is_identity = num_groups == 1 and members == list(range(len(order)))
        index = None if is_identity else torch.tensor(members, dtype=torch.int64, device=device)
        groups.append(DecodeGroup(index, tables, mask))
    return groups


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
    if meta.decode_block_tables is not None:
        return cpu_decode_kernel.paged_decode_attention(q, k_pool, v_pool, meta.decode_block_tables,
                                                        meta.decode_context_lens, q.shape[-1] ** -0.5)
    if len(meta.decode_groups) == 1 and meta.decode_groups[0].members is None:
        return _decode_group(q, k_pool, v_pool, meta.decode_groups[0])
    out = torch.empty_like(q)
    for group in meta.decode_groups:
        out.index_copy_(0, group.members, _decode_group(q.index_select(0, group.members), k_pool, v_pool, group))
    return out


def _decode_group(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, group: DecodeGroup) -> torch.Tensor:
    """q: [Bg, H, D] -> [Bg, H, D] over the group's gathered blocks."""
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_pool.shape[2]
    keys = _gather_blocks(k_pool, group.block_tables, 0)  # [Bg, Hkv, L, D]
    values = _gather_blocks(v_pool, group.block_tables, 1)
    q = q.view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim).to(keys.dtype)  # [Bg, Hkv, G, D]
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=group.mask)  # [Bg, Hkv, G, D]
    return out.reshape(num_seqs, num_heads, head_dim)


_scratch = threading.local()


def _gather_blocks(pool: torch.Tensor, block_tables: torch.Tensor, which: int) -> torch.Tensor:
    """pool [N, bs, Hkv, D], block_tables [B, M] -> [B, Hkv, M * bs, D].

    The gather writes into a per-thread scratch buffer that is reused across layers and steps:
    a fresh multi-MB tensor per layer costs more in page faults than the copy itself."""
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
    # [1, H, q_len, D] x [1, H, ctx_len, D]: repeat K/V so each query head has its KV head
    # (a prefill's attention is matmul-bound, and the copy is small next to it). The batch dim
    # matters: with 3-D inputs CPU SDPA takes its unfused math path, 4-7x slower at 512 tokens.
    keys = keys.transpose(0, 1).repeat_interleave(group, dim=0)[None]
    values = values.transpose(0, 1).repeat_interleave(group, dim=0)[None]
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None].to(keys.dtype), keys, values,
                                         attn_mask=seq.mask, is_causal=seq.mask is None)
    return out[0].transpose(0, 1)  # [q_len, H, D]


def _flat_blocks(pool: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """pool [N, bs, Hkv, D], block_ids [n] -> [n * bs, Hkv, D] in sequence order."""
    return pool.index_select(0, block_ids).flatten(0, 1)
