"""Limits the scheduler works within; checked once at start-up."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SchedulerConfig"]


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    num_blocks: int  # KV blocks in the pool (from the memory the runner could reserve)
    max_model_len: int  # prompt + completion tokens of one sequence
    block_size: int = 16
    max_num_seqs: int = 64  # sequences in one step's batch
    max_num_batched_tokens: int = 2048  # new tokens in one step's batch (prefill chunks + decodes)
    max_loras: int | None = None  # distinct adapters among running sequences; None = no limit
    # How many later requests may be admitted ahead of one waiting for an adapter slot,
    # before admission stops behind it (bounds its wait: the running adapters then drain).
    max_adapter_bypass: int = 32
    enable_prefix_caching: bool = True
    # Free blocks admission leaves beyond the whole prompts of running prefills (only while
    # something runs, so a lone request is never held back): headroom for decodes to grow.
    watermark_blocks: int = 0

    def __post_init__(self) -> None:
        for name in ("num_blocks", "max_model_len", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SchedulerConfig.{name} must be an integer >= 1, got {value!r}")
        if self.max_loras is not None and (not isinstance(self.max_loras, int) or self.max_loras < 1):
            raise ValueError(f"SchedulerConfig.max_loras must be None or >= 1, got {self.max_loras!r}")
        if not isinstance(self.watermark_blocks, int) or not 0 <= self.watermark_blocks < self.num_blocks:
            raise ValueError("SchedulerConfig.watermark_blocks must be an integer in [0, num_blocks)")
        if not isinstance(self.max_adapter_bypass, int) or self.max_adapter_bypass < 0:
            raise ValueError("SchedulerConfig.max_adapter_bypass must be an integer >= 0")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so every running sequence can decode each step")
        capacity = self.num_blocks * self.block_size
        if self.max_model_len > capacity:
            raise ValueError(
                f"max_model_len ({self.max_model_len}) exceeds the KV cache capacity ({capacity} tokens "
                f"= {self.num_blocks} blocks x {self.block_size}); lower max_model_len or give the cache more memory")

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size
