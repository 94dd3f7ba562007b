"""Exit status per class of failure, so scripts can tell them apart.

    0  success
    1  any other failure
    2  usage: unknown command or flag, bad flag value (click's own code)
    3  invalid request: the server refused the input (400: INVALID_ARGUMENT, FAILED_PRECONDITION,
       OUT_OF_RANGE, 413), e.g. a dataset whose lines do not validate
    4  not found (404; also another account's private resource)
    5  permission: no or invalid API key (401), role too weak (403)
    6  conflict: already exists, or a concurrent change won (409)
    7  quota or rate limit exhausted (429, after the retries)
    8  server error (5xx, after the retries)
    9  the server could not be reached
   10  a --wait ran past its --wait-timeout, or the resource ended in a failed state
  130  interrupted (Ctrl-C)
"""
from __future__ import annotations

from fireplace import errors
from fireplace.client import ConnectionFailed

OK, FAILURE, USAGE, INVALID, NOT_FOUND, PERMISSION, CONFLICT, EXHAUSTED, SERVER, UNREACHABLE, WAIT_FAILED = range(11)
INTERRUPTED = 130

# Most specific first.
BY_ERROR: tuple[tuple[type[errors.FireplaceError], int], ...] = (
    (ConnectionFailed, UNREACHABLE),
    (errors.InvalidArgument, INVALID), (errors.FailedPrecondition, INVALID), (errors.OutOfRange, INVALID),
    (errors.PayloadTooLarge, INVALID),
    (errors.NotFound, NOT_FOUND),
    (errors.Unauthenticated, PERMISSION), (errors.PermissionDenied, PERMISSION),
    (errors.AlreadyExists, CONFLICT), (errors.Aborted, CONFLICT),
    (errors.ResourceExhausted, EXHAUSTED),
    (errors.Internal, SERVER), (errors.Unavailable, SERVER),
)


def exit_code_for(exc: errors.FireplaceError) -> int:
    for cls, code in BY_ERROR:
        if isinstance(exc, cls):
            return code
    return SERVER if getattr(exc, "http_status", 0) >= 500 else FAILURE


class WaitFailed(Exception):
    """A --wait that timed out, or whose resource reached a failed state."""
