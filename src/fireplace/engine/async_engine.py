"""AsyncEngine: the asyncio front of LLMEngine.

The engine runs its steps in one background thread (the forward pass releases the GIL in
torch ops). Requests and aborts reach it through a command queue applied between steps, so
the engine itself is only ever touched by that thread. Each request gets an asyncio.Queue of
incremental RequestOutputs; a consumer that stops iterating (client disconnect) aborts its
request, freeing its KV blocks at the next step boundary.

    async for out in engine.generate(prompt, params, adapter_id=...):
        ...  # out.outputs[i].text is the new text of completion i
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.outputs import RequestOutput
from fireplace.engine.sampling_params import SamplingParams

_ids = itertools.count()


@dataclass
class _Add:
    request_id: str
    prompt: Any
    params: SamplingParams
    adapter_id: str | None
    truncate_prompt: bool
    sink: Any  # (loop, asyncio.Queue)


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    fn: Any
    done: Any  # concurrent future-like: (loop, asyncio.Future)


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stopped = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fireplace-engine", daemon=True)
        self._thread.start()

    # -- called from asyncio -------------------------------------------------------------------
    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                       request_id: str | None = None, adapter_id: str | None = None,
                       truncate_prompt: bool = False) -> AsyncIterator[RequestOutput]:
        if self.error is not None:
            raise RuntimeError(f"engine stopped: {self.error!r}")
        request_id = request_id or f"areq-{next(_ids)}"
        loop = asyncio.get_running_loop()
        sink: asyncio.Queue = asyncio.Queue()
        ready = loop.create_future()
        self._submit(_Add(request_id, prompt, params or SamplingParams(), adapter_id, truncate_prompt,
                          (loop, sink, ready)))
        await ready  # raises the engine's InvalidRequestError for bad input
        finished = False
        try:
            while True:
                item = await sink.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self._submit(_Abort(request_id))

    async def call(self, fn):
        """Run fn(engine) on the engine thread between steps (adapter load/unload, stats)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._submit(_Call(fn, (loop, fut)))
        return await fut

    def abort(self, request_id: str) -> None:
        self._submit(_Abort(request_id))

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)

    # -- the engine thread ------------------------------------------------------------------------
    def _submit(self, command) -> None:
        self._commands.put(command)
        self._wake.set()

    def _apply_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(cmd, _Add):
                loop, sink, ready = cmd.sink
                try:
                    self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params, adapter_id=cmd.adapter_id,
                                            truncate_prompt=cmd.truncate_prompt)
                except Exception as exc:  # bad input: the caller's await raises it
                    loop.call_soon_threadsafe(_settle, ready, None, exc)
                    continue
                self._sinks[cmd.request_id] = (loop, sink)
                loop.call_soon_threadsafe(_settle, ready, None, None)
            elif isinstance(cmd, _Abort):
                self.engine.abort(cmd.request_id)
                self._sinks.pop(cmd.request_id, None)
            elif isinstance(cmd, _Call):
                loop, fut = cmd.done
                try:
                    result, error = cmd.fn(self.engine), None
                except Exception as exc:
                    result, error = None, exc
                loop.call_soon_threadsafe(_settle, fut, result, error)

    def _run(self) -> None:
        try:
            while not self._stopped:
                self._apply_commands()
                if not self.engine.has_unfinished_requests():
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                for out in self.engine.step():
                    target = self._sinks.get(out.request_id)
                    if target is None:
                        continue
                    loop, sink = target
                    loop.call_soon_threadsafe(sink.put_nowait, out)
                    if out.finished:
                        self._sinks.pop(out.request_id, None)
        except BaseException as exc:  # a crashed engine fails every waiting request loudly
            self.error = exc
            for loop, sink in self._sinks.values():
                loop.call_soon_threadsafe(sink.put_nowait, RuntimeError(f"engine failed: {exc!r}"))
            self._sinks.clear()
            raise


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
