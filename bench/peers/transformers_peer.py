"""transformers `generate` (and PEFT's mixed-adapter generate) as the static-batching baseline.

Configured at its best for this workload: prompts sorted by length before batching (so a
batch pads only to its own longest prompt, not to 512), left padding, SDPA attention, greedy,
min_new_tokens = max_new_tokens (ignore_eos), no_grad.  bench/engine.py tries several batch
sizes and keeps the fastest.  Runs in our venv (transformers is a dependency).

Shapes: prompts are lists of token ids; a result is
  {"seconds", "prompt_tokens", "generated_tokens", "batch_size"}.
"""
from __future__ import annotations

import time

import torch

PAD_ID = 0  # any id: padded positions are masked out


def sorted_batches(prompts: list[list[int]], batch_size: int):
    """Yield (indexes, input_ids, attention_mask) over prompts sorted by length, left-padded."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        indexes = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in indexes)
        ids = torch.full((len(indexes), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(indexes), width), dtype=torch.long)
        for row, i in enumerate(indexes):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        yield indexes, ids, mask


def run_generate(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                 adapter_names: list[str] | None = None) -> dict:
    """Generate max_new_tokens for every prompt; adapter_names (one per prompt) selects PEFT
    adapters per row (PEFT's mixed-batch `adapter_names=`)."""
    generated = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for indexes, ids, mask in sorted_batches(prompts, batch_size):
            extra = {"adapter_names": [adapter_names[i] for i in indexes]} if adapter_names is not None else {}
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=PAD_ID, **extra)
            generated += (out.shape[1] - ids.shape[1]) * ids.shape[0]
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "prompt_tokens": sum(len(p) for p in prompts), "generated_tokens": generated,
            "batch_size": batch_size}
