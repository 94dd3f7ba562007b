"""The LoRA stacks of one FusedLinear (q/k/v, or gate/up), applied together.

Every part of a FusedLinear reads the same input x, so in dense mode (decode, see batch.py)
the parts' stacked A matrices are concatenated and one matmul computes every part's
low-rank activations at once:
    h = x @ [A_q; A_k; A_v]^T         [T, sum_i U*R_i]     (U active slots, R_i rank of part i)
    h_i *= one-hot slot mask          (one multiply when all parts share a rank)
    y_i += h_i @ B_i                  one addmm per part, into that part's output
That is 2 + P ops for a group of P parts instead of 3P, which is what LoRA costs at decode
batch sizes (op count, not flops). In runs mode, and where the stacks' C kernel runs (one
call per part), each part's stack applies on its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fireplace.engine.lora.batch import LoRABatch
from fireplace.engine.lora.stack import LoRAStack

# (first col of h, last col of h, rank, b [U*R, out_i], index of the part)
_Part = tuple[int, int, int, torch.Tensor, int]


class LoRAStackGroup:
    def __init__(self, stacks: list[LoRAStack], sizes: list[int]):
        if len(stacks) != len(sizes) or any(s.out_features != n for s, n in zip(stacks, sizes)):
            raise ValueError("a LoRA stack group needs one stack per fused part, in order")
        self.stacks = stacks
        self._cache: tuple[tuple, tuple[torch.Tensor | None, list[_Part]]] | None = None

    def apply(self, x: torch.Tensor, ys: list[torch.Tensor], batch: LoRABatch) -> list[torch.Tensor]:
        """x [T, in], ys[i] [T, out_i] (part i's base output, maybe a view of the fused one)
        -> ys with each part's deltas added, in place."""
        if not batch.use_dense or self.stacks[0].uses_kernel(x):
            return [stack.apply(x, y, batch) for stack, y in zip(self.stacks, ys)]
        a, parts = self._stacked_for(batch.active_slots)
        if a is None:  # no active adapter targets any part
            return ys
        num_tokens, num_active = x.shape[0], len(batch.active_slots)
        h = F.linear(x, a)  # [T, sum U*R_i]
        ranks = {r for _, _, r, _, _ in parts}
        if len(ranks) == 1:
            h.view(num_tokens, len(parts), num_active, ranks.pop()).mul_(batch.mask.unsqueeze(1))
        else:
            for h_lo, h_hi, r, _, _ in parts:
                h[:, h_lo:h_hi].view(num_tokens, num_active, r).mul_(batch.mask)
        for h_lo, h_hi, _, b, i in parts:
            ys[i].addmm_(h[:, h_lo:h_hi], b)
        return ys

    def _stacked_for(self, active: tuple[int, ...]) -> tuple[torch.Tensor | None, list[_Part]]:
        """The concatenated A of the active slots and each part's B, cached until a slot write."""
        key = (active, tuple(s.version for s in self.stacks))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        a_list, parts, h_start = [], [], 0
        for i, stack in enumerate(self.stacks):
            a, b, r = stack.stacked_for(active)
            if r == 0:
                continue
            a_list.append(a)
            parts.append((h_start, h_start + a.shape[0], r, b, i))
            h_start += a.shape[0]
        stacked = (torch.cat(a_list) if a_list else None, parts)
        self._cache = (key, stacked)
        return stacked
