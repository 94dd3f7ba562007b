"""AsyncEngine: the asyncio front of LLMEngine.

The engine runs its steps in one background thread (the forward pass releases the GIL in
torch ops). Requests and aborts reach it through a command queue applied between steps, so
the engine itself is only ever touched by that thread. Each request gets an asyncio.Queue of
incremental RequestOutputs; a consumer that stops iterating (client disconnect, a cancelled
task, even one cancelled while its request was still being admitted) aborts its request,
freeing its KV blocks at the next step boundary.

    async for out in engine.generate(prompt, params, adapter_id=...):
        ...  # out.outputs[i].text is the new text of completion i

Failure contract: when the engine thread ends, by a crash or by shutdown(), every open stream
raises EngineDeadError (its __cause__ is the crash), every pending generate admission and
call() future is settled with it, and so is every later one; `error` holds the crash (or the
EngineDeadError of a shutdown). Nothing waits forever.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fireplace.engine.errors import EngineDeadError
from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.outputs import RequestOutput
from fireplace.engine.sampling_params import SamplingParams

_log = logging.getLogger(__name__)
_ids = itertools.count()


@dataclass
class _Add:
    request_id: str
    prompt: Any
    params: SamplingParams
    kwargs: dict  # adapter_id, truncate_prompt, deadline, add_special_tokens
    loop: asyncio.AbstractEventLoop
    sink: asyncio.Queue
    ready: asyncio.Future  # settled once the engine accepted (None) or refused (the error) it
    owner: object = field(default_factory=object)  # this admission, so a late abort hits only it


@dataclass
class _Abort:
    request_id: str
    owner: object | None = None  # None: whatever request has the id (the public abort())


@dataclass
class _Call:
    fn: Any
    loop: asyncio.AbstractEventLoop
    fut: asyncio.Future


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._owners: dict[str, object] = {}  # request id -> the _Add.owner that admitted it
        self._wake = threading.Event()
        self._stopped = False
        self._lock = threading.Lock()  # orders submits against the thread's end
        self._dead: EngineDeadError | None = None
        self._running_cmd = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fireplace-engine", daemon=True)
        self._thread.start()

    # -- called from asyncio -------------------------------------------------------------------
    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                       request_id: str | None = None, adapter_id: str | None = None,
                       truncate_prompt: bool = False, deadline: float | None = None,
                       add_special_tokens: bool = True) -> AsyncIterator[RequestOutput]:
        """Stream a request's incremental outputs. Admission errors (InvalidRequestError,
        EngineOverloadedError, ...) raise from the first iteration; see LLMEngine.add_request."""
        self._raise_if_dead()
        request_id = request_id or f"areq-{next(_ids)}"
        loop = asyncio.get_running_loop()
        cmd = _Add(request_id, prompt, params or SamplingParams(),
                   dict(adapter_id=adapter_id, truncate_prompt=truncate_prompt, deadline=deadline,
                        add_special_tokens=add_special_tokens),
                   loop, asyncio.Queue(), loop.create_future())
        finished = False
        self._submit(cmd)
        try:
            await cmd.ready  # raises the engine's error for bad input
            while True:
                item = await cmd.sink.get()
                if isinstance(item, BaseException):
                    finished = True  # the engine is gone: nothing to abort
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            refused = cmd.ready.done() and not cmd.ready.cancelled() and cmd.ready.exception() is not None
            if not finished and not refused:  # includes a cancellation while being admitted
                self._submit(_Abort(request_id, cmd.owner))

    async def call(self, fn):
        """Run fn(engine) on the engine thread between steps (adapter load/unload, stats)."""
        self._raise_if_dead()
        loop = asyncio.get_running_loop()
        cmd = _Call(fn, loop, loop.create_future())
        self._submit(cmd)
        return await cmd.fut

    async def load_adapter(self, adapter_id: str, source) -> str:
        """LLMEngine.load_adapter with the reading and checking done in a worker thread, so a
        download or a large file never stalls the engine's steps; only the install (a dict
        update) runs on the engine thread. Returns the version; raises AdapterLoadError."""
        self._raise_if_dead()
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(None, self.engine.prepare_adapter, adapter_id, source)
        except Exception as exc:
            await self.call(lambda engine: engine.note_adapter_load_failure(adapter_id, exc))
            raise
        return await self.call(lambda engine: engine.load_adapter(adapter_id, prepared))

    def abort(self, request_id: str) -> None:
        self._submit(_Abort(request_id))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop after the current step; every open stream and pending call then raises EngineDeadError."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=timeout)

    @property
    def is_alive(self) -> bool:
        return self._dead is None

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise self._dead_error()

    def _dead_error(self) -> EngineDeadError:
        """A fresh error per receiver (one exception object must not be raised in many tasks)."""
        error = EngineDeadError(str(self._dead))
        error.__cause__ = self._dead.__cause__
        return error

    # -- any thread ------------------------------------------------------------------------------
    def _submit(self, command) -> None:
        with self._lock:
            if self._dead is None:
                self._commands.put(command)
                self._wake.set()
                return
        self._refuse(command)

    def _refuse(self, command) -> None:
        """Settle a command the engine will never run."""
        if isinstance(command, _Add):
            _deliver(command.loop, _settle, command.ready, None, self._dead_error())
        elif isinstance(command, _Call):
            _deliver(command.loop, _settle, command.fut, None, self._dead_error())

    # -- the engine thread ------------------------------------------------------------------------
    def _apply_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            self._running_cmd = cmd
            if isinstance(cmd, _Add):
                try:
                    self.engine.add_request(cmd.request_id, cmd.prompt, cmd.params, **cmd.kwargs)
                except Exception as exc:  # bad input, overload: the caller's await raises it
                    _deliver(cmd.loop, _settle, cmd.ready, None, exc)
                else:
                    self._sinks[cmd.request_id] = (cmd.loop, cmd.sink)
                    self._owners[cmd.request_id] = cmd.owner
                    if not _deliver(cmd.loop, _settle, cmd.ready, None, None):
                        self._abort(cmd.request_id)  # its event loop is gone: nobody reads it
            elif isinstance(cmd, _Abort):
                if cmd.owner is None or self._owners.get(cmd.request_id) is cmd.owner:
                    self._abort(cmd.request_id)
            elif isinstance(cmd, _Call):
                try:
                    result, error = cmd.fn(self.engine), None
                except Exception as exc:
                    result, error = None, exc
                _deliver(cmd.loop, _settle, cmd.fut, result, error)
            self._running_cmd = None

    def _abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self._sinks.pop(request_id, None)
        self._owners.pop(request_id, None)

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
                    if out.finished:
                        self._sinks.pop(out.request_id, None)
                        self._owners.pop(out.request_id, None)
                    loop, sink = target
                    if not _deliver(loop, sink.put_nowait, out) and not out.finished:
                        self._abort(out.request_id)  # the consumer's loop closed
        except BaseException as exc:  # a crashed engine fails every waiting caller loudly
            _log.exception("the engine thread failed; every pending request is failed with it")
            self.error = exc
            dead = EngineDeadError(f"the engine failed: {exc!r}")
            dead.__cause__ = exc
            self._end(dead)
        else:
            dead = EngineDeadError("the engine was shut down")
            self.error = dead
            self._end(dead)

    def _end(self, dead: EngineDeadError) -> None:
        with self._lock:
            self._dead = dead
        # after this point _submit refuses by itself; settle what was queued or running
        pending = [self._running_cmd] if self._running_cmd is not None else []
        while True:
            try:
                pending.append(self._commands.get_nowait())
            except queue.Empty:
                break
        for cmd in pending:
            self._refuse(cmd)
        for loop, sink in self._sinks.values():
            _deliver(loop, sink.put_nowait, self._dead_error())
        self._sinks.clear()
        self._owners.clear()


def _deliver(loop: asyncio.AbstractEventLoop, fn, *args) -> bool:
    """Schedule fn(*args) on the loop; False when the loop is closed (its caller is gone)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
        return True
    except RuntimeError:
        return False


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
