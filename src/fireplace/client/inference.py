"""The data plane, OpenAI shape: POST /v1/chat/completions and /v1/completions, plain or
streamed (Server-Sent Events, `data: {chunk}` lines ending with `data: [DONE]`).

Sampling parameters pass through as given (`temperature`, `max_tokens`, `top_p`, `top_k`,
`stop`, ... : whatever the server accepts); None values are left out.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx

from fireplace import errors

if TYPE_CHECKING:
    from fireplace.client.api import Fireplace

# A reply may take long to start (a cold replica, a long queue) and long between tokens under
# load: inference waits up to this for each read, where control-plane calls wait DEFAULT_TIMEOUT.
INFERENCE_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"


def iter_sse(lines: Iterator[str]) -> Iterator[dict]:
    """Parsed `data:` payloads of an SSE stream up to `[DONE]`; an `error` event raises."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line.strip() or not data:
            continue  # comments, event:/id: fields, keep-alives
        payload, data = "\n".join(data), []
        if payload.strip() == "[DONE]":
            return
        event = json.loads(payload)
        if isinstance(event, dict) and isinstance(event.get("error"), dict):
            raise errors.Internal(event["error"].get("message") or "the stream failed",
                                  details=[event["error"]])
        yield event
    if data and "\n".join(data).strip() != "[DONE]":
        yield json.loads("\n".join(data))


class Inference:
    def __init__(self, fp: "Fireplace"):
        self.fp = fp

    def models(self) -> list[dict]:
        """GET /v1/models: the models this key can call (OpenAI list shape: id = full name)."""
        return self.fp.get(MODELS_PATH).get("data", [])

    def chat(self, model: str, messages: list[dict], **params: Any) -> dict:
        return self._post(CHAT_PATH, _body(model=model, messages=messages, **params))

    def chat_stream(self, model: str, messages: list[dict], **params: Any) -> Iterator[dict]:
        return self._stream(CHAT_PATH, _body(model=model, messages=messages, **params))

    def complete(self, model: str, prompt: str, **params: Any) -> dict:
        return self._post(COMPLETIONS_PATH, _body(model=model, prompt=prompt, **params))

    def complete_stream(self, model: str, prompt: str, **params: Any) -> Iterator[dict]:
        return self._stream(COMPLETIONS_PATH, _body(model=model, prompt=prompt, **params))

    def _post(self, path: str, body: dict) -> dict:
        return self.fp.transport.json("POST", path, json=body, timeout=INFERENCE_TIMEOUT)

    def _stream(self, path: str, body: dict) -> Iterator[dict]:
        body = {**body, "stream": True}
        with self.fp.transport.stream("POST", path, json=body, headers={"accept": "text/event-stream"},
                                      timeout=INFERENCE_TIMEOUT) as response:
            yield from iter_sse(response.iter_lines())


def _body(**fields: Any) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


def chunk_text(chunk: dict) -> str:
    """The text a streamed chunk adds (chat `delta.content` or completion `text`), choice 0."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""
