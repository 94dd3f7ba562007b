"""Which LoRA slot each token of a forward uses, laid out once for all projections.

The model runner builds one LoRABatch per forward from the slot of each scheduled sequence
(-1 = base model only). Every LoRAStack of the model then reads the same precomputed layout,
in one of two ways (see LoRAStack.apply):

  runs   contiguous token ranges of one slot: `runs` = ((start, end, slot), ...), base tokens
         left out. Each run costs two small matmuls on views of x and y, no gather, no copy.
         Best when runs are long (prefill), or few.
  dense  every token against the stacked A/B of all active slots at once, then a one-hot
         `mask` [T, U, 1] keeps each token's own slot: three ops per projection whatever the
         number of adapters, at U times the (tiny) LoRA flops. Best for decode, where runs are
         one token long and per-run Python overhead would dominate.

Runs are maximal, so a runner that orders sequences by slot gets one run per adapter.
Which of the two a batch uses is the backend's choice (Backend.lora_uses_dense; the threshold,
with its measurements, is BackendConfig.lora_dense_max_tokens_per_run). The C kernel of the
cpu-kernels backend reads token_slots_i32 only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fireplace.engine.backend import Backend
from fireplace.engine.backend_config import BackendConfig

BASE_SLOT = -1


@dataclass(frozen=True, eq=False)
class LoRABatch:
    token_slots: torch.Tensor  # [T] int64, -1 = base
    token_slots_i32: torch.Tensor  # [T] int32, the same (for the C kernel)
    runs: tuple[tuple[int, int, int], ...]  # (start, end, slot) of adapter tokens, maximal
    active_slots: tuple[int, ...]  # U distinct adapter slots, ascending
    mask: torch.Tensor | None  # [T, U, 1] one-hot of each token's slot among active_slots (dense only)
    use_dense: bool

    @property
    def num_tokens(self) -> int:
        return int(self.token_slots.shape[0])

    @classmethod
    def for_sequences(cls, seq_slots: Sequence[int], query_lens: Sequence[int], *,
                      dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                      use_dense: bool | None = None, backend: Backend | None = None) -> LoRABatch | None:
        """seq_slots [B], query_lens [B] (tokens of each sequence in this forward, in order).

        None when no sequence uses an adapter: the forward then runs the base path only.
        use_dense forces a strategy (tests, benchmarks); None lets the backend pick by average
        run length (no backend: BackendConfig's default threshold).
        """
        if len(seq_slots) != len(query_lens):
            raise ValueError(f"{len(seq_slots)} sequence slots for {len(query_lens)} sequences")
        runs: list[list[int]] = []
        start = 0
        for slot, n in zip(seq_slots, query_lens):
            if slot != BASE_SLOT and n > 0:
                if runs and runs[-1][2] == slot and runs[-1][1] == start:
                    runs[-1][1] = start + n
                else:
                    runs.append([start, start + n, slot])
            start += n
        token_slots = torch.repeat_interleave(torch.tensor(list(seq_slots), dtype=torch.int64),
                                              torch.tensor(list(query_lens), dtype=torch.int64))
        return cls._build(token_slots.to(device), [tuple(r) for r in runs], dtype, use_dense, backend)

    @classmethod
    def from_token_slots(cls, token_slots: torch.Tensor | Sequence[int], *,
                         dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                         use_dense: bool | None = None, backend: Backend | None = None) -> LoRABatch | None:
        """token_slots [T]: the slot of every token (-1 = base). None when all are base."""
        slots = torch.as_tensor(token_slots, dtype=torch.int64).flatten().cpu()
        if slots.numel() == 0 or bool((slots == BASE_SLOT).all()):
            return None
        change = torch.nonzero(slots[1:] != slots[:-1]).flatten() + 1  # starts of runs after the first
        starts = [0, *change.tolist()]
        ends = [*starts[1:], int(slots.numel())]
        values = slots[starts].tolist()
        runs = [(s, e, v) for s, e, v in zip(starts, ends, values) if v != BASE_SLOT]
        return cls._build(slots.to(device), runs, dtype, use_dense, backend)

    @classmethod
    def _build(cls, token_slots: torch.Tensor, runs: list[tuple[int, int, int]], dtype: torch.dtype,
               use_dense: bool | None, backend: Backend | None) -> LoRABatch | None:
        if any(s < 0 for _, _, s in runs):
            raise ValueError("LoRA slots are >= 0, or -1 for the base model")
        if not runs:  # adapter sequences with no tokens in this forward
            return None
        active = tuple(sorted({s for _, _, s in runs}))
        if use_dense is None:
            num_lora_tokens = sum(e - s for s, e, _ in runs)
            if backend is not None:
                use_dense = backend.lora_uses_dense(num_lora_tokens, len(runs))
            else:
                threshold = BackendConfig().lora_dense_max_tokens_per_run
                use_dense = len(runs) > 1 and num_lora_tokens < threshold * len(runs)
        mask = None
        if use_dense:
            active_t = torch.tensor(active, dtype=torch.int64, device=token_slots.device)
            mask = (token_slots[:, None] == active_t[None, :]).to(dtype).unsqueeze(-1)  # [T, U, 1]
        return cls(token_slots=token_slots, token_slots_i32=token_slots.to(torch.int32), runs=tuple(runs), active_slots=active, mask=mask,
                   use_dense=use_dense)
