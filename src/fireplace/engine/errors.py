"""Errors the engine raises; the API edge maps them to HTTP once.

    EngineError                      anything the engine refuses or cannot do
    +-- InvalidRequestError          a request's parameters are wrong (HTTP 400); `param` names the field
    |   +-- ContextLengthExceededError   prompt (+ max_tokens) does not fit the model's context
    |   +-- AdapterUnavailableError      the request names a LoRA adapter this engine cannot serve now
    |                                    (never loaded, unloaded, or its load failed: the message says)
    +-- EngineOverloadedError        the waiting queue is full (max_waiting_requests): retry later (429)
    +-- DeadlineExceededError        the request was still waiting when its deadline passed (504 / 503)
    +-- AdapterError                 a LoRA addon cannot be loaded or served (fireplace.engine.lora)
    |   +-- AdapterLoadError         load_adapter failed: unreadable, corrupt or incompatible files;
    |                                the engine and its other adapters keep running
    +-- EngineDeadError              the AsyncEngine's thread stopped (crash or shutdown): every
                                     pending and future call fails with it (503)

Errors that end one request while the engine runs reach the caller as a RequestOutput with
`error` (the message) and `exception` (one of these, typed) set.
"""
from __future__ import annotations

__all__ = ["AdapterError", "AdapterLoadError", "AdapterUnavailableError", "ContextLengthExceededError",
           "DeadlineExceededError", "EngineDeadError", "EngineError", "EngineOverloadedError",
           "InvalidRequestError"]


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequestError(EngineError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class ContextLengthExceededError(InvalidRequestError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param)


class AdapterUnavailableError(InvalidRequestError):
    """A request names an adapter that is not loaded here (param "model")."""

    def __init__(self, message: str, adapter_id: str):
        super().__init__(message, "model")
        self.adapter_id = adapter_id


class EngineOverloadedError(EngineError):
    """add_request refused: `num_waiting` requests already wait (the bound is `max_waiting_requests`)."""

    def __init__(self, message: str, *, num_waiting: int, max_waiting: int):
        super().__init__(message)
        self.message = message
        self.num_waiting = num_waiting
        self.max_waiting = max_waiting


class DeadlineExceededError(EngineError):
    """The request's deadline passed before it was admitted; nothing was computed for it."""

    def __init__(self, message: str, *, waited_s: float):
        super().__init__(message)
        self.message = message
        self.waited_s = waited_s


class AdapterError(EngineError):
    """A LoRA addon that cannot be loaded or served; the message says why and how to fix it."""


class AdapterLoadError(AdapterError):
    """load_adapter(adapter_id, source) failed; nothing changed (a previous version keeps serving)."""

    def __init__(self, message: str, adapter_id: str):
        super().__init__(message)
        self.message = message
        self.adapter_id = adapter_id


class EngineDeadError(EngineError):
    """The engine thread is gone; `__cause__` is the crash, None after a clean shutdown()."""
