"""Forward an OpenAI request to the chosen replica and its answer back, streaming or not.

The body goes on as the client sent it (the replica parses and validates it, and echoes the
caller's `model` string). A client that disconnects cancels the upstream request, so the
replica sees its own client go away and aborts the generation (KV blocks freed).
"""
from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from fireplace.errors import Unavailable
from fireplace.gateway.replica_pool import ReplicaPool, ReplicaView
from fireplace.serving.disconnect import until_disconnect
from fireplace.serving.replica_headers import ADAPTER_HEADER, SECRET_HEADER

TIMEOUT = httpx.Timeout(connect=2.0, read=600.0, write=30.0, pool=30.0)
PASS_HEADERS = ("content-type", "retry-after")


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
                      *, stream: bool) -> Response:
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

            async def relay():
                try:
                    async for chunk in resp.aiter_raw():
                        yield chunk
                finally:
                    await resp.aclose()
                    release()
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

