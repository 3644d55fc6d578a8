"""The data plane: `loopml serve`'s HTTP API.

Every deployed endpoint's model versions load before the server reports ready. Prediction requests are answered
from memory (route tables, loaded models) and the online store; predictions, feature lookups and labels are
queued for background log writers, so the hot path writes nothing synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import threadpoolctl
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from loopml.errors import LoopmlError
from loopml.features.lookup_log import FEATURE_LOOKUPS, LOOKUP_SCHEMA, expand_lookup
from loopml.serving.bodies import describe_errors
from loopml.serving.endpoints import SHADOW
from loopml.serving.feature_routes import feature_routes
from loopml.serving.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit
from loopml.serving.loopml_api import loopml_routes
from loopml.serving.metrics import Metrics
from loopml.serving.mlflow_scoring import mlflow_routes
from loopml.serving.oip import oip_routes
from loopml.serving.prediction_log import (
    ERROR_SCHEMA,
    ERRORS,
    LABEL_SCHEMA,
    LABELS,
    PREDICTION_SCHEMA,
    PREDICTIONS,
    BatchWriter,
)
from loopml.serving.router import Router
from loopml.serving.service import PredictionService, status_of
from loopml.serving.shadow_process import ShadowProcess
from loopml.serving.unloaded import UnloadedEndpoints

if TYPE_CHECKING:
    from loopml.project import Project

logger = logging.getLogger(__name__)

ROUTE_REFRESH_SECONDS = 0.5
QUEUE_DEPTH_SECONDS = 1.0


def create_app(
    project: Project, *, freeze_startup_heap: bool = False, unloaded: UnloadedEndpoints | None = None
) -> FastAPI:
    """Build the serving app for a project; models load at start-up, before the app reports ready.

    `freeze_startup_heap` (for a process that only serves) moves what start-up loaded out of the garbage
    collector's sight: a full collection over that heap (libraries, models) paused every request for
    140-170 ms; afterwards it scans only what requests allocate. `unloaded` is shared by the worker
    processes of one server (the repository API's unloads reach all of them).
    """
    metrics = Metrics()
    router = Router(project.metadata, project.registry, project.path, unloaded)
    serving = project.config["serving"]
    threads = int(serving.get("model_threads", 1))
    writers: dict[str, BatchWriter] = {}
    shadows = ShadowProcess(project.path)
    service = PredictionService(project, router, metrics, writers, shadows)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writers.update(log_writers(project, metrics, service.idle))
        await asyncio.to_thread(_refresh, router, shadows, force=True)
        limit_model_threads(threads)
        if freeze_startup_heap:
            gc.collect()
            gc.freeze()
        tasks = [
            asyncio.create_task(_refresh_routes(router, service, shadows, threads)),
            asyncio.create_task(_watch_queues(writers, metrics)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await service.close()
            await asyncio.to_thread(shadows.close)
            await project.online.aclose()
            for writer in writers.values():
                try:
                    writer.close()
                except LoopmlError:
                    logger.exception("Closing the %s writer failed", writer.dataset)
            metrics.close()

    app = FastAPI(title="loopml", version="0.1.0", lifespan=lifespan)
    app.state.router = router
    app.state.shadows = shadows
    app.add_middleware(BodyLimit, max_bytes=int(serving.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)))
    app.include_router(feature_routes(project, router, metrics.registry, writers))
    app.include_router(loopml_routes(service, router, metrics, writers, project.clock))
    app.include_router(oip_routes(service, router))
    app.include_router(mlflow_routes(service, router))

    @app.exception_handler(LoopmlError)
    async def loopml_error(_: Request, exc: LoopmlError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status_of(exc))

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unexpected error", exc_info=exc)
        message = f"Internal error ({type(exc).__name__}: {exc}); see the server log."
        return JSONResponse({"error": message}, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"Invalid request: {describe_errors(exc.errors())}"}, status_code=400)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def log_writers(
    project: Project, metrics: Metrics, idle: threading.Event | None = None
) -> dict[str, BatchWriter]:
    """The background writers of predictions, labels and feature lookups (they work while `idle` is set)."""
    serving = project.config["serving"]
    batches = {
        "batch_size": int(serving["log_batch_size"]),
        "flush_seconds": float(serving["log_flush_seconds"]),
    }
    return {
        PREDICTIONS: BatchWriter(
            project.offline, PREDICTIONS, PREDICTION_SCHEMA, **batches, on_drop=metrics.dropped.inc, idle=idle
        ),
        LABELS: BatchWriter(project.offline, LABELS, LABEL_SCHEMA, flush_seconds=batches["flush_seconds"]),
        ERRORS: BatchWriter(
            project.offline, ERRORS, ERROR_SCHEMA, **batches, on_drop=metrics.dropped.inc, idle=idle
        ),
        FEATURE_LOOKUPS: BatchWriter(
            project.offline,
            FEATURE_LOOKUPS,
            LOOKUP_SCHEMA,
            **batches,
            on_drop=metrics.lookups_dropped.inc,
            expand=expand_lookup,
            idle=idle,
        ),
    }


async def _refresh_routes(
    router: Router, service: PredictionService, shadows: ShadowProcess, threads: int
) -> None:
    while True:
        await asyncio.sleep(ROUTE_REFRESH_SECONDS)
        try:
            if await asyncio.to_thread(_refresh, router, shadows):
                limit_model_threads(threads)  # a newly loaded model may have brought its own thread pool
            service.prune_batchers()  # after a refresh, a load or an unload
        except Exception:  # keep serving the last good routes; the next tick retries
            logger.exception("Route refresh failed")


def _refresh(router: Router, shadows: ShadowProcess, *, force: bool = False) -> bool:
    """Reload routes if they changed (returns whether they did), then keep the shadow process in step."""
    changed = router.refresh(force=force)
    _keep_shadows_running(router, shadows)
    return changed


def _keep_shadows_running(router: Router, shadows: ShadowProcess) -> None:
    """Start the shadow process once an endpoint has a shadow route (again if it died); pass it the unloads."""
    shadows.set_unloaded(router.unloaded.names)
    if any(r.route.mode == SHADOW for s in router.endpoints.values() for r in s.table.routes):
        shadows.ensure_running()


def limit_model_threads(threads: int) -> None:
    """Cap the native thread pools (OpenMP, BLAS) of the libraries loaded so far, for the event loop's thread
    (OpenMP's limit is per thread), where models score.

    A server scores a few rows per call for many requests at once: a pool per call adds wake-up and spin time
    (a 20-tree histogram gradient boosting model: 4.7 ms per row with two threads on two busy cores, 0.65 ms
    with one) and competes with the requests for the cores.
    """
    threadpoolctl.threadpool_limits(limits=threads)


async def _watch_queues(writers: dict[str, BatchWriter], metrics: Metrics) -> None:
    while True:
        for name, writer in writers.items():
            metrics.queue_depth.labels(name).set(writer.depth)
        await asyncio.sleep(QUEUE_DEPTH_SECONDS)
