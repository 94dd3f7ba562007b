"""Encode dataset examples into token ids and per-token loss weights with the base model's
tokenizer and chat template.

    EncodedExample(input_ids=[...], loss_mask=[0, 0, ..., 1, 1], line=7)

Rules (what is trained on):
  - CHAT: the conversation is rendered with the chat template (the job's `jinjaTemplate` when
    set, else the tokenizer's). Only assistant messages with weight 1 (absent means 1) carry
    loss: the tokens from the end of the assistant header (what `add_generation_prompt` adds)
    to the end of that message's rendering, so the end-of-turn token is learnt and the header
    is not. System, user and tool messages never carry loss.
  - COMPLETION: `prompt` + `completion` + EOS; only the completion and EOS carry loss.
A token belongs to a message when its first character (offset mapping of a fast tokenizer)
lies in that message's character span of the rendered text.

Truncation: an example longer than `max_length` keeps its first `max_length` tokens
(`truncated` is set). One whose trained tokens all fall past the cut has nothing left to
learn from (`is_empty`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fireplace.training.dataset_format import COMPLETION
from fireplace.training.errors import TrainingError


class EncodingError(TrainingError):
    """An example the tokenizer or template cannot handle; message names the line."""


@dataclass
class EncodedExample:
    input_ids: list[int]
    loss_mask: list[int]                 # 1 where the token is a training target
    line: int                            # 1-based line in the dataset file
    original_length: int = 0
    truncated: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def num_trained(self) -> int:
        return sum(self.loss_mask)

    @property
    def is_empty(self) -> bool:
        return self.num_trained == 0


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _normalize(messages: list[dict]) -> list[dict]:
    """Template-ready messages: list-of-parts content joined, our `weight` key dropped."""
    out = []
    for msg in messages:
        clean = {k: v for k, v in msg.items() if k != "weight"}
        clean["content"] = _text(msg.get("content"))
        if isinstance(clean.get("tool_calls"), list):
            calls = []
            for call in clean["tool_calls"]:
                fn = dict(call.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])  # templates expect a mapping
                    except ValueError:
                        pass
                calls.append({**call, "function": fn})
            clean["tool_calls"] = calls
        out.append(clean)
    return out


class ExampleEncoder:
    """Holds a tokenizer (and an optional template override); encodes one example at a time."""

    def __init__(self, tokenizer, *, chat_template: str | None = None, max_length: int):
        if not getattr(tokenizer, "is_fast", False):
            raise EncodingError("the base model's tokenizer has no fast (tokenizer.json) version; "
                                "loss masks need character offsets")
        self.tok = tokenizer
        self.template = chat_template or None
        self.max_length = max_length
        if self.template is None and not getattr(tokenizer, "chat_template", None):
            self.template_missing = True
        else:
            self.template_missing = False

    def _render(self, messages: list[dict], tools, *, add_generation_prompt: bool) -> str:
        kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if self.template:
            kwargs["chat_template"] = self.template
        if tools:
            kwargs["tools"] = tools
        return self.tok.apply_chat_template(messages, **kwargs)

    def encode(self, obj: dict, line: int, fmt: str) -> EncodedExample:
        if fmt == COMPLETION:
            return self._finish(*self._encode_completion(obj), line)
        return self._finish(*self._encode_chat(obj, line), line)

    def _encode_completion(self, obj: dict) -> tuple[list[int], list[int]]:
        prompt = self.tok(obj["prompt"], add_special_tokens=True)["input_ids"]
        completion = self.tok(obj["completion"], add_special_tokens=False)["input_ids"]
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        ids = list(prompt) + list(completion) + eos
        return ids, [0] * len(prompt) + [1] * (len(completion) + len(eos))

    def _encode_chat(self, obj: dict, line: int) -> tuple[list[int], list[int]]:
        if self.template_missing:
            raise EncodingError("the base model's tokenizer has no chat template; set jinjaTemplate on the job "
                                "or use a COMPLETION dataset")
        raw = obj["messages"]
        messages, tools = _normalize(raw), obj.get("tools")
        try:
            full = self._render(messages, tools, add_generation_prompt=False)
            spans = []
            for i, msg in enumerate(raw):
                if msg.get("role") != "assistant" or msg.get("weight", 1) == 0:
                    continue
                head = self._render(messages[:i], tools, add_generation_prompt=True) if i else ""
                end_text = self._render(messages[:i + 1], tools, add_generation_prompt=False)
                if not full.startswith(end_text) or not end_text.startswith(head):
                    raise EncodingError(f"line {line}: the chat template does not render messages[{i}] as a "
                                        "prefix of the whole conversation, so its loss mask cannot be placed")
                spans.append((len(head), len(end_text)))
        except EncodingError:
            raise
        except Exception as exc:  # jinja errors: the template refused this conversation
            raise EncodingError(f"line {line}: the chat template failed: {str(exc)[:300]}") from None
        enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        mask = [0] * len(ids)
        for t, (start, _end) in enumerate(offsets):
            for lo, hi in spans:
                if lo <= start < hi:
                    mask[t] = 1
                    break
        return list(ids), mask

    def _finish(self, ids: list[int], mask: list[int], line: int) -> EncodedExample:
        n = len(ids)
        if n > self.max_length:
            return EncodedExample(ids[:self.max_length], mask[:self.max_length], line, n, True)
        return EncodedExample(ids, mask, line, n, False)
