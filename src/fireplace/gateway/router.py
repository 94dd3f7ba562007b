"""The OpenAI-compatible inference endpoints of the API server.

    POST /v1/chat/completions   POST /v1/completions   POST /v1/embeddings   GET /v1/models
    (the same under /inference/v1/...)

Every role's API key may call them; the caller's account decides which private models it
reaches (gateway.routing). Completed requests are metered per (caller's account, model,
UTC day) by gateway.metering. Errors use the OpenAI shape (api/errors.py renders them so for
these paths): 401 bad key, 404 unreachable model, 400 bad parameters, 503 + Retry-After while
no replica is ready.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, FastAPI, Request
from sqlalchemy.orm import Session

from fireplace.api.auth import CallerDep
from fireplace.api.deps import SessionDep
from fireplace.errors import InvalidArgument, Unavailable
from fireplace.gateway.metering import Meter
from fireplace.gateway.models_list import list_models
from fireplace.gateway.proxy import Proxy
from fireplace.gateway.replica_pool import ReplicaPool
from fireplace.gateway.routing import Route, resolve
from fireplace.gateway.usage_capture import ask_for_usage
from fireplace.serving.protocol import parse_json_object

INFERENCE_PREFIXES = ("/v1", "/inference/v1")
INFERENCE_PATHS = ("/chat/completions", "/completions", "/embeddings", "/models")
EMBEDDING_KIND = "EMBEDDING_MODEL"


def is_inference_path(path: str) -> bool:
    return any(path == p + suffix or (suffix == "/models" and path.startswith(p + "/models/"))
               for p in INFERENCE_PREFIXES for suffix in INFERENCE_PATHS)


class Gateway:
    def __init__(self, session_factory):
        self.pool = ReplicaPool(session_factory)
        self.proxy = Proxy(self.pool)
        self.meter = Meter(session_factory)

    async def close(self) -> None:
        await self.proxy.close()
        await asyncio.to_thread(self.meter.close)


def _body(raw: bytes) -> dict:
    body = parse_json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("model: is required (e.g. accounts/fireplace/models/smollm2-135m-instruct)",
                              param="model")
    return body


def _route(session: Session, caller, body: dict, *, embeddings: bool) -> Route:
    route = resolve(session, caller, body["model"])
    is_embedding = route.model_kind == EMBEDDING_KIND
    if embeddings != is_embedding:
        what = "an embedding model" if is_embedding else "a text generation model"
        raise InvalidArgument(f"model {body['model']!r} is {what}; use "
                              f"{'/v1/embeddings' if is_embedding else '/v1/chat/completions or /v1/completions'}",
                              param="model")
    return route


async def _forward(request: Request, session: Session, caller, path: str, *, embeddings: bool = False):
    raw = await request.body()
    body = _body(raw)
    route = _route(session, caller, body, embeddings=embeddings)
    session.close()  # nothing more to read: do not hold a DB connection while the model runs
    gateway: Gateway = request.app.state.gateway
    replica = gateway.pool.choose(route.deployment, route.adapter)
    if replica is None:
        what = f"addon {route.adapter!r} is still loading on" if route.adapter and gateway.pool.ready(
            route.deployment) else "no replica is ready yet for"
        raise Unavailable(f"{what} deployment {route.deployment!r}; retry shortly", headers={"Retry-After": "2"})
    stream, strip_usage = bool(body.get("stream")) and not embeddings, False
    if stream:
        raw, strip_usage = ask_for_usage(raw, body)
    account_id, model = caller.account_id, route.model

    def on_usage(usage: dict) -> None:
        gateway.meter.record(account_id, model, usage)
    return await gateway.proxy.forward(request, replica, path, raw, route.adapter, stream=stream,
                                       on_usage=on_usage, strip_usage=strip_usage)


def _router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["inference"])

    @router.post("/chat/completions", summary="Create a chat completion (OpenAI-compatible)")
    async def chat_completions(request: Request, caller: CallerDep, session: SessionDep):
        return await _forward(request, session, caller, "/v1/chat/completions")

    @router.post("/completions", summary="Create a completion (OpenAI-compatible)")
    async def completions(request: Request, caller: CallerDep, session: SessionDep):
        return await _forward(request, session, caller, "/v1/completions")

    @router.post("/embeddings", summary="Create embeddings (OpenAI-compatible)")
    async def embeddings(request: Request, caller: CallerDep, session: SessionDep):
        return await _forward(request, session, caller, "/v1/embeddings", embeddings=True)

    @router.get("/models", summary="Models this API key may call (OpenAI-compatible)")
    def models(caller: CallerDep, session: SessionDep):
        return list_models(session, caller)

    return router


def install_gateway(app: FastAPI) -> None:
    app.state.gateway = Gateway(app.state.session_factory)
    for prefix in INFERENCE_PREFIXES:
        app.include_router(_router(prefix))
