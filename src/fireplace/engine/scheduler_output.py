"""What one scheduler step decided: which sequences run, and how many new tokens each.

`SchedulerOutput.scheduled` lists one `ScheduledSeq` per running sequence, in batch order; the
model runner flattens them into the step's varlen batch (see forward_context).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fireplace.engine.sequence import Sequence

__all__ = ["ScheduledSeq", "SchedulerOutput"]


@dataclass(frozen=True)
class ScheduledSeq:
    """One sequence's share of a step: tokens [start_pos, start_pos + num_new_tokens)."""

    seq: Sequence
    start_pos: int
    num_new_tokens: int
    needs_logits: bool  # the chunk ends at the last known token: sample the next one

    @property
    def token_ids(self) -> list[int]:
        return self.seq.token_ids[self.start_pos:self.start_pos + self.num_new_tokens]

    @property
    def positions(self) -> range:
        return range(self.start_pos, self.start_pos + self.num_new_tokens)

    @property
    def context_len(self) -> int:
        """Tokens in KV once this step ran (cached prefix + earlier chunks + this chunk)."""
        return self.start_pos + self.num_new_tokens

    @property
    def block_table(self) -> list[int]:
        return self.seq.block_table

    @property
    def adapter_id(self) -> str | None:
        return self.seq.adapter_id

    @property
    def is_decode(self) -> bool:
        return self.num_new_tokens == 1 and self.needs_logits

    def slot_mapping(self, block_size: int) -> list[int]:
        table = self.seq.block_table
        return [table[p // block_size] * block_size + p % block_size for p in self.positions]


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)  # now waiting, KV freed
    rejected: list[Sequence] = field(default_factory=list)  # finished: can never run

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def logits_seqs(self) -> list[ScheduledSeq]:
        """The entries update() expects a sampled token for, in this order."""
        return [s for s in self.scheduled if s.needs_logits]

    @property
    def num_prompt_tokens(self) -> int:
        """Tokens computed in prefill chunks (prompts, forks and recomputes)."""
        return sum(s.num_new_tokens for s in self.scheduled if not s.is_decode)

    @property
    def num_generated_tokens(self) -> int:
        return sum(1 for s in self.scheduled if s.needs_logits)

    @property
    def is_decode_only(self) -> bool:
        return bool(self.scheduled) and all(s.is_decode for s in self.scheduled)

    @property
    def adapter_ids(self) -> list[str]:
        """Distinct adapters in this step, in order of first appearance (None = base model omitted)."""
        return list(dict.fromkeys(s.adapter_id for s in self.scheduled if s.adapter_id is not None))
