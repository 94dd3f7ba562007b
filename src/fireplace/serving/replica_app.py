"""The replica's HTTP API (internal: only the API server, holding the secret, calls it).

    GET  /internal/health             {"ready": bool, "state": "loading|warming|ready|failed", "error"}
    GET  /internal/status             health, plus "adapters" and "stats" once ready: the controller's
                                      one poll per replica per tick
    GET  /internal/stats              engine load: running/waiting/KV/adapters/outstanding
    GET  /internal/adapters           {"adapters": [names resident or loading]}
    POST /internal/adapters           {"model": "accounts/a/models/m"}  read from the blob store, load
    DELETE /internal/adapters/{name}  unload (requests in flight on it finish first)
    POST /v1/chat/completions, /v1/completions, /v1/embeddings   OpenAI protocol;
         header x-fireplace-adapter: the addon to run (its full name), absent = base model

Every route needs `x-fireplace-replica-secret`; a process without it gets 401.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from fireplace.errors import FireplaceError, InvalidArgument, NotFound, Unavailable
from fireplace.serving import model_files
from fireplace.serving.disconnect import until_disconnect
from fireplace.serving.openai_errors import openai_error_response
from fireplace.serving.protocol import parse_chat, parse_completion, parse_json_object
from fireplace.serving.replica_headers import ADAPTER_HEADER, SECRET_HEADER
from fireplace.serving.replica_config import ReplicaConfig

log = logging.getLogger("fireplace.replica")
MAX_BODY_BYTES = 8 << 20


class ReplicaRuntime:
    """The engine (or embedder) of this replica, loaded in the background at start."""

    def __init__(self, config: ReplicaConfig):
        from fireplace.storage import BlobStore
        self.config = config
        self.blobs = BlobStore(config.blob_url)
        self.cache_dir = Path(config.cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.state, self.error = "loading", None
        self.engine = None          # AsyncEngine
        self.generation = None      # GenerationService
        self.embedder = None
        self.adapters: set[str] = set()
        self.started = time.time()

    def load(self) -> None:
        try:
            base_dir = model_files.materialize(self.blobs, model_files.model_prefix(self.config.model), self.cache_dir)
            if self.config.task == "embed":
                from fireplace.serving.embeddings import Embedder
                self.embedder = Embedder(base_dir)
                self.state = "warming"
                self.embedder.embed(["warm-up"])
            else:
                self._load_engine(base_dir)
            self.state = "ready"
            log.info("replica %s ready", self.config.replica_id)
        except BaseException as exc:  # reported through /internal/health; the controller fails the deployment
            log.exception("replica %s failed to load", self.config.replica_id)
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"

    def _load_engine(self, base_dir: Path) -> None:
        from fireplace.engine.async_engine import AsyncEngine
        from fireplace.engine.engine_config import EngineConfig
        from fireplace.engine.llm_engine import LLMEngine
        from fireplace.engine.sampling_params import SamplingParams
        from fireplace.serving.generation import GenerationService

        c = self.config
        merged = None
        if c.merged_adapter:
            merged = str(model_files.materialize(self.blobs, model_files.model_prefix(c.merged_adapter),
                                                 self.cache_dir))
        engine = LLMEngine(EngineConfig(model=str(base_dir), dtype=c.dtype, device=c.device,
                                        quantization=c.quantization,
                                        kv_cache_bytes=c.kv_cache_bytes, max_num_seqs=c.max_num_seqs,
                                        max_model_len=c.max_model_len, enable_lora=c.enable_lora,
                                        max_loras=c.max_loras, max_lora_rank=c.max_lora_rank,
                                        merged_adapter=merged, num_threads=c.num_threads))
        self.state = "warming"
        engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=4))  # one warm-up generation
        self.engine = AsyncEngine(engine)
        self.generation = GenerationService(self.engine, structured_output=_structured_output_hook())

    async def load_adapter(self, name: str) -> None:
        if self.engine is None or not self.config.enable_lora:
            raise InvalidArgument("this replica serves no LoRA addons (enableAddons is off)")
        files = await asyncio.to_thread(model_files.adapter_files, self.blobs, name)
        await self.engine.load_adapter(name, files)  # parsed off the engine thread
        self.adapters.add(name)

    async def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise NotFound(f"adapter {name!r} is not loaded")
        self.adapters.discard(name)
        await self.engine.call(lambda e: e.unload_adapter(name))

    async def stats(self) -> dict:
        out = {"replica_id": self.config.replica_id, "state": self.state, "adapters": sorted(self.adapters),
               "uptime_s": time.time() - self.started}
        if self.engine is not None:
            s = await self.engine.call(lambda e: e.stats())
            out.update(num_running=s.num_running, num_waiting=s.num_waiting, kv_blocks_used=s.kv_blocks_used,
                       kv_blocks_free=s.kv_blocks_free, kv_cache_usage=s.kv_cache_usage,
                       adapter_slots_used=s.adapter_slots_used, adapter_slots_total=s.adapter_slots_total,
                       prompt_tokens_per_s=s.prompt_tokens_per_s,
                       generation_tokens_per_s=s.generation_tokens_per_s,
                       prefix_cache_hit_rate=s.prefix_cache_hit_rate, num_preemptions=s.num_preemptions,
                       num_outstanding=self.generation.num_outstanding)
        return out


def _structured_output_hook():
    """response_format -> a grammar logits processor on the request's SamplingParams."""
    from fireplace.serving.structured_output import make_structured_processor

    def apply(response_format: dict, engine, params):
        factory = make_structured_processor(response_format, engine.tokenizer,
                                            vocab_size=engine.model_config.vocab_size,
                                            eos_token_ids=engine.eos_token_ids)
        return params if factory is None else params.replace(logits_processor=factory)
    return apply


