"""Run OpenAI chat / completion requests on the replica's AsyncEngine.

    svc = GenerationService(async_engine)
    body = await svc.complete(kind, prompts, options, model=..., adapter_id=...)   # JSON dict
    async for sse_bytes in svc.stream(kind, prompts, options, model=..., adapter_id=...): ...

kind is "chat" or "completion". prompts are token-id lists (the chat template is applied by
`chat_prompt`). A request with several prompts and n samples has len(prompts) * n choices:
choice index = prompt index * n + sample index (as OpenAI numbers them).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fireplace.engine.async_engine import AsyncEngine
from fireplace.engine.errors import InvalidRequestError
from fireplace.engine.outputs import RequestOutput
from fireplace.errors import FireplaceError, Internal, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from fireplace.serving import responses as r
from fireplace.serving.protocol import ChatRequest, GenerationOptions
from fireplace.serving.openai_errors import openai_error_body

DONE = b"data: [DONE]\n\n"


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def engine_error(exc: Exception) -> FireplaceError:
    """Engine exceptions -> the platform's error hierarchy (the edge renders them)."""
    from fireplace.engine import errors as engine_errors
    if isinstance(exc, engine_errors.EngineOverloadedError):
        return ResourceExhausted(str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, (engine_errors.EngineDeadError, engine_errors.DeadlineExceededError)):
        return Unavailable(str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, engine_errors.AdapterUnavailableError):
        return NotFound(exc.message, param="model")
    if isinstance(exc, InvalidRequestError):
        return InvalidArgument(exc.message, param=exc.param)
    if isinstance(exc, FireplaceError):
        return exc
    if isinstance(exc, engine_errors.EngineError):
        return InvalidArgument(str(exc))
    return Internal(f"engine failed: {type(exc).__name__}: {exc}")


class _Accounting:
    """Prompt/cached tokens (counted once per prompt) and timings of one OpenAI request."""

    def __init__(self):
        self.num_prompt = self.num_cached = self.num_completion = 0
        self.arrival, self.first = time.monotonic(), None
        self._seen: set[int] = set()

    def see(self, i: int, out: RequestOutput) -> None:
        if i not in self._seen:
            self._seen.add(i)
            self.num_prompt += len(out.prompt_token_ids)
            self.num_cached += out.num_cached_tokens
        self.first = self.first or time.monotonic()
        self.num_completion += sum(len(o.token_ids) for o in out.outputs)

    def usage(self) -> dict:
        return r.usage(self.num_prompt, self.num_completion, self.num_cached)

    def perf_metrics(self) -> dict:
        return r.perf_metrics(self.arrival, self.first, time.monotonic(), self.num_prompt, self.num_completion,
                              self.num_cached)


