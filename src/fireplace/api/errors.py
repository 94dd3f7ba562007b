"""The one place where errors become HTTP responses.

Control plane body (grpc-gateway): {"code": <gRPC int>, "message": str, "details": []}.
Non-retryable errors (every 4xx but ABORTED and RESOURCE_EXHAUSTED, and every 5xx but
UNAVAILABLE) carry `x-should-retry: false` on both planes, so the SDKs (which retry
408/409/429/5xx by default) retry only what may succeed. Integrity errors a service did not catch are mapped
by cause (unique -> 409, foreign key -> 400), a lost database connection is 503.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sqlalchemy.exc import IntegrityError, OperationalError

from fireplace.serving.openai_errors import openai_error_response
from fireplace.errors import FireplaceError, integrity_violation

log = logging.getLogger("fireplace.api")

HTTP_TO_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 6, 411: 3, 413: 3, 415: 3, 422: 3, 429: 8,
                500: 13, 501: 12, 503: 14, 504: 4}


def _retry_headers(http_status: int, retryable: bool, headers: dict | None = None) -> dict:
    """The response headers plus `x-should-retry: false` on an error retrying cannot fix (both
    official SDKs retry 408/409/429/5xx unless told not to)."""
    hdrs = dict(headers or {})
    if http_status >= 400 and not retryable:
        hdrs["x-should-retry"] = "false"
    return hdrs


def error_response(http_status: int, grpc_code: int, message: str, details: list | None = None,
                   retryable: bool = False, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"code": grpc_code, "message": message, "details": details or []},
                        status_code=http_status, headers=_retry_headers(http_status, retryable, headers))


MAX_MESSAGE_CHARS = 1024


def _short(value: object, limit: int = 64) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe_validation(exc: RequestValidationError) -> str:
    """'invalid request: dataset.exampleCount: ...; ...' naming at most 10 fields, bounded."""
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(_short(p) for p in err.get("loc", ()) if p not in ("body",))
        if err.get("type") == "string_pattern_mismatch":   # name the value: the pattern alone is cryptic
            pattern = (err.get("ctx") or {}).get("pattern", "")
            parts.append(f"{loc or 'body'}: {_short(err.get('input'), 80)!r} does not match {_short(pattern, 200)}")
            continue
        parts.append(f"{loc or 'body'}: {_short(err.get('msg', 'invalid'), 200)}")
    return _short("invalid request: " + "; ".join(parts), MAX_MESSAGE_CHARS)


def _is_inference(request: Request) -> bool:
    from fireplace.gateway.router import is_inference_path
    return is_inference_path(request.url.path)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (a path may be served by several routes)."""
    from starlette.routing import Match
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "__none__"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FireplaceError)
    async def _fireplace(_req: Request, exc: FireplaceError):
        if _is_inference(_req):  # the data plane answers in the OpenAI error shape
            return openai_error_response(exc.http_status, _short(exc.message, MAX_MESSAGE_CHARS), param=exc.param,
                                         headers=_retry_headers(exc.http_status, exc.retryable, exc.headers))
        return error_response(exc.http_status, exc.grpc_code, _short(exc.message, MAX_MESSAGE_CHARS), exc.details,
                              exc.retryable, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):
        return error_response(400, 3, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such path or resource"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:   # one path may be served by several routes: name all their methods
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["Allow"] = ", ".join(_allowed_methods(_req))
        if _is_inference(_req):
            return openai_error_response(exc.status_code, message, headers=headers)
        return error_response(exc.status_code, HTTP_TO_GRPC.get(exc.status_code, 2), message, headers=headers)

    @app.exception_handler(IntegrityError)
    async def _integrity(_req: Request, exc: IntegrityError):
        err = integrity_violation(exc, "the resource")
        return error_response(err.http_status, err.grpc_code, err.message, retryable=err.retryable)

    @app.exception_handler(OperationalError)
    async def _database_down(req: Request, exc: OperationalError):
        log.warning("database unavailable on %s %s: %s", req.method, req.url.path, type(exc.orig).__name__)
        return error_response(503, 14, "the database is unavailable or busy; retry", retryable=True)

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception):
        log.exception("unhandled error on %s %s", req.method, req.url.path)
        if _is_inference(req):
            return openai_error_response(500, "internal error", headers=_retry_headers(500, False))
        return error_response(500, 13, "internal error", retryable=False)
