"""Assemble the API server: settings -> DB -> migrations -> bootstrap -> routers."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from fireplace import __version__
from fireplace.api.errors import install_error_handlers
from fireplace.api.middleware import RequestContext
from fireplace.api.openapi import install_openapi
from fireplace.config import Settings
from fireplace.control.accounts.router import router as accounts_router
from fireplace.control.api_keys.router import router as api_keys_router
from fireplace.control.datasets.router import router as datasets_router
from fireplace.control.deployed_models.router import router as deployed_models_router
from fireplace.control.deployments.router import router as deployments_router
from fireplace.control.fine_tuning.router import router as fine_tuning_router
from fireplace.control.models.router import router as models_router
from fireplace.control.quotas.router import router as quotas_router
from fireplace.control.unimplemented import router as unserved_router
from fireplace.control.users.router import router as users_router
from fireplace.db.engine import make_engine, make_session_factory
from fireplace.db.migrate import upgrade
from fireplace.storage import BlobStore

log = logging.getLogger("fireplace")

CONTROL_ROUTERS = (accounts_router, users_router, api_keys_router, quotas_router, models_router,
                   datasets_router, deployments_router, deployed_models_router, fine_tuning_router,
                   unserved_router)


def create_app(settings: Settings | None = None, *, bootstrap: bool = True) -> FastAPI:
    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    session_factory = make_session_factory(engine)
    blobs = BlobStore(settings.resolved_blob_url)
    if bootstrap:
        from fireplace.bootstrap import bootstrap_platform
        bootstrap_platform(settings, session_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if bootstrap and settings.import_catalog:
            from fireplace.catalog.importer import start_catalog_import
            start_catalog_import(session_factory, blobs)
        controller = None
        if settings.workers_enabled:
            from fireplace.orchestration.controller import Controller
            controller = Controller(settings, session_factory, blobs)
            controller.start()
        app.state.controller = controller
        from fireplace.control.deployments.purger import start_purger
        stop_purger = start_purger(session_factory, settings.limits.purge_interval_s)
        app.state.ready = True
        yield
        app.state.ready = False
        stop_purger()
        if controller is not None:
            controller.stop()
        await app.state.gateway.close()
        engine.dispose()

    app = FastAPI(title="Fireplace", version=__version__, lifespan=lifespan,
                  description="Fireworks-compatible control plane and OpenAI-compatible inference, self-hosted.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = session_factory
    app.state.blobs = blobs
    app.state.ready = False
    install_error_handlers(app)
    for router in CONTROL_ROUTERS:
        app.include_router(router)
    from fireplace.gateway.router import install_gateway
    install_gateway(app)

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: the database answers and start-up finished")
    def readyz():
        from sqlalchemy import text
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # the DB is down: not ready, but alive
            return JSONResponse({"status": "unavailable", "reason": type(exc).__name__}, status_code=503)
        if not app.state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        if bootstrap and settings.import_catalog and settings.workers_enabled:
            from fireplace.catalog.serverless import bundled_serving_ready
            waiting = bundled_serving_ready(session_factory)
            if waiting:
                return JSONResponse({"status": "starting", "reason": waiting}, status_code=503)
        return {"status": "ready"}

    install_openapi(app)
    from fireplace.api.auth import header_authenticator
    app.add_middleware(RequestContext, max_body_bytes=settings.limits.max_body_bytes,
                       authenticate_headers=header_authenticator(session_factory))
    return app
