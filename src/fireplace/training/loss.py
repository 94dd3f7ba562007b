"""Cross-entropy over the LM head in chunks, so the [tokens, vocab] logits never exist whole.

Only positions with a target are projected at all (prompt tokens cost no LM-head FLOPs), and
each chunk of `chunk` rows is recomputed in backward (activation checkpointing) rather than
kept: peak memory for the loss is one [chunk, vocab] block instead of [T, vocab].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fireplace.training.packing import IGNORE


def _chunk_ce(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Linear, targets: torch.Tensor,
                    chunk: int = 1024) -> torch.Tensor:
    """Sum of token losses. hidden [T, H] (after the final norm), targets [T] with IGNORE."""
    keep = (targets != IGNORE).nonzero(as_tuple=True)[0]
    if keep.numel() == 0:
        return hidden.sum() * 0.0
    h, t = hidden.index_select(0, keep), targets.index_select(0, keep)
    total = None
    for lo in range(0, h.shape[0], chunk):
        part = checkpoint(_chunk_ce, h[lo:lo + chunk], lm_head.weight, lm_head.bias, t[lo:lo + chunk],
                          use_reentrant=False)
        total = part if total is None else total + part
    return total
