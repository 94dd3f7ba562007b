"""Turns a scheduled step into tensors, runs the model, returns logits of the sampled rows.

The only code that knows both the scheduler's view (sequences, block tables) and the model's
(ForwardContext). Host-side lists are built once per step, then moved to the device together.
"""
from __future__ import annotations

import torch

from fireplace.engine.forward_context import ForwardContext
from fireplace.engine.kv_cache import KVCaches
from fireplace.engine.scheduler import SchedulerOutput


class ModelRunner:
    def __init__(self, model, kv_caches: KVCaches, block_size: int, device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device

    def prepare(self, step: SchedulerOutput, lora=None) -> ForwardContext:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_rows: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        tables: list[list[int]] = []
        bs = self.block_size
        for entry in step.scheduled:
            seq, start, n = entry.seq, entry.start_pos, entry.num_new_tokens
            table = seq.block_table
            input_ids.extend(seq.token_ids[start:start + n])
            positions.extend(range(start, start + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if entry.needs_logits:
                logits_rows.append(len(input_ids) - 1)
            query_lens.append(n)
            context_lens.append(start + n)
            tables.append(table)
        width = max(len(t) for t in tables)
        padded = [t + [0] * (width - len(t)) for t in tables]
        dev = self.device
        return ForwardContext(
            input_ids=torch.tensor(input_ids, dtype=torch.int64).to(dev, non_blocking=True),
            positions=torch.tensor(positions, dtype=torch.int64).to(dev, non_blocking=True),
            query_lens=query_lens,
            context_lens=context_lens,
            block_tables=torch.tensor(padded, dtype=torch.int32).to(dev, non_blocking=True),
            slot_mapping=torch.tensor(slots, dtype=torch.int64).to(dev, non_blocking=True),
            logits_indices=torch.tensor(logits_rows, dtype=torch.int64).to(dev, non_blocking=True),
            block_size=bs,
            is_decode_only=step.is_decode_only,
            lora=lora,
        )

    @torch.inference_mode()
    def execute(self, ctx: ForwardContext) -> torch.Tensor:
        """-> logits [L, vocab] fp32 for ctx.logits_indices (L may be 0)."""
        hidden = self.model(ctx, self.kv_caches)
        if ctx.logits_indices.numel() == 0:
            return hidden.new_empty((0, self.model.config.vocab_size), dtype=torch.float32)
        return self.model.compute_logits(hidden.index_select(0, ctx.logits_indices))
