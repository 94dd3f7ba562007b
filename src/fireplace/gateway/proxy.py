"""Forward an OpenAI request to the chosen replica and its answer back, streaming or not.

The body goes on as the client sent it (the replica parses and validates it, and echoes the
caller's `model` string), except that a stream always asks for its usage chunk
(gateway/usage_capture.py). A client that disconnects cancels the upstream request, so the
replica sees its own client go away and aborts the generation (KV blocks freed). A 200 answer's
reported usage goes to `on_usage` (the meter); failed answers report none.
"""
from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from fireplace.errors import Unavailable
from fireplace.gateway.replica_pool import ReplicaPool, ReplicaView
from fireplace.gateway.usage_capture import UsageEvents
from fireplace.serving.disconnect import until_disconnect
from fireplace.serving.replica_headers import ADAPTER_HEADER, SECRET_HEADER

TIMEOUT = httpx.Timeout(connect=2.0, read=600.0, write=30.0, pool=30.0)
PASS_HEADERS = ("content-type", "retry-after")
OnUsage = Callable[[dict], None]


def _reported_usage(content: bytes) -> dict | None:
    try:
        answer = json.loads(content)
    except (ValueError, RecursionError):
        return None
    usage = answer.get("usage") if isinstance(answer, dict) else None
    return usage if isinstance(usage, dict) else None


class Proxy:
    def __init__(self, pool: ReplicaPool):
        self.pool = pool
        self.http = httpx.AsyncClient(timeout=TIMEOUT, limits=httpx.Limits(max_connections=512,
                                                                           max_keepalive_connections=64))

    def _upstream(self, replica: ReplicaView, path: str, body: bytes, adapter: str | None) -> httpx.Request:
        headers = {SECRET_HEADER: replica.secret, "content-type": "application/json"}
        if adapter:
            headers[ADAPTER_HEADER] = adapter
        return self.http.build_request("POST", f"{replica.address}{path}", content=body, headers=headers)

    async def forward(self, request: Request, replica: ReplicaView, path: str, body: bytes, adapter: str | None,
                      *, stream: bool, on_usage: OnUsage | None = None, strip_usage: bool = False) -> Response:
        self.pool.acquire(replica)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.pool.release(replica)
        try:
            upstream = self._upstream(replica, path, body, adapter)
            if not stream:
                try:
                    resp = await until_disconnect(request, self.http.send(upstream))
                except httpx.TransportError as exc:
                    self.pool.invalidate()
                    raise Unavailable(f"the replica did not answer ({type(exc).__name__}); retry",
                                      headers={"Retry-After": "1"}) from exc
                if resp.status_code == 200 and on_usage is not None:
                    usage = _reported_usage(resp.content)
                    if usage is not None:
                        on_usage(usage)
                return Response(resp.content, status_code=resp.status_code,
                                headers={k: v for k, v in resp.headers.items() if k in PASS_HEADERS})
            try:
                resp = await self.http.send(upstream, stream=True)
            except httpx.TransportError as exc:
                self.pool.invalidate()
                raise Unavailable(f"the replica did not answer ({type(exc).__name__}); retry",
                                  headers={"Retry-After": "1"}) from exc
            if resp.status_code != 200:
                content = await resp.aread()
                await resp.aclose()
                return Response(content, status_code=resp.status_code,
                                headers={k: v for k, v in resp.headers.items() if k in PASS_HEADERS})

            events = UsageEvents(strip_usage)

            async def relay():
                try:
                    async for chunk in resp.aiter_raw():
                        out = events.feed(chunk)
                        if out:
                            yield out
                    rest = events.rest()
                    if rest:
                        yield rest
                finally:
                    await resp.aclose()
                    release()
                    if events.usage is not None and on_usage is not None:
                        on_usage(events.usage)
            return StreamingResponse(relay(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        except BaseException:
            release()
            raise
        finally:
            if not stream:
                release()

    async def close(self) -> None:
        await self.http.aclose()

