"""A snapshot of the engine's load, for /metrics, logs and the scheduler's callers."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fireplace.engine.scheduler import Scheduler

__all__ = ["EngineStats", "ThroughputMeter"]


@dataclass(frozen=True)
class EngineStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    adapter_slots_used: int = 0
    adapter_slots_total: int = 0
    prompt_tokens_per_s: float = 0.0  # over ThroughputMeter's window (prefill incl. recompute)
    generation_tokens_per_s: float = 0.0
    prefix_cache_hit_rate: float = 0.0  # cached / queried prompt tokens since start
    num_preemptions: int = 0
    prompt_tokens_total: int = 0  # computed since start (recomputes after preemption included)
    num_overloaded_rejections: int = 0  # add_request refused: the waiting queue was full
    num_deadline_rejections: int = 0  # waiting requests whose deadline passed
    generation_tokens_total: int = 0

    @classmethod
    def collect(cls, scheduler: "Scheduler", meter: "ThroughputMeter | None" = None, *,
                adapter_slots_used: int = 0, adapter_slots_total: int = 0,
                num_overloaded_rejections: int = 0) -> "EngineStats":
        bm = scheduler.block_manager
        prompt_rate, generation_rate = meter.rates() if meter is not None else (0.0, 0.0)
        return cls(
            num_running=scheduler.num_running,
            num_waiting=scheduler.num_waiting,
            kv_blocks_used=bm.num_used_blocks,
            kv_blocks_free=bm.num_free_blocks,
            adapter_slots_used=adapter_slots_used,
            adapter_slots_total=adapter_slots_total,
            prompt_tokens_per_s=prompt_rate,
            generation_tokens_per_s=generation_rate,
            prefix_cache_hit_rate=bm.stats.hit_rate,
            num_preemptions=scheduler.num_preemptions,
            num_overloaded_rejections=num_overloaded_rejections,
            num_deadline_rejections=scheduler.num_deadline_rejections,
            prompt_tokens_total=meter.total_prompt_tokens if meter is not None else 0,
            generation_tokens_total=meter.total_generated_tokens if meter is not None else 0,
        )

    @property
    def kv_cache_usage(self) -> float:
        total = self.kv_blocks_used + self.kv_blocks_free
        return self.kv_blocks_used / total if total else 0.0


class ThroughputMeter:
    """Tokens per second over a sliding window of recent steps."""

    def __init__(self, window_s: float = 10.0, clock=time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, int, int]] = deque()  # (time, prompt tokens, generated)
        self._num_prompt = 0
        self._num_generated = 0
        self.total_prompt_tokens = 0
        self.total_generated_tokens = 0
        self._start = clock()

    def record(self, num_prompt_tokens: int, num_generated_tokens: int) -> None:
        now = self._clock()
        self._events.append((now, num_prompt_tokens, num_generated_tokens))
        self._num_prompt += num_prompt_tokens
        self._num_generated += num_generated_tokens
        self.total_prompt_tokens += num_prompt_tokens
        self.total_generated_tokens += num_generated_tokens
        self._expire(now)

    def rates(self) -> tuple[float, float]:
        """(prompt tokens/s, generated tokens/s) over the window, or over the meter's age if shorter."""
        now = self._clock()
        self._expire(now)
        span = max(min(self.window_s, now - self._start), 1e-3)
        return self._num_prompt / span, self._num_generated / span

    def _expire(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            _, p, g = self._events.popleft()
            self._num_prompt -= p
            self._num_generated -= g
