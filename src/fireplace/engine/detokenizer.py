"""Incremental detokenization of one sequence, with stop strings.

Text is produced by decoding a small window of tokens and taking what the newest tokens added
(decode(ids[prefix:]) minus decode(ids[prefix:read])), so tokenizers that drop or merge
leading spaces at a boundary still give the right text. A window that ends in U+FFFD is an
incomplete UTF-8 character: its text waits for the next token.

Stop strings may straddle tokens. Text that could still be the start of a stop string is held
back; when a stop string appears, the text before it is emitted, the stop string and everything
after it are dropped, and `stop_string` says which one ended the sequence.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DetokenizerDelta", "IncrementalDetokenizer"]

# Prompt tokens decoded ahead of the first output token, so its leading space survives.
_NUM_PROMPT_CONTEXT_TOKENS = 6
_INCOMPLETE_CHAR = "\ufffd"


@dataclass(frozen=True)
class DetokenizerDelta:
    text: str  # new text safe to show
    stop_string: str | None = None  # set once a stop string ended the sequence


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Any,  # a transformers tokenizer: decode(ids, skip_special_tokens=...)
        prompt_token_ids: Sequence[int] = (),
        *,
        stop: Sequence[str] = (),
        skip_special_tokens: bool = True,
        min_tokens: int = 0,
    ):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.skip_special_tokens = skip_special_tokens
        self.min_tokens = min_tokens
        context = list(prompt_token_ids)[-_NUM_PROMPT_CONTEXT_TOKENS:]
        self._ids: list[int] = context  # window tail of prompt + all output ids
        self._prefix_offset = 0  # window start
        self._read_offset = len(context)  # ids before this are already in self.text
        self.num_output_tokens = 0
        self.text = ""  # all decoded output text (cut at a stop string)
        self._num_emitted = 0  # characters of self.text already returned
        self.stop_string: str | None = None
        self._max_stop_len = max((len(s) for s in self.stop), default=0)

    @property
    def is_stopped(self) -> bool:
        return self.stop_string is not None

    @property
    def output_text(self) -> str:
        """Text returned so far (what a client has seen)."""
        return self.text[: self._num_emitted]

    def step(self, new_token_ids: list[int], *, is_final: bool = False) -> DetokenizerDelta:
        """Add sampled tokens; return the text now safe to show.

        With is_final (the sequence finished for another reason), everything held back is
        flushed. After a stop string, further calls return nothing.
        """
        if self.is_stopped:
            return DetokenizerDelta("", self.stop_string)
        self._ids.extend(new_token_ids)
        self.num_output_tokens += len(new_token_ids)
        search_from = max(self._num_emitted, len(self.text) - self._max_stop_len + 1, 0)
        self.text += self._decode_new(flush=is_final)

        if self.stop and self.num_output_tokens >= self.min_tokens:
            found = self._find_stop(search_from)
            if found is not None:
                index, stop_string = found
                self.text = self.text[:index]
                self.stop_string = stop_string
                return DetokenizerDelta(self._emit(len(self.text)), stop_string)

        if is_final or not self.stop:
            return DetokenizerDelta(self._emit(len(self.text)))
        return DetokenizerDelta(self._emit(len(self.text) - self._held_back()))

    def _decode_new(self, *, flush: bool) -> str:
        ids, start, read = self._ids, self._prefix_offset, self._read_offset
        if read >= len(ids):
            return ""
        prefix_text = self._decode(ids[start:read])
        full_text = self._decode(ids[start:])
        if not flush and (len(full_text) <= len(prefix_text) or full_text.endswith(_INCOMPLETE_CHAR)):
            return ""  # nothing visible yet, or a character split across tokens
        self._prefix_offset, self._read_offset = read, len(ids)
        return full_text[len(prefix_text):]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False)

    def _find_stop(self, search_from: int) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for s in self.stop:
            index = self.text.find(s, search_from)
            if index != -1 and (best is None or index < best[0]):
                best = (index, s)
        return best

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        text, hold = self.text, 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return hold

    def _emit(self, end: int) -> str:
        end = max(end, self._num_emitted)
        delta = self.text[self._num_emitted:end]
        self._num_emitted = end
        return delta
