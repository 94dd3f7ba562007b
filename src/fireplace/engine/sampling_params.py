"""How one request wants its tokens chosen, with the limits the API promises.

Ranges follow the OpenAI API, plus Fireworks/vLLM extras (top_k, min_p, repetition_penalty):
  temperature        [0, 2]     0 = greedy
  top_p              (0, 1]
  top_k              -1 or 0 = off, else >= 1
  min_p              [0, 1]
  repetition_penalty (0, inf)   HF semantics, 1 = off, over prompt + output tokens
  frequency_penalty, presence_penalty  [-2, 2]  OpenAI semantics, over output tokens
  stop               up to MAX_STOP_STRINGS non-empty strings of at most MAX_STOP_STRING_CHARS
  max_tokens         >= 1, or None = up to the context length
  min_tokens         >= 0 and <= max_tokens (EOS and stop tokens/strings held off until then)
  n                  1 .. MAX_N completions per request
  logprobs           None, or 0 .. MAX_LOGPROBS top alternatives per token (0 = chosen token only)
  prompt_logprobs    same, for prompt tokens
  logits_processor   None, or a factory called once per sample returning a
                     fireplace.engine.logits_processors.LogitsProcessor (structured output);
                     if the factory has check_params(params), validate() calls it
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fireplace.engine.errors import ContextLengthExceededError, InvalidRequestError

__all__ = ["MAX_LOGPROBS", "MAX_N", "MAX_STOP_STRINGS", "MAX_STOP_STRING_CHARS", "SamplingParams"]

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 256
MAX_N = 128
MAX_LOGPROBS = 20
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    max_tokens: int | None = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    n: int = 1
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    echo: bool = False
    skip_special_tokens: bool = True
    # per-sample token constraint (see engine/logits_processors.py); not part of equality
    logits_processor: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_top_k(self) -> bool:
        return self.top_k >= 1

    def validate(self) -> "SamplingParams":
        """Raise InvalidRequestError naming the first bad field; return self for chaining."""
        _number("temperature", self.temperature, 0.0, 2.0)
        _number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _integer("top_k", self.top_k, -1, None)
        _number("min_p", self.min_p, 0.0, 1.0)
        _number("repetition_penalty", self.repetition_penalty, 0.0, None, low_open=True)
        _number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        if self.seed is not None:
            _integer("seed", self.seed, SEED_MIN, SEED_MAX)
        self._validate_stop()
        if self.max_tokens is not None:
            _integer("max_tokens", self.max_tokens, 1, None)
        _integer("min_tokens", self.min_tokens, 0, None)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
                "min_tokens")
        _boolean("ignore_eos", self.ignore_eos)
        _integer("n", self.n, 1, MAX_N)
        if self.logprobs is not None:
            _integer("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        if self.prompt_logprobs is not None:
            _integer("prompt_logprobs", self.prompt_logprobs, 0, MAX_LOGPROBS)
        _boolean("echo", self.echo)
        _boolean("skip_special_tokens", self.skip_special_tokens)
        if self.logits_processor is not None:
            if not callable(self.logits_processor):
                raise InvalidRequestError("logits_processor must be a callable factory", "logits_processor")
            check = getattr(self.logits_processor, "check_params", None)
            if check is not None:
                check(self)
        return self

    def _validate_stop(self) -> None:
        if isinstance(self.stop, str) or not isinstance(self.stop, (list, tuple)):
            raise InvalidRequestError("stop must be a list of strings", "stop")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequestError(f"stop accepts at most {MAX_STOP_STRINGS} strings", "stop")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidRequestError("stop strings must be non-empty strings", "stop")
            if len(s) > MAX_STOP_STRING_CHARS:
                raise InvalidRequestError(
                    f"stop strings must be at most {MAX_STOP_STRING_CHARS} characters", "stop")
        if not isinstance(self.stop_token_ids, (list, tuple)):
            raise InvalidRequestError("stop_token_ids must be a list of integers", "stop_token_ids")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise InvalidRequestError(
                f"stop_token_ids accepts at most {MAX_STOP_TOKEN_IDS} ids", "stop_token_ids")
        for t in self.stop_token_ids:
            _integer("stop_token_ids", t, 0, None)

    def max_new_tokens(self, num_prompt_tokens: int, max_model_len: int, *, truncate: bool = False) -> int:
        """How many tokens this request may generate after a prompt of num_prompt_tokens.

        Prompt + completion must fit max_model_len. An over-long max_tokens is an error, or is
        cut to what fits when `truncate` (Fireworks' context_length_exceeded_behavior=truncate).
        """
        if num_prompt_tokens < 1:
            raise InvalidRequestError("the prompt must contain at least one token", "prompt")
        room = max_model_len - num_prompt_tokens
        if room < 1:
            raise ContextLengthExceededError(
                f"the prompt has {num_prompt_tokens} tokens; this model's context length is "
                f"{max_model_len}, which leaves no room for a completion. Shorten the prompt.")
        if self.max_tokens is None:
            return room
        if self.max_tokens > room and not truncate:
            raise ContextLengthExceededError(
                f"the prompt has {num_prompt_tokens} tokens and max_tokens is {self.max_tokens}, "
                f"more than this model's context length of {max_model_len}. "
                f"Lower max_tokens to at most {room} or shorten the prompt.", "max_tokens")
        return min(self.max_tokens, room)

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(name: str, value, low: float | None, high: float | None, *, low_open: bool = False) -> None:
    if not _is_number(value) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number", name)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        bracket = "(" if low_open else "["
        raise InvalidRequestError(f"{name} must be in {bracket}{lo}, {hi}], got {value}", name)


def _integer(name: str, value, low: int | None, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be an integer", name)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise InvalidRequestError(f"{name} must be in [{lo}, {hi}], got {value}", name)


def _boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be a boolean", name)
