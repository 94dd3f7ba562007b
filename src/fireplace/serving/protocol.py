"""OpenAI (+ Fireworks extras) request bodies -> what the engine needs.

    parse_chat(body)        -> ChatRequest     (messages, tools, GenerationOptions)
    parse_completion(body)  -> CompletionRequest (prompt(s), GenerationOptions)
    options.sampling_params(default_max_tokens) -> engine SamplingParams

Unknown fields are ignored (clients send many); a present field of the wrong type or out of
range raises InvalidArgument naming it (`param`), which both gateway and replica answer 400.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fireplace.engine.sampling_params import SamplingParams
from fireplace.errors import InvalidArgument

MAX_MESSAGES = 2048
MAX_PROMPTS = 128
_NUMBER = (int, float)


def _bad(param: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{param}: {message}", param=param)


def _get(body: dict, name: str, types, default=None, *, nullable: bool = True):
    value = body.get(name, default)
    if value is None:
        return default if nullable else _raise(_bad(name, "must not be null"))
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _bad(name, f"must be {_type_name(types)}, got a boolean")
    if not isinstance(value, types):
        raise _bad(name, f"must be {_type_name(types)}, got {type(value).__name__}")
    return value


def _raise(exc):
    raise exc


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "an array",
             dict: "an object"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


@dataclass
class GenerationOptions:
    """The sampling and output fields shared by chat and completions."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    min_tokens: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    logprobs: int | None = None           # top alternatives per token (0 = chosen token only)
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    truncate: bool = False                # context_length_exceeded_behavior == "truncate"
    prompt_truncate_len: int | None = None
    perf_metrics: bool = False
    return_token_ids: bool = False
    response_format: dict | None = None
    user: str | None = None

    def sampling_params(self, default_max_tokens: int | None) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p, n=self.n,
            stop=list(self.stop), max_tokens=self.max_tokens if self.max_tokens is not None else default_max_tokens,
            min_tokens=self.min_tokens, seed=self.seed, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
            ignore_eos=self.ignore_eos, logprobs=self.logprobs, echo=self.echo)


def _options(body: dict, *, chat: bool) -> GenerationOptions:
    o = GenerationOptions()
    o.temperature = float(_get(body, "temperature", _NUMBER, 1.0))
    o.top_p = float(_get(body, "top_p", _NUMBER, 1.0))
    o.top_k = int(_get(body, "top_k", int, -1))
    if o.top_k == 0:
        o.top_k = -1  # Fireworks/vLLM: 0 means no top-k
    o.min_p = float(_get(body, "min_p", _NUMBER, 0.0))
    o.n = _get(body, "n", int, 1)
    stop = body.get("stop")
    if stop is None:
        o.stop = []
    elif isinstance(stop, str):
        o.stop = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        o.stop = list(stop)
    else:
        raise _bad("stop", "must be a string or an array of strings")
    max_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    o.max_tokens = _get(body, max_name, int, None)
    if o.max_tokens is not None and o.max_tokens < 1:
        raise _bad(max_name, "must be at least 1")
    o.min_tokens = _get(body, "min_tokens", int, 0)
    o.seed = _get(body, "seed", int, None)
    o.presence_penalty = float(_get(body, "presence_penalty", _NUMBER, 0.0))
    o.frequency_penalty = float(_get(body, "frequency_penalty", _NUMBER, 0.0))
    o.repetition_penalty = float(_get(body, "repetition_penalty", _NUMBER, 1.0))
    o.ignore_eos = _get(body, "ignore_eos", bool, False)
    if chat:
        if _get(body, "logprobs", bool, False):
            o.logprobs = _get(body, "top_logprobs", int, 0)
        elif body.get("top_logprobs") is not None:
            raise _bad("top_logprobs", "requires logprobs=true")
    else:
        o.logprobs = _get(body, "logprobs", int, None)
        o.echo = _get(body, "echo", bool, False)
    o.stream = _get(body, "stream", bool, False)
    stream_options = _get(body, "stream_options", dict, None)
    if stream_options is not None:
        o.include_usage = bool(_get(stream_options, "include_usage", bool, False))
    behaviour = _get(body, "context_length_exceeded_behavior", str, "error")
    if behaviour not in ("error", "truncate"):
        raise _bad("context_length_exceeded_behavior", "must be 'error' or 'truncate'")
    o.truncate = behaviour == "truncate"
    o.prompt_truncate_len = _get(body, "prompt_truncate_len", int, None)
    if o.prompt_truncate_len is not None and o.prompt_truncate_len < 1:
        raise _bad("prompt_truncate_len", "must be at least 1")
    o.perf_metrics = _get(body, "perf_metrics_in_response", bool, False)
    o.return_token_ids = _get(body, "return_token_ids", bool, False)
    o.response_format = _get(body, "response_format", dict, None)
    if o.response_format is not None:
        kind = o.response_format.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise _bad("response_format", "type must be 'text', 'json_object' or 'json_schema'")
        if kind == "text":
            o.response_format = None
    o.user = _get(body, "user", str, None)
    _validate(o.sampling_params(16))  # range checks, naming the field
    return o


def _validate(params: SamplingParams) -> None:
    from fireplace.engine.errors import InvalidRequestError
    try:
        params.validate()
    except InvalidRequestError as exc:
        raise _bad(exc.param or "request", exc.message) from exc



@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    tools: list[dict] | None
    options: GenerationOptions


@dataclass
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]
    options: GenerationOptions


def parse_json_object(raw: bytes) -> dict:
    """A request body that must be one JSON object (gateway and replica alike)."""
    import json
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    except RecursionError:   # the decoder recurses per level of nesting
        raise InvalidArgument("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


def parse_model(body: dict) -> str:
    model = _get(body, "model", str, None)
    if not model:
        raise _bad("model", "is required")
    return model


def parse_chat(body: dict) -> ChatRequest:
    model = parse_model(body)
    messages = _get(body, "messages", list, None)
    if not messages:
        raise _bad("messages", "must be a non-empty array")
    if len(messages) > MAX_MESSAGES:
        raise _bad("messages", f"at most {MAX_MESSAGES} messages")
    clean = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, "must be an object")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise _bad(f"{where}.role", "must be one of system, developer, user, assistant, tool")
        out = dict(message)
        out["role"] = "system" if role == "developer" else role
        out["content"] = _content_text(message.get("content"), f"{where}.content",
                                       optional=role == "assistant" and bool(message.get("tool_calls")))
        clean.append(out)
    tools = _get(body, "tools", list, None)
    return ChatRequest(model, clean, tools or None, _options(body, chat=True))


def _content_text(content: Any, where: str, *, optional: bool) -> str:
    if content is None:
        if optional:
            return ""
        raise _bad(where, "is required")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"{where}[{j}]", "only text parts ({'type': 'text', 'text': ...}) are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(where, "must be a string or an array of text parts")


def parse_completion(body: dict) -> CompletionRequest:
    model = parse_model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif (isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt)
          and all(isinstance(t, int) and not isinstance(t, bool) for p in prompt for t in p)):
        prompts = [list(p) for p in prompt]
    else:
        raise _bad("prompt", "must be a string, an array of strings, an array of token ids, or an array of those")
    if len(prompts) > MAX_PROMPTS:
        raise _bad("prompt", f"at most {MAX_PROMPTS} prompts per request")
    return CompletionRequest(model, prompts, _options(body, chat=False))
