"""Packing: examples into token-budget micro-batches, with no padding anywhere.

An epoch's plan is a pure function of (seed, epoch, example lengths, budgets): the examples
are shuffled by a seeded RNG and cut, in that order, into packs of at most `batch_tokens`
tokens and `batch_samples` examples (an example longer than the budget gets a pack of its
own). A position in the data is therefore just (epoch, index of the next pack), which is all
a checkpoint needs to resume exactly.

A pack becomes one row of tokens [1, T] with per-example position ids (0..L-1 for each
example) and segment boundaries `cu_seqlens` [k+1]; attention is kept inside each segment
by training.attention.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from fireplace.training.example_store import ExampleSet

IGNORE = -100


def plan_epoch(lengths: list[int], *, seed: int, epoch: int, batch_tokens: int,
               batch_samples: int | None) -> list[list[int]]:
    order = list(range(len(lengths)))
    random.Random(f"fireplace-pack:{seed}:{epoch}").shuffle(order)
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        full = current and (used + n > batch_tokens or (batch_samples is not None and len(current) >= batch_samples))
        if full:
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        packs.append(current)
    return packs


@dataclass
class PackedBatch:
    input_ids: torch.Tensor        # [1, T] long
    position_ids: torch.Tensor     # [1, T] long
    targets: torch.Tensor          # [T] long: next token where it is trained, IGNORE elsewhere
    segments: tuple[int, ...]      # cu_seqlens as Python ints: (0, L0, L0+L1, ...)
    num_tokens: int                # T (every one a real token)
    num_targets: int


def build_batch(examples: ExampleSet, pack: list[int]) -> PackedBatch:
    ids, pos, tgt, bounds = [], [], [], [0]
    for i in pack:
        tokens, mask = examples.example(i)
        tokens = tokens.long()
        n = tokens.numel()
        ids.append(tokens)
        pos.append(torch.arange(n, dtype=torch.long))
        shifted = torch.full((n,), IGNORE, dtype=torch.long)
        if n > 1:
            nxt, keep = tokens[1:], mask[1:].bool()
            shifted[:-1] = torch.where(keep, nxt, torch.full_like(nxt, IGNORE))
        tgt.append(shifted)
        bounds.append(bounds[-1] + n)
    targets = torch.cat(tgt)
    return PackedBatch(torch.cat(ids)[None], torch.cat(pos)[None], targets, tuple(bounds), bounds[-1],
                       int((targets != IGNORE).sum()))
