"""Errors the engine raises; the API edge maps them to HTTP once.

    EngineError                      anything the engine refuses or cannot do
    +-- InvalidRequestError          a request's parameters are wrong (HTTP 400); `param` names the field
        +-- ContextLengthExceededError   prompt (+ max_tokens) does not fit the model's context

Other engine packages (e.g. LoRA adapters) derive their own errors from EngineError.
"""
from __future__ import annotations

__all__ = ["ContextLengthExceededError", "EngineError", "InvalidRequestError"]


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
