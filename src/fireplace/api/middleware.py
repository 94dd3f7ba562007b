"""ASGI middleware (pure ASGI, no BaseHTTPMiddleware overhead on the hot path).

RequestContext, in this order, before any handler runs:
  1. gives every response an `x-request-id` (the client's, if sane, else a new one);
  2. on control-plane paths (/v1/accounts...), checks the API key from the headers alone
     (`authenticate_headers`), so nothing of the body is read for an unknown caller; the
     Principal rides along in scope["state"]["principal"] for the route's dependency;
  3. reads the body while counting its bytes (Content-Length or chunked alike) and answers
     413 as soon as it passes `max_body_bytes`; then replays it to the app.
Only the exact upload routes (UPLOAD_ROUTES) skip step 3: they stream into the blob store
under their own, larger limits.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool

from fireplace.errors import FireplaceError

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SEG = r"[^/]+"
_NAME = rf"(?:{_SEG}|accounts/{_SEG}/datasets/{_SEG})"   # an ID or a full name (decoded %2F)
# (method, path regex) of the routes that stream large bodies and enforce their own limits.
UPLOAD_ROUTES = (
    ("PUT", re.compile(rf"^/v1/uploads/models/{_SEG}/{_SEG}/{_SEG}$")),
    ("PUT", re.compile(rf"^/v1/uploads/datasets/{_SEG}/{_SEG}/{_SEG}$")),
    ("POST", re.compile(rf"^/v1/accounts/{_SEG}/datasets/{_NAME}:upload$")),
)
CONTROL_PREFIX = "/v1/accounts"


def is_upload_route(method: str, path: str) -> bool:
    return any(method == m and rx.fullmatch(path) for m, rx in UPLOAD_ROUTES)


def needs_key(method: str, path: str) -> bool:
    """Control-plane paths need an API key; POST /v1/accounts may be anonymous (open sign-up)."""
    if not (path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")):
        return False
    return not (path == CONTROL_PREFIX and method == "POST")


class BodyTooLarge(Exception):
    pass


class RequestContext:
    """authenticate_headers(headers: dict[str, str]) -> Principal | None (None: no key sent);
    raises FireplaceError (401) for a bad key. Blocking; run in a worker thread."""

    def __init__(self, app, max_body_bytes: int,
                 authenticate_headers: Callable[[dict[str, str]], object] | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.authenticate_headers = authenticate_headers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = None
        content_length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _SAFE_ID.fullmatch(candidate) else None
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
        request_id = request_id or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        rid_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [rid_header]
            await send(message)

        async def refuse(http_status: int, grpc_code: int, message: str, headers: dict | None = None):
            from fireplace.api.errors import error_response
            await error_response(http_status, grpc_code, message, headers=headers)(scope, receive, send_with_id)

        method, path = scope.get("method", "GET"), scope.get("path", "")
        if self.authenticate_headers is not None and (needs_key(method, path) or path == CONTROL_PREFIX):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                       if k in (b"authorization", b"x-api-key")}
            try:
                principal = await run_in_threadpool(self.authenticate_headers, headers)
            except FireplaceError as exc:
                return await refuse(exc.http_status, exc.grpc_code, exc.message, exc.headers)
            if principal is None and needs_key(method, path):
                return await refuse(401, 16, "missing or malformed API key: send 'Authorization: Bearer <key>'")
            state["principal"] = principal
        if is_upload_route(method, path):
            return await self.app(scope, receive, send_with_id)
        limit = self.max_body_bytes
        too_large = f"request body larger than {limit} bytes"
        if content_length is not None and content_length > limit:
            return await refuse(413, 3, too_large)
        try:
            body_receive = await _buffered(receive, limit)
        except BodyTooLarge:
            return await refuse(413, 3, too_large)
        await self.app(scope, body_receive, send_with_id)


async def _buffered(receive: Callable[[], Awaitable[dict]], limit: int) -> Callable[[], Awaitable[dict]]:
    """Read the whole request body (at most `limit` bytes, counted as they arrive) and return a
    receive() that replays it once, then passes through (so disconnects still arrive)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":   # http.disconnect: let the app see it
            first = message
            break
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise BodyTooLarge
        chunks.append(body)
        if not message.get("more_body", False):
            first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            break
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return first
        return await receive()
    return replay
