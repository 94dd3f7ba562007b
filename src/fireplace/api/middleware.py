"""ASGI middleware (pure ASGI, no BaseHTTPMiddleware overhead on the hot path).

RequestContext: gives every response an `x-request-id` (the client's, if sane, else new)
and refuses JSON bodies over the limit by Content-Length before any handler reads them
(upload endpoints stream and enforce their own, larger limits).
"""
from __future__ import annotations

import json
import re
import uuid

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
UPLOAD_MARKERS = (":upload", "/uploads/")


class RequestContext:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

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
        scope.setdefault("state", {})["request_id"] = request_id
        rid_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [rid_header]
            await send(message)

        path = scope.get("path", "")
        if (content_length is not None and content_length > self.max_body_bytes
                and not any(m in path for m in UPLOAD_MARKERS)):
            body = json.dumps({"code": 3, "message": f"request body larger than {self.max_body_bytes} bytes",
                               "details": []}).encode()
            await send_with_id({"type": "http.response.start", "status": 413,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"x-should-retry", b"false")]})
            await send_with_id({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_id)
