"""The one error hierarchy of the control and data planes.

Services raise these; `fireplace.api.errors` maps them to HTTP once. Each carries a gRPC
status code (Fireworks' error body is grpc-gateway's: {"code": int, "message": str, "details": []}).

    FireplaceError
      InvalidArgument      3  -> 400
      FailedPrecondition   9  -> 400
      OutOfRange          11  -> 400
      Unauthenticated     16  -> 401
      PermissionDenied     7  -> 403
      NotFound             5  -> 404
      AlreadyExists        6  -> 409
      Aborted             10  -> 409
      PayloadTooLarge      3  -> 413
      ResourceExhausted    8  -> 429
      Internal            13  -> 500
      Unavailable         14  -> 503
"""
from __future__ import annotations


class FireplaceError(Exception):
    grpc_code: int = 2  # UNKNOWN
    http_status: int = 500
    retryable: bool = False

    def __init__(self, message: str, *, details: list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers or {}


class InvalidArgument(FireplaceError):
    grpc_code, http_status = 3, 400


class FailedPrecondition(FireplaceError):
    grpc_code, http_status = 9, 400


class OutOfRange(FireplaceError):
    grpc_code, http_status = 11, 400


class Unauthenticated(FireplaceError):
    grpc_code, http_status = 16, 401


class PermissionDenied(FireplaceError):
    grpc_code, http_status = 7, 403


class NotFound(FireplaceError):
    grpc_code, http_status = 5, 404


class AlreadyExists(FireplaceError):
    grpc_code, http_status = 6, 409


class Aborted(FireplaceError):
    """A concurrent change won (etag mismatch); the caller may retry."""
    grpc_code, http_status, retryable = 10, 409, True


class PayloadTooLarge(FireplaceError):
    grpc_code, http_status = 3, 413


class ResourceExhausted(FireplaceError):
    grpc_code, http_status, retryable = 8, 429, True


class Internal(FireplaceError):
    grpc_code, http_status, retryable = 13, 500, True


class Unavailable(FireplaceError):
    grpc_code, http_status, retryable = 14, 503, True


def not_found(kind: str, name: str) -> NotFound:
    """The one message for a missing resource (also used for another account's private one)."""
    return NotFound(f"{kind} {name!r} not found")
