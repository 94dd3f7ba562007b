"""The attention layout of one step, built by the model runner before the forward.

It depends only on the batch layout (query and context lengths, block tables) and on the
backend, never on the layer, so it is built once per step and every layer reads it
(layers/attention.py). Building it outside the forward leaves the forward free of
host-side list work, so that a captured or compiled decode step becomes possible.

The batch's sequences split in two groups:
  decode   query_len == 1. With the C kernel (cpu-kernels backend) the sequences' block tables
           [Bd, M] and context lengths [Bd] (int32) go to it as they are. Otherwise they are
           sorted by context length and cut into a few `DecodeGroup`s, each gathered and
           attended in one call, padded to its longest context (BackendConfig.decode_buckets,
           min_decode_group).
  prefill  query_len > 1, one `PrefillSeq` each. Without a cached prefix the chunk attends to
           its own k/v, causally; with one (chunked prefill, prefix cache) to its blocks, the
           queries at positions context_len - query_len .. context_len - 1 seeing every key up
           to their own position (`mask`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fireplace.engine.backend import Backend


@dataclass
class PrefillSeq:
    start: int  # first row of this sequence's queries in T
    query_len: int
    context_len: int
    block_ids: torch.Tensor | None  # [ceil(context_len / block_size)] int64; None without cached prefix
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
    # prefills run the C kernel (kernels/paged_prefill) where their dtypes allow, else SDPA
    prefill_kernel: bool = False


def build_attention_metadata(query_lens: Sequence[int], context_lens: Sequence[int], block_tables: torch.Tensor,
                             block_size: int, backend: Backend) -> AttentionMetadata:
    """query_lens, context_lens [B] (host lists), block_tables [B, M] (int32/int64, on the
    model's device) -> the step's AttentionMetadata, on the same device."""
    device = block_tables.device
    decode_seqs, decode_rows, prefills = [], [], []
    start = 0
    for i, (q_len, ctx_len) in enumerate(zip(query_lens, context_lens)):
        if q_len == 1:
            decode_seqs.append(i)
            decode_rows.append(start)
        elif q_len > 1:
            if ctx_len == q_len:  # nothing cached before this chunk: attend to new k/v only
                prefills.append(PrefillSeq(start, q_len, ctx_len, None, None))
            else:
                num_blocks = -(-ctx_len // block_size)
                block_ids = block_tables[i, :num_blocks].to(torch.int64)
                # query j sits at absolute position ctx_len - q_len + j and sees keys <= it
                query_pos = torch.arange(ctx_len - q_len, ctx_len, device=device)
                key_pos = torch.arange(ctx_len, device=device)
                mask = key_pos[None, :] <= query_pos[:, None]  # [q_len, ctx_len]
                prefills.append(PrefillSeq(start, q_len, ctx_len, block_ids, mask))
        start += q_len

    prefill_kernel = bool(prefills) and backend.paged_prefill_kernel and device.type == "cpu"
    if not decode_seqs:
        return AttentionMetadata(start, None, False, [], prefills, prefill_kernel=prefill_kernel)
    all_decode = len(decode_rows) == start
    rows = torch.tensor(decode_rows, dtype=torch.int64).to(device, non_blocking=True)
    if backend.paged_decode_kernel and device.type == "cpu":
        tables = block_tables if all_decode else block_tables.index_select(
            0, torch.tensor(decode_seqs, dtype=torch.int64))
        lens = torch.tensor([context_lens[i] for i in decode_seqs], dtype=torch.int32)
        return AttentionMetadata(start, rows, all_decode, [], prefills, tables.to(torch.int32).contiguous(), lens,
                                 prefill_kernel=prefill_kernel)
    return AttentionMetadata(start, rows, all_decode,
                             _decode_groups(context_lens, block_tables, block_size, decode_seqs, backend), prefills,
                             prefill_kernel=prefill_kernel)


def _decode_groups(context_lens: Sequence[int], block_tables: torch.Tensor, block_size: int,
                   decode_seqs: list[int], backend: Backend) -> list[DecodeGroup]:
    """Split decodes into at most decode_buckets groups by context length.

    One call over the whole batch pads every sequence to the longest context; with contexts
    of 32..640 tokens that reads (and gathers) about twice the KV actually there. Sorting by
    length and cutting into a few groups keeps the padding small at a few extra calls."""
    device = block_tables.device
    lens = [context_lens[i] for i in decode_seqs]
    order = sorted(range(len(decode_seqs)), key=lambda j: lens[j])
    num_groups = max(1, min(backend.config.decode_buckets, len(order) // backend.config.min_decode_group))
    size = -(-len(order) // num_groups)
    groups = []
    for g in range(0, len(order), size):
        members = order[g:g + size]
        group_lens = [lens[j] for j in members]
        max_blocks = -(-max(group_lens) // block_size)
        seq_index = torch.tensor([decode_seqs[j] for j in members], dtype=torch.int64).to(device, non_blocking=True)
        tables = block_tables.index_select(0, seq_index)[:, :max_blocks].to(torch.int64)  # [Bg, Mg]
        ctx_lens = torch.tensor(group_lens, dtype=torch.int64).to(device, non_blocking=True)
        key_pos = torch.arange(max_blocks * block_size, device=device)
        mask = (key_pos[None, :] < ctx_lens[:, None])[:, None, None, :]  # [Bg, 1, 1, L]
        is_identity = num_groups == 1 and members == list(range(len(order)))
        index = None if is_identity else torch.tensor(members, dtype=torch.int64).to(device, non_blocking=True)
        groups.append(DecodeGroup(index, tables, mask))
    return groups
