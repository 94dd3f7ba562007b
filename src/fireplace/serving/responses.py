"""OpenAI response objects (chat.completion, text_completion and their stream chunks) built
from the engine's RequestOutputs. Pure functions of their inputs: no engine, no HTTP."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from fireplace.engine.outputs import TokenLogprob

FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "stop", "error": "error"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@dataclass
class ChoiceState:
    """What one choice has accumulated (non-streaming answers and usage)."""
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


MIN_LOGPROB = -9999.0  # forbidden tokens (-inf) as OpenAI reports them: JSON has no infinity


def _lp(value: float) -> float:
    return value if value > MIN_LOGPROB else MIN_LOGPROB


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def chat_logprobs(tokenizer, items: list[TokenLogprob], num_top: int) -> dict:
    content = []
    for lp in items:
        text = token_text(tokenizer, lp.token_id)
        tops = [{"token": token_text(tokenizer, t), "logprob": _lp(v), "bytes": list(token_text(tokenizer, t).encode())}
                for t, v in lp.top[:num_top]]
        content.append({"token": text, "logprob": _lp(lp.logprob), "bytes": list(text.encode()), "top_logprobs": tops})
    return {"content": content}


def completion_logprobs(tokenizer, items: list[TokenLogprob], num_top: int, offset: int) -> dict:
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for lp in items:
        text = token_text(tokenizer, lp.token_id)
        tokens.append(text)
        token_logprobs.append(_lp(lp.logprob))
        top_logprobs.append({token_text(tokenizer, t): _lp(v) for t, v in lp.top[:num_top]} if num_top else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}


def usage(num_prompt: int, num_completion: int, num_cached: int = 0) -> dict:
    out = {"prompt_tokens": num_prompt, "completion_tokens": num_completion,
           "total_tokens": num_prompt + num_completion}
    if num_cached:
        out["prompt_tokens_details"] = {"cached_tokens": num_cached}
    return out


def perf_metrics(arrival: float, first_token: float | None, finished: float, num_prompt: int,
                 num_completion: int, num_cached: int) -> dict:
    """Fireworks' perf_metrics_in_response, as a JSON object of this request's timings."""
    ttft = (first_token - arrival) if first_token else None
    total = finished - arrival
    decode = (finished - first_token) if first_token else None
    return {"prompt-tokens": num_prompt, "cached-prompt-tokens": num_cached, "completion-tokens": num_completion,
            "time-to-first-token": ttft, "total-time": total,
            "tokens-per-second": (num_completion - 1) / decode if decode and num_completion > 1 else None}


def chat_completion(request_id: str, model: str, choices: list[ChoiceState], *, tokenizer, num_top: int | None,
                    usage_obj: dict, extra: dict) -> dict:
    out_choices = []
    for c in choices:
        choice = {"index": c.index, "message": {"role": "assistant", "content": c.text},
                  "finish_reason": FINISH_REASONS.get(c.finish_reason or "stop", "stop"),
                  "logprobs": chat_logprobs(tokenizer, c.logprobs, num_top) if num_top is not None else None}
        if extra.get("return_token_ids"):
            choice["token_ids"] = c.token_ids
        out_choices.append(choice)
    body = {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": out_choices, "usage": usage_obj}
    body.update({k: v for k, v in extra.items() if k != "return_token_ids"})
    return body


def text_completion(request_id: str, model: str, choices: list[ChoiceState], *, tokenizer, num_top: int | None,
                    usage_obj: dict, extra: dict) -> dict:
    out_choices = []
    for c in choices:
        choice = {"index": c.index, "text": c.text,
                  "finish_reason": FINISH_REASONS.get(c.finish_reason or "stop", "stop"),
                  "logprobs": completion_logprobs(tokenizer, c.logprobs, num_top, 0) if num_top is not None else None}
        if extra.get("return_token_ids"):
            choice["token_ids"] = c.token_ids
        out_choices.append(choice)
    body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": out_choices, "usage": usage_obj}
    body.update({k: v for k, v in extra.items() if k != "return_token_ids"})
    return body


def chat_chunk(request_id: str, model: str, created: int, index: int, delta: dict, *,
               finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                         "finish_reason": FINISH_REASONS.get(finish_reason, finish_reason) if finish_reason else None}]}


def completion_chunk(request_id: str, model: str, created: int, index: int, text: str, *,
                     finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs,
                         "finish_reason": FINISH_REASONS.get(finish_reason, finish_reason) if finish_reason else None}]}


def usage_chunk(request_id: str, model: str, created: int, obj: str, usage_obj: dict) -> dict:
    return {"id": request_id, "object": obj, "created": created, "model": model, "choices": [], "usage": usage_obj}
