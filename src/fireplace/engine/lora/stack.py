"""The adapters of one projection, stacked by slot, and the batched per-token delta.

For S = max_loras slots padded to R = max_lora_rank:
    a  [S, R, in]    lora_A of each slot, rows >= the slot's rank are zero
    b  [S, R, out]   (scale * lora_B)^T of each slot, rows >= the slot's rank are zero
B is kept transposed with its scale folded in so that a slot's rank-r part is a contiguous
prefix of both (a[s, :r], b[s, :r]) and the delta is one F.linear and one addmm:
    y[t] += (x[t] @ a[s_t]^T) @ b[s_t]         s_t = slot of token t; base tokens (-1) add nothing.
Zero padding keeps the math exact whatever the mix of ranks. A slot an adapter does not target
here has rank 0 and is skipped.

On the cpu-kernels backend (CPU fp32, the C kernel fireplace.engine.kernels.lora_delta built),
one call computes every token's delta straight from the stacks: no mask, no per-run matmuls.
That is what decode needs, where the torch ops cost ~100 us each for a few microseconds of math.
A stack built without a backend uses the torch paths.

The stack is a plain object, not an nn.Module: it is not part of the model's state_dict, and
slot writes copy into the preallocated tensors in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fireplace.engine.backend import Backend
from fireplace.engine.kernels import lora_delta
from fireplace.engine.lora.batch import LoRABatch


class LoRAStack:
    def __init__(self, in_features: int, out_features: int, max_loras: int, max_lora_rank: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 backend: Backend | None = None):
        self.backend = backend  # the model's; None: torch paths only
        self.in_features = in_features
        self.out_features = out_features
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.a = torch.zeros(max_loras, max_lora_rank, in_features, dtype=dtype, device=device)
        self.b = torch.zeros(max_loras, max_lora_rank, out_features, dtype=dtype, device=device)
        self.ranks = [0] * max_loras  # rank of each slot here; 0 = empty or not targeted
        self.rank_table = torch.zeros(max_loras, dtype=torch.int32)  # the same, for the C kernel
        self.version = 0  # bumped by every write; invalidates dense caches (here and in groups)
        # (active_slots, version) -> (a_cat [U*Re, in], b_cat [U*Re, out], Re); Re = max active rank
        self._dense_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor, int]] | None = None

    def write_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        """Load one adapter's a [r, in], b [out, r] into `slot` (copied, cast, scale folded into b)."""
        r = int(a.shape[0])
        if a.shape != (r, self.in_features) or b.shape != (self.out_features, r):
            raise ValueError(f"LoRA A {tuple(a.shape)} / B {tuple(b.shape)} do not fit a projection "
                             f"{self.in_features} -> {self.out_features}")
        if r > self.max_lora_rank:
            raise ValueError(f"LoRA rank {r} exceeds max_lora_rank {self.max_lora_rank}")
        self.a[slot].zero_()
        self.b[slot].zero_()
        self.a[slot, :r].copy_(a)
        # scale in fp32 before casting, so a bf16 stack holds round(scale * B) not round(scale) * round(B)
        self.b[slot, :r].copy_((b.to(torch.float32) * scale).T)
        self.ranks[slot] = r
        self.rank_table[slot] = r
        self.version += 1

    def clear_slot(self, slot: int) -> None:
        if self.ranks[slot]:
            self.a[slot].zero_()
            self.b[slot].zero_()
            self.ranks[slot] = 0
            self.rank_table[slot] = 0
            self.version += 1

    def apply(self, x: torch.Tensor, y: torch.Tensor, batch: LoRABatch) -> torch.Tensor:
        """x [T, in], y [T, out] (the base output) -> y with every token's adapter delta added, in place."""
        if self.uses_kernel(x):
            return lora_delta.lora_delta_unchecked_(x, self.a, self.b, self.rank_table, batch.token_slots_i32, y)
        if batch.use_dense:
            return self._apply_dense(x, y, batch)
        for start, end, slot in batch.runs:
            r = self.ranks[slot]
            if r:
                h = F.linear(x[start:end], self.a[slot, :r])  # [n, r]
                y[start:end].addmm_(h, self.b[slot, :r])  # += [n, r] @ [r, out]
        return y

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether apply() runs the C kernel for input x: the backend has it, CPU fp32 stacks and input."""
        return (self.backend is not None and self.backend.uses_lora_kernel(x) and x.device.type == "cpu"
                and self.a.dtype == torch.float32 and self.a.device.type == "cpu")

    def _apply_dense(self, x: torch.Tensor, y: torch.Tensor, batch: LoRABatch) -> torch.Tensor:
        a_cat, b_cat, r = self.stacked_for(batch.active_slots)
        if r == 0:  # no active adapter targets this projection
            return y
        num_active = len(batch.active_slots)
        h = F.linear(x, a_cat)  # [T, U*Re]: every token through every active slot's A
        h.view(-1, num_active, r).mul_(batch.mask)  # keep each token's own slot only
        return y.addmm_(h, b_cat)  # += [T, U*Re] @ [U*Re, out]

    def stacked_for(self, active: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """A and B of the active slots as two matrices, trimmed to their largest rank here.

        Cached: between adapter loads consecutive decode steps reuse the same active set.
        """
        key = (active, self.version)
        if self._dense_cache is not None and self._dense_cache[0] == key:
            return self._dense_cache[1]
        r = max(self.ranks[s] for s in active)
        num_active = len(active)
        if active == tuple(range(self.max_loras)) and r == self.max_lora_rank:
            stacked = (self.a.view(-1, self.in_features), self.b.view(-1, self.out_features), r)
        else:
            index = torch.tensor(active, dtype=torch.int64, device=self.a.device)
            stacked = (self.a[index, :r].reshape(num_active * r, self.in_features),
                       self.b[index, :r].reshape(num_active * r, self.out_features), r)
        self._dense_cache = (key, stacked)
        return stacked
