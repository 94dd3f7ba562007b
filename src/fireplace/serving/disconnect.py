"""Run a coroutine for an HTTP request, cancelling it when the client goes away (so the
engine aborts the generation and frees its KV blocks)."""
from __future__ import annotations

import asyncio

from starlette.requests import Request

POLL_S = 0.2


async def until_disconnect(request: Request, coro):
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise asyncio.CancelledError("client disconnected")
    finally:
        if not task.done():
            task.cancel()
