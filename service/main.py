"""Builds the FastAPI app: the model and editor load once in the lifespan, with the log replayed before serving."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from .deps import refuse_open_network, require_key
from .errors import install_handlers
from .heap import fix_mmap_threshold
from .metrics import Metrics
from .routes import console, edits, export, generate, health, openai
from .runtime import Runtime
from .schemas import JOIN_DOC
from .settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = f"""MEND (Mitchell et al., ICLR 2022) as a service: send a prompt and the continuation you want, and the
editor turns that one example's gradient into a low-rank weight update, applied in place and kept in an
append-only Redis edit log, so every edit can be rolled back and every replica converges.

{JOIN_DOC}
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if fix_mmap_threshold(settings.mmap_threshold):
        log.info("malloc's mmap threshold fixed at %d bytes", settings.mmap_threshold)
    try:
        runtime = await run_in_threadpool(Runtime.start, settings)
    except Exception:
        log.exception("startup failed: not serving")
        raise
    app.state.runtime = runtime
    app.state.metrics.bind(lambda: len(runtime.active), lambda: runtime.version, runtime.drift,
                           runtime.canary_agreement, runtime.method.piece_stats)
    log.info("serving %s with editor %s at version %d", settings.model, settings.editor, runtime.version)
    try:
        yield
    finally:
        app.state.runtime = None
        await run_in_threadpool(runtime.close)


def create_app(settings: Settings | None = None) -> FastAPI:
    # Swagger UI's and ReDoc's files from the installed package, not a CDN: /docs works on a machine without internet.
    app = FastAPIOffline(title="MEND model-editing service", version="0.1.0", description=DESCRIPTION,
                         lifespan=lifespan, dependencies=[Depends(refuse_open_network)])
    app.state.settings = settings or Settings()
    app.state.metrics = Metrics()
    app.state.runtime = None
    install_handlers(app)
    app.state.metrics.install(app)
    # With MEND_API_KEY set, every route needs it but the probes orchestrators call without one (/health, /ready)
    # and /metrics, which has its own check (MEND_METRICS_PUBLIC). The key is required per router, not per route,
    # so a new route is protected unless it is put beside the probes. /docs, /openapi.json and the console's files
    # hold no data (the console asks for the key and sends it on its API calls: routes/console.py).
    for module in (edits, export, generate, openai):
        app.include_router(module.router, dependencies=[Depends(require_key)])
    app.include_router(health.router)
    app.include_router(console.router)
    return app