class SecretCheck:
    """Pure ASGI middleware: every HTTP request must carry the replica's secret (else 401).
    Not BaseHTTPMiddleware, which would copy each streamed token chunk through a memory
    stream and a task of its own."""

    HEADER = SECRET_HEADER.lower().encode()   # ASGI header names are lower-case bytes

    def __init__(self, app, secret: str):
        self.app, self.secret = app, secret.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == self.HEADER), b"")
            if not hmac.compare_digest(given, self.secret):
                await openai_error_response(401, "missing or wrong replica secret")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_replica_app(config: ReplicaConfig, secret: str) -> FastAPI:
    runtime = ReplicaRuntime(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=runtime.load, name="fireplace-replica-load", daemon=True).start()
        yield
        if runtime.engine is not None:
            runtime.engine.shutdown()

    app = FastAPI(title="Fireplace replica", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.runtime = runtime

    app.add_middleware(SecretCheck, secret=secret)

    @app.exception_handler(FireplaceError)
    async def _errors(_request: Request, exc: FireplaceError):
        return openai_error_response(exc.http_status, exc.message, param=exc.param, headers=exc.headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("replica error on %s", request.url.path)
        return openai_error_response(500, f"replica error: {type(exc).__name__}")

    def require_generation():
        if runtime.state != "ready" or runtime.generation is None:
            raise Unavailable(f"replica is {runtime.state}", headers={"Retry-After": "1"})
        return runtime.generation

    async def read_json(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise InvalidArgument("request body too large")
        return parse_json_object(raw)

    @app.get("/internal/health")
    async def health():
        return {"ready": runtime.state == "ready", "state": runtime.state, "error": runtime.error}

    @app.get("/internal/status")
    async def status():
        out = {"ready": runtime.state == "ready", "state": runtime.state, "error": runtime.error}
        if out["ready"]:
            out["adapters"] = sorted(runtime.adapters)
            out["stats"] = await runtime.stats()
        return out

    @app.get("/internal/stats")
    async def stats():
        return await runtime.stats()

    @app.get("/internal/adapters")
    async def list_adapters():
        return {"adapters": sorted(runtime.adapters)}

    @app.post("/internal/adapters")
    async def load_adapter(request: Request):
        body = await read_json(request)
        name = body.get("model")
        if not isinstance(name, str):
            raise InvalidArgument("model: the addon's full name is required", param="model")
        require_generation()
        try:
            await runtime.load_adapter(name)
        except FireplaceError:
            raise
        except Exception as exc:  # a bad adapter fails its own load, not the replica
            raise InvalidArgument(f"cannot load adapter {name!r}: {exc}") from exc
        return {"model": name, "loaded": True}

    @app.delete("/internal/adapters/{name:path}")
    async def unload_adapter(name: str):
        require_generation()
        await runtime.unload_adapter(name)
        return {"model": name, "loaded": False}

    async def generate(request: Request, kind: str):
        svc = require_generation()
        body = await read_json(request)
        adapter = request.headers.get(ADAPTER_HEADER) or None
        if kind == "chat":
            req = parse_chat(body)
            prompts = [svc.chat_prompt(req, config.chat_template)]
        else:
            req = parse_completion(body)
            prompts = [svc.completion_prompt(p) for p in req.prompts]
        if adapter is not None and adapter not in runtime.adapters:
            raise NotFound(f"adapter {adapter!r} is not loaded on this replica")
        if req.options.stream:
            chunks = await svc.stream(kind, prompts, req.options, model=req.model, adapter_id=adapter)
            return StreamingResponse(chunks, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        result = await until_disconnect(request, svc.complete(kind, prompts, req.options, model=req.model,
                                                              adapter_id=adapter))
        return JSONResponse(result)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, "completion")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        if runtime.state != "ready" or runtime.embedder is None:
            raise Unavailable(f"replica is {runtime.state} or serves no embeddings", headers={"Retry-After": "1"})
        body = await read_json(request)
        from fireplace.serving.embeddings_api import embeddings_response
        return await asyncio.to_thread(embeddings_response, runtime.embedder, body)

    return app
