"""What one forward pass needs besides the weights: the flattened batch layout.

A step's batch is "varlen": the new tokens of every scheduled sequence are concatenated
into one dimension T (prefill chunks and single decode tokens mixed). Shapes:

  input_ids      [T]      int64   new tokens of all sequences, sequence after sequence
  positions      [T]      int64   absolute position of each token in its sequence
  query_lens     [B]      list    how many of the T tokens belong to each sequence
  context_lens   [B]      list    tokens in KV after this step (cached prefix + new)
  block_tables   [B, M]   int32 or int64  KV block ids of each sequence (padded with 0)
  slot_mapping   [T]      int64   flat KV slot (block_id * block_size + offset) to write
  logits_indices [L]      int64   rows of the hidden states whose logits are wanted
  lora           LoRABatch | None per-token adapter slots (None: no adapter in batch)
  attention      AttentionMetadata | None  the step's attention layout, built before the
                          forward (attention_metadata.build_attention_metadata; the model
                          refuses a context without it)
  prompt_logprob_rows     (entry, first row in T, first position, end position) of each
                          chunk whose prompt logprobs are wanted (model runner only)

The model runner builds it; attention and LoRA layers read it. It is passed explicitly
down the model (no global state).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ForwardContext:
    input_ids: torch.Tensor
    positions: torch.Tensor
    query_lens: list[int]
    context_lens: list[int]
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    logits_indices: torch.Tensor
    block_size: int
    is_decode_only: bool = False  # every sequence has query_len == 1
    lora: Any = None  # fireplace.engine.lora.LoRABatch | None
    attention: Any = None  # fireplace.engine.attention_metadata.AttentionMetadata | None
    prompt_logprob_rows: list[tuple] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)
