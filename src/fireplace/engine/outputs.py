"""What the engine returns per request and step (incremental: deltas since the last output)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first


@dataclass
class CompletionOutput:
    index: int                                     # which of the request's n completions
    token_ids: list[int] = field(default_factory=list)       # new since the last output
    text: str = ""                                 # new text since the last output
    logprobs: list[TokenLogprob] | None = None     # for token_ids, when requested
    finish_reason: str | None = None               # stop | length | abort | error
    stop_reason: int | str | None = None           # the stop token id or stop string
    num_tokens: int = 0                            # generated so far (total)


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    prompt_token_ids: list[int]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    error: str | None = None                       # set when the request was rejected
    exception: Exception | None = None             # the typed error behind `error` (engine.errors)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # per prompt token (first: None), once

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return sum(o.num_tokens for o in self.outputs)
