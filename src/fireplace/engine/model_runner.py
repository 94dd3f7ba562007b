"""Turns a scheduled step into tensors, runs the model, returns logits of the sampled rows.

The only code that knows both the scheduler's view (sequences, block tables) and the model's
(ForwardContext). Per step it builds, before the forward:
  - the batch tensors, from host lists filled in one pass over the scheduled sequences, packed
    into one int64 buffer and moved to the device in one copy (then viewed apart):
      [input_ids T | positions T | slot_mapping T | logits_indices L | block_tables B*M]
  - the attention metadata (attention_metadata.build_attention_metadata), from the same lists,
    with the engine's Backend.
The forward then reads only tensors: no host list work, no lazily built state inside a layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fireplace.engine.attention_metadata import build_attention_metadata
from fireplace.engine.backend import Backend
from fireplace.engine.forward_context import ForwardContext
from fireplace.engine.kv_cache import KVCaches
from fireplace.engine.scheduler import SchedulerOutput


class ModelRunner:
    def __init__(self, model, kv_caches: KVCaches, block_size: int, device: torch.device,
                 backend: Backend | None = None):
        """backend: the one the model was built with (default: model.backend)."""
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.backend = backend if backend is not None else model.backend

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
            if n == 1:  # decode (or a one-token chunk): no slices, no ranges
                input_ids.append(seq.token_ids[start])
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
            else:
                input_ids += seq.token_ids[start:start + n]
                positions += range(start, start + n)
                slots += [table[p // bs] * bs + p % bs for p in range(start, start + n)]
            if entry.needs_logits:
                logits_rows.append(len(input_ids) - 1)
            if seq.params.prompt_logprobs is not None and start < seq.num_prompt_tokens - 1:
                # rows whose logits score the next prompt token: positions start .. P-2
                last = min(start + n, seq.num_prompt_tokens - 1)
                prompt_rows.append((entry, len(input_ids) - n, start, last))
            query_lens.append(n)
            context_lens.append(start + n)
            tables.append(table)

        num_tokens, num_logits, num_seqs = len(input_ids), len(logits_rows), len(tables)
        width = max(map(len, tables))
        host = input_ids + positions + slots + logits_rows
        for t in tables:
            host += t
            if len(t) < width:
                host += [0] * (width - len(t))
        packed = torch.tensor(host, dtype=torch.int64).to(self.device, non_blocking=True)
        a, b, c = num_tokens, 2 * num_tokens, 3 * num_tokens
        block_tables = packed[c + num_logits:].view(num_seqs, width)
        return ForwardContext(
            input_ids=packed[:a],
            positions=packed[a:b],
            query_lens=query_lens,
            context_lens=context_lens,
            block_tables=block_tables,
            slot_mapping=packed[b:c],
            logits_indices=packed[c:c + num_logits],
            block_size=bs,
            is_decode_only=step.is_decode_only,
            lora=lora,
            attention=build_attention_metadata(query_lens, context_lens, block_tables, bs, self.backend),
            prompt_logprob_rows=prompt_rows,
        )

    def compile(self) -> None:
        """torch.compile the dense per-token parts (MLP) of every layer, shape-polymorphic.

        On CUDA the mode is "reduce-overhead" (CUDA graphs per batch shape); on CPU inductor's
        C++ kernels (the backend's C kernels step aside while compiling: see Backend.uses_*).
        Attention stays eager. The first steps of each new shape pay the compile time."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        for layer in self.model.model.layers:
            layer.mlp = torch.compile(layer.mlp, dynamic=True, mode=mode)
        self.model.model.reset_fast_decode()  # the fast path keeps to eager MLPs

    @torch.inference_mode()
    def execute(self, ctx: ForwardContext) -> tuple[torch.Tensor, list[PromptLogprobs]]:
        """-> (logits [L, vocab] fp32 for ctx.logits_indices, prompt logprobs of this step's chunks)."""
        hidden = self.model(ctx, self.kv_caches)
        prompt = self._prompt_logprobs(ctx, hidden)
        if ctx.logits_indices.numel() == 0:
            return hidden.new_empty((0, self.model.config.vocab_size), dtype=torch.float32), prompt
        return self.model.compute_logits(hidden.index_select(0, ctx.logits_indices)), prompt

    def _prompt_logprobs(self, ctx: ForwardContext, hidden: torch.Tensor) -> list[PromptLogprobs]:
        """Logprob of each prompt token given the ones before it (+ the top-k alternatives).
        Only requests that ask for prompt logprobs pay for this (and its host copies)."""
        results = []
        for entry, first_row, start, end in ctx.prompt_logprob_rows:
            seq = entry.seq
            rows = hidden[first_row:first_row + (end - start)]
            logprobs = torch.log_softmax(self.model.compute_logits(rows), dim=-1)  # [n, vocab]
            targets = torch.tensor(seq.token_ids[start + 1:end + 1], device=logprobs.device)
            chosen = logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
            k = seq.params.prompt_logprobs
            top = logprobs.topk(k, dim=-1) if k else None
            top_ids = top.indices.tolist() if top is not None else None
            top_values = top.values.tolist() if top is not None else None
            for i, position in enumerate(range(start + 1, end + 1)):
                alternatives = list(zip(top_ids[i], top_values[i])) if top is not None else []
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