class GenerationService:
    def __init__(self, engine: AsyncEngine, *, structured_output=None):
        self.engine = engine
        self.tokenizer = engine.engine.tokenizer
        self.max_model_len = engine.engine.max_model_len
        self.structured_output = structured_output  # callable(response_format, LLMEngine, params) -> params
        self.num_outstanding = 0

    # -- prompts ----------------------------------------------------------------------------
    def chat_prompt(self, req: ChatRequest, template: str | None = None) -> list[int]:
        kwargs = {"tools": req.tools} if req.tools else {}
        if template:
            kwargs["chat_template"] = template
        try:
            text = self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False,
                                                      **kwargs)
        except Exception as exc:  # a template that cannot render these messages is the caller's input
            raise InvalidArgument(f"messages: the chat template cannot render them: {exc}", param="messages")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def completion_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)  # special tokens (BOS) the way transformers adds them
        return list(prompt)

    def _params(self, options: GenerationOptions, *, chat: bool):
        params = options.sampling_params(None if chat else 16)
        if options.response_format is not None:
            if self.structured_output is None:
                raise InvalidArgument("response_format: structured output is not available on this replica",
                                      param="response_format")
            try:
                params = self.structured_output(options.response_format, self.engine.engine, params)
                params.validate()
            except InvalidRequestError as exc:
                raise InvalidArgument(exc.message, param=exc.param) from exc
        return params

    def _truncate(self, ids: list[int], options: GenerationOptions) -> list[int]:
        if options.prompt_truncate_len is not None and len(ids) > options.prompt_truncate_len:
            return ids[-options.prompt_truncate_len:]
        return ids

    # -- running ----------------------------------------------------------------------------
    async def _run_one(self, prompt_ids: list[int], params, adapter_id: str | None, truncate: bool
                       ) -> AsyncIterator[RequestOutput]:
        try:
            async for out in self.engine.generate(prompt_ids, params, adapter_id=adapter_id,
                                                  truncate_prompt=truncate):
                if out.error:
                    exc = getattr(out, "exception", None)
                    raise engine_error(exc) if exc is not None else InvalidArgument(f"request rejected: {out.error}")
                yield out
        except FireplaceError:
            raise
        except Exception as exc:
            raise engine_error(exc) from exc

    async def _merged(self, prompts: list[list[int]], params, adapter_id, truncate
                      ) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Outputs of every prompt's request as they come: (prompt index, output)."""
        if len(prompts) == 1:
            async for out in self._run_one(prompts[0], params, adapter_id, truncate):
                yield 0, out
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, ids: list[int]) -> None:
            try:
                async for out in self._run_one(ids, params, adapter_id, truncate):
                    await queue.put((i, out))
                await queue.put((i, None))
            except BaseException as exc:
                await queue.put((i, exc))
        tasks = [asyncio.create_task(pump(i, ids)) for i, ids in enumerate(prompts)]
        try:
            remaining = len(tasks)
            while remaining:
                i, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item
        finally:
            for task in tasks:
                task.cancel()

    async def complete(self, kind: str, prompts: list[list[int]], options: GenerationOptions, *, model: str,
                       adapter_id: str | None) -> dict:
        chat = kind == "chat"
        params = self._params(options, chat=chat)
        prompts = [self._truncate(p, options) for p in prompts]
        n = params.n
        choices = [r.ChoiceState(index=i) for i in range(len(prompts) * n)]
        acct = _Accounting()
        self.num_outstanding += 1
        try:
            async for i, out in self._merged(prompts, params, adapter_id, options.truncate):
                acct.see(i, out)
                for o in out.outputs:
                    c = choices[i * n + o.index]
                    c.text += o.text
                    c.token_ids += o.token_ids
                    if o.logprobs:
                        c.logprobs += o.logprobs
                    c.finish_reason = o.finish_reason or c.finish_reason
        finally:
            self.num_outstanding -= 1
        extra: dict = {}
        if options.perf_metrics:
            extra["perf_metrics"] = acct.perf_metrics()
        if options.return_token_ids:
            extra["return_token_ids"] = True
            extra["prompt_token_ids"] = prompts if len(prompts) > 1 else prompts[0]
        build = r.chat_completion if chat else r.text_completion
        return build(r.new_id("chatcmpl" if chat else "cmpl"), model, choices, tokenizer=self.tokenizer,
                     num_top=options.logprobs, usage_obj=acct.usage(), extra=extra)

    async def stream(self, kind: str, prompts: list[list[int]], options: GenerationOptions, *, model: str,
                     adapter_id: str | None) -> AsyncIterator[bytes]:
        """SSE bytes. Parameter errors raise before the first byte (so they become a 400)."""
        chat = kind == "chat"
        params = self._params(options, chat=chat)
        prompts = [self._truncate(p, options) for p in prompts]
        return self._stream(chat, prompts, params, options, model, adapter_id)

    async def _stream(self, chat, prompts, params, options, model, adapter_id) -> AsyncIterator[bytes]:
        request_id, created, n = r.new_id("chatcmpl" if chat else "cmpl"), int(time.time()), params.n
        started: set[int] = set()
        offsets: dict[int, int] = {}
        acct = _Accounting()
        self.num_outstanding += 1
        try:
            async for i, out in self._merged(prompts, params, adapter_id, options.truncate):
                acct.see(i, out)
                for o in out.outputs:
                    index = i * n + o.index
                    if chat and index not in started:
                        started.add(index)
                        yield sse(r.chat_chunk(request_id, model, created, index, {"role": "assistant", "content": ""}))
                    logprobs = None
                    if options.logprobs is not None and o.logprobs:
                        if chat:
                            logprobs = r.chat_logprobs(self.tokenizer, o.logprobs, options.logprobs)
                        else:
                            logprobs = r.completion_logprobs(self.tokenizer, o.logprobs, options.logprobs,
                                                             offsets.get(index, 0))
                            offsets[index] = offsets.get(index, 0) + len(o.text)
                    if o.text or logprobs or o.finish_reason:
                        if chat:
                            delta = {"content": o.text} if o.text else {}
                            chunk = r.chat_chunk(request_id, model, created, index, delta,
                                                 finish_reason=o.finish_reason, logprobs=logprobs)
                        else:
                            chunk = r.completion_chunk(request_id, model, created, index, o.text,
                                                       finish_reason=o.finish_reason, logprobs=logprobs)
                        if options.return_token_ids:
                            chunk["choices"][0]["token_ids"] = o.token_ids
                        yield sse(chunk)
            if options.include_usage or options.perf_metrics:
                obj = "chat.completion.chunk" if chat else "text_completion"
                chunk = r.usage_chunk(request_id, model, created, obj, acct.usage())
                if options.perf_metrics:
                    chunk["perf_metrics"] = acct.perf_metrics()
                yield sse(chunk)
        except FireplaceError as exc:  # after the first byte an error can only be an event
            yield sse(openai_error_body(exc.http_status, exc.message, param=exc.param))
        finally:
            self.num_outstanding -= 1
        yield DONE
