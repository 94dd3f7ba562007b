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
      Internal            13  -> 500 (not retryable)
      Unimplemented       12  -> 501
      Unavailable         14  -> 503
"""
from __future__ import annotations


class FireplaceError(Exception):
    grpc_code: int = 2  # UNKNOWN
    http_status: int = 500
    retryable: bool = False

    def __init__(self, message: str, *, details: list | None = None, headers: dict | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param  # the request field at fault (the OpenAI error shape's `param`)
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
    """A bug or broken invariant: retrying does not help (transient trouble is Unavailable)."""
    grpc_code, http_status = 13, 500


class Unimplemented(FireplaceError):
    """A Fireworks API resource or field that Fireplace does not serve."""
    grpc_code, http_status = 12, 501


class Unavailable(FireplaceError):
    grpc_code, http_status, retryable = 14, 503, True


def not_found(kind: str, name: str) -> NotFound:
    """The one message for a missing resource (also used for another account's private one)."""
    return NotFound(f"{kind} {name!r} not found")


# SQLSTATE classes (PostgreSQL) and message prefixes (SQLite) of integrity violations.
_UNIQUE = ("23505", "UNIQUE constraint failed")
_FOREIGN_KEY = ("23503", "FOREIGN KEY constraint failed")


def integrity_violation(exc: Exception, what: str) -> FireplaceError:
    """A database integrity error (sqlalchemy.exc.IntegrityError) mapped by its cause:
    a unique or primary-key clash -> 409 ALREADY_EXISTS naming `what`; a foreign key ->
    400 FAILED_PRECONDITION (what it refers to is gone); anything else (NOT NULL, CHECK)
    -> 400 INVALID_ARGUMENT."""
    orig = getattr(exc, "orig", exc)
    state = str(getattr(orig, "sqlstate", "") or "")
    text = str(orig)
    if state == _UNIQUE[0] or _UNIQUE[1] in text:
        return AlreadyExists(f"{what} already exists")
    if state == _FOREIGN_KEY[0] or _FOREIGN_KEY[1] in text:
        return FailedPrecondition(f"{what} refers to a resource that does not exist (any more)")
    return InvalidArgument(f"{what}: the request violates a constraint of the data")
