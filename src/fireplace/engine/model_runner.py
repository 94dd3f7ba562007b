"""Turns a scheduled step into tensors, runs the model, returns logits of the sampled rows.

The only code that knows both the scheduler's view (sequences, block tables) and the model's
(ForwardContext). Host-side lists are built once per step, then moved to the device together.
"""
from __future__ import annotations

from dataclasses import dataclass

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
        prompt_rows: list[tuple] = []  # (entry, first row in T, first position, end position)
        bs = self.block_size
        for entry in step.scheduled:
            seq, start, n = entry.seq, entry.start_pos, entry.num_new_tokens
            table = seq.block_table
            input_ids.extend(seq.token_ids[start:start + n])
            positions.extend(range(start, start + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if entry.needs_logits:
                logits_rows.append(len(input_ids) - 1)
            if seq.params.prompt_logprobs is not None and start < seq.num_prompt_tokens - 1:
                # rows whose logits score the next prompt token: positions start .. P-2
                last = min(start + n, seq.num_prompt_tokens - 1)
                first_row = len(input_ids) - n
                prompt_rows.append((entry, first_row, start, last))
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
            extras={"prompt_logprob_rows": prompt_rows} if prompt_rows else {},
        )

    def compile(self) -> None:
        """torch.compile the dense per-token parts (MLP) of every layer, shape-polymorphic.

        On CUDA the mode is "reduce-overhead" (CUDA graphs per batch shape); on CPU inductor's
        C++ kernels. Attention stays eager: its per-step Python layout would only break graphs.
        The first steps of each new shape pay the compile time."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        for layer in self.model.model.layers:
            layer.mlp = torch.compile(layer.mlp, dynamic=True, mode=mode)

    @torch.inference_mode()
    def execute(self, ctx: ForwardContext) -> tuple[torch.Tensor, list[PromptLogprobs]]:
        """-> (logits [L, vocab] fp32 for ctx.logits_indices, prompt logprobs of this step's chunks)."""
        hidden = self.model(ctx, self.kv_caches)
        prompt = self._prompt_logprobs(ctx, hidden)
        if ctx.logits_indices.numel() == 0:
            return hidden.new_empty((0, self.model.config.vocab_size), dtype=torch.float32), prompt
        return self.model.compute_logits(hidden.index_select(0, ctx.logits_indices)), prompt

    def _prompt_logprobs(self, ctx: ForwardContext, hidden: torch.Tensor) -> list[PromptLogprobs]:
        """Logprob of each prompt token given the ones before it (+ the top-k alternatives)."""
        results = []
        for entry, first_row, start, end in ctx.extras.get("prompt_logprob_rows", ()):
            seq = entry.seq
            rows = hidden[first_row:first_row + (end - start)]
            logprobs = torch.log_softmax(self.model.compute_logits(rows), dim=-1)  # [n, vocab]
            targets = torch.tensor(seq.token_ids[start + 1:end + 1], device=logprobs.device)
            chosen = logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
            k = seq.params.prompt_logprobs
            top = logprobs.topk(k, dim=-1) if k else None
            for i, position in enumerate(range(start + 1, end + 1)):
                alternatives = list(zip(top.indices[i].tolist(), top.values[i].tolist())) if top is not None else []
                results.append(PromptLogprobs(seq.request_id, position, seq.token_ids[position], chosen[i],
                                              alternatives))
        return results


@dataclass
class PromptLogprobs:
    request_id: str
    position: int       # index of the scored prompt token
    token_id: int
    logprob: float
    top: list[tuple[int, float]]
