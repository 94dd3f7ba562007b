"""API error bodies -> the one error hierarchy (fireplace.errors), raised on the client side.

The control plane answers errors as `{"code": <gRPC int>, "message": str, "details": [...]}`;
the data plane (OpenAI shape) as `{"error": {"message", "type", "param", "code"}}`. Either
becomes the fireplace.errors class of its gRPC code (or, failing that, of its HTTP status), so
`except fireplace.errors.NotFound` works the same in a service and in a client. The instance
also carries what the wire said: `http_status`, `grpc_code`, `details`, `request_id`, `body`.
"""
from __future__ import annotations

from typing import Any

import httpx

from fireplace import errors

BY_GRPC_CODE: dict[int, type[errors.FireplaceError]] = {
    3: errors.InvalidArgument, 9: errors.FailedPrecondition, 11: errors.OutOfRange,
    16: errors.Unauthenticated, 7: errors.PermissionDenied, 5: errors.NotFound,
    6: errors.AlreadyExists, 10: errors.Aborted, 8: errors.ResourceExhausted,
    13: errors.Internal, 14: errors.Unavailable,
}
BY_HTTP_STATUS: dict[int, type[errors.FireplaceError]] = {
    400: errors.InvalidArgument, 401: errors.Unauthenticated, 403: errors.PermissionDenied,
    404: errors.NotFound, 409: errors.AlreadyExists, 413: errors.PayloadTooLarge,
    422: errors.InvalidArgument, 429: errors.ResourceExhausted, 500: errors.Internal,
    503: errors.Unavailable,
}


class ConnectionFailed(errors.Unavailable):
    """The server could not be reached at all (refused, DNS, timeout): nothing was answered."""


def _error_class(http_status: int, grpc_code: int | None) -> type[errors.FireplaceError]:
    if http_status == 413:
        return errors.PayloadTooLarge
    if grpc_code in BY_GRPC_CODE:
        return BY_GRPC_CODE[grpc_code]
    if http_status in BY_HTTP_STATUS:
        return BY_HTTP_STATUS[http_status]
    return errors.Internal if http_status >= 500 else errors.FireplaceError


def error_from_response(response: httpx.Response) -> errors.FireplaceError:
    """The typed error for a non-2xx response (its body already read)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = {"message": response.text[:1000] or response.reason_phrase}
    if not isinstance(body, dict):
        body = {"message": str(body)[:1000]}
    grpc_code = body.get("code") if isinstance(body.get("code"), int) else None
    message = body.get("message")
    details = body.get("details") if isinstance(body.get("details"), list) else []
    inner = body.get("error")
    if isinstance(inner, dict):  # OpenAI shape
        message = inner.get("message", message)
        if inner.get("param"):
            details = [{"param": inner["param"]}, *details]
    if not isinstance(message, str) or not message:
        message = f"HTTP {response.status_code} {response.reason_phrase}"
    exc = _error_class(response.status_code, grpc_code)(message, details=details)
    exc.http_status = response.status_code
    exc.grpc_code = grpc_code if grpc_code is not None else exc.grpc_code
    exc.request_id = response.headers.get("x-request-id", "")
    exc.body = body
    return exc
