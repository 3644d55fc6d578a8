"""The data plane: `loopml serve`'s HTTP API.

Prediction requests are answered from memory (routes, loaded models) and the online store; the prediction
with its inputs, and the feature lookup, are queued for background log writers, so the hot path writes nothing
synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field

from loopml.errors import LoopmlError, NotFoundError, ValidationError
from loopml.features.lookup_log import FEATURE_LOOKUPS, LOOKUP_SCHEMA, LoggedLookup, expand_lookup
from loopml.features.online import PRESENT, read_online, with_transforms
from loopml.serving.bodies import describe_errors, json_bytes
from loopml.serving.feature_routes import feature_routes
from loopml.serving.prediction_log import LABEL_SCHEMA, LABELS, PREDICTION_SCHEMA, PREDICTIONS, BatchWriter
from loopml.serving.router import LoadedModel, Router
from loopml.training.evaluation import predict_scores

if TYPE_CHECKING:
    from loopml.project import Project

logger = logging.getLogger(__name__)

ROUTE_REFRESH_SECONDS = 0.5
FEEDBACK_WAIT_SECONDS = 5.0
Scalar = float | int | str | bool | None


class PredictRequest(BaseModel):
    entities: dict[str, int | str] = Field(description="Join key values, e.g. {'user_id': 42}.")
    inputs: dict[str, Scalar] = Field(default_factory=dict, description="Request-time feature values.")
    unit_id: str | None = Field(default=None, description="Who the request is for (sticky assignment).")


class FeedbackItem(BaseModel):
    prediction_id: str = Field(min_length=1)
    label: float


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.predictions = Counter(
            "loopml_predictions_total", "Predictions served.", ["endpoint"], registry=self.registry
        )
        self.latency = Histogram(
            "loopml_prediction_latency_seconds",
            "Time to answer a prediction request.",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.dropped = Counter(
            "loopml_prediction_log_dropped_total",
            "Log records dropped because the queue was full.",
            registry=self.registry,
        )
        self.feedback = Counter("loopml_feedback_total", "Labels received.", registry=self.registry)
        self.lookups_dropped = Counter(
            "loopml_feature_lookup_log_dropped_total",
            "Feature lookup log records dropped because the queue was full.",
            registry=self.registry,
        )


def create_app(project: Project, *, freeze_startup_heap: bool = False) -> FastAPI:
    """Build the serving app for a project; models load at start-up, before the app reports ready.

    `freeze_startup_heap` (for a process that only serves) moves what start-up loaded out of the garbage
    collector's sight: a full collection over that heap (libraries, models) paused every request for
    140-170 ms; afterwards it scans only what requests allocate.
    """
    metrics = Metrics()
    router = Router(project.metadata, project.registry, project.path)
    serving = project.config["serving"]
    writers: dict[str, BatchWriter] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(router.refresh, force=True)
        batches = {
            "batch_size": int(serving["log_batch_size"]),
            "flush_seconds": float(serving["log_flush_seconds"]),
        }
        writers[PREDICTIONS] = BatchWriter(
            project.offline, PREDICTIONS, PREDICTION_SCHEMA, **batches, on_drop=metrics.dropped.inc
        )
        writers[LABELS] = BatchWriter(
            project.offline, LABELS, LABEL_SCHEMA, flush_seconds=batches["flush_seconds"]
        )
        writers[FEATURE_LOOKUPS] = BatchWriter(
            project.offline,
            FEATURE_LOOKUPS,
            LOOKUP_SCHEMA,
            **batches,
            on_drop=metrics.lookups_dropped.inc,
            expand=expand_lookup,
        )
        if freeze_startup_heap:
            gc.collect()
            gc.freeze()
        refresher = asyncio.create_task(_refresh_routes(router))
        try:
            yield
        finally:
            refresher.cancel()
            await project.online.aclose()
            for writer in writers.values():
                try:
                    writer.close()
                except LoopmlError:
                    logger.exception("Closing the %s writer failed", writer.dataset)

    app = FastAPI(title="loopml", version="0.1.0", lifespan=lifespan)
    app.include_router(feature_routes(project, router, metrics.registry, writers))

    @app.exception_handler(LoopmlError)
    async def loopml_error(_: Request, exc: LoopmlError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFoundError) else 400 if isinstance(exc, ValidationError) else 503
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unexpected error", exc_info=exc)
        message = f"Internal error ({type(exc).__name__}: {exc}); see the server log."
        return JSONResponse({"error": message}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": f"Invalid request body: {describe_errors(exc.errors())}"}, status_code=400
        )

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        is_ready = router.seen_counter >= 0
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @app.get("/v1/endpoints")
    async def endpoints() -> dict[str, Any]:
        return {"endpoints": [_describe(name, model) for name, model in router.routes.items()]}

    @app.get("/v1/endpoints/{name}")
    async def endpoint(name: str) -> dict[str, Any]:
        return _describe(name, router.model(name))

    @app.post("/v1/endpoints/{name}/predict")
    def predict(name: str, body: PredictRequest) -> dict[str, Any]:
        """Score one request; a plain function, so FastAPI runs it off the event loop."""
        started = time.perf_counter()
        model = router.model(name)
        now = project.clock.now()
        missing = [f for f in model.request_features if f not in body.inputs]
        if missing:
            raise ValidationError(
                f"Endpoint '{name}' needs request input(s) {missing}; send them under 'inputs'."
            )
        plan = model.feature_plan
        raw = read_online(project.online, plan.views, {k: [v] for k, v in body.entities.items()}, now=now)
        fetched = with_transforms(plan, raw, {f: [body.inputs[f]] for f in plan.request_fields})
        row = {
            **{f: body.inputs[f] for f in model.request_features},
            **{k: v[0] for k, v in fetched.values.items()},
        }
        try:
            output = float(
                predict_scores(model.estimator, pd.DataFrame({c: [row[c]] for c in model.version.inputs}))[0]
            )
        except (ValueError, TypeError) as exc:
            absent = {k: v[0] for k, v in fetched.statuses.items() if v[0] != PRESENT}
            hint = (
                f" Features without a value for {body.entities}: {absent}; run `loopml materialize`."
                if absent
                else ""
            )
            raise ValidationError(
                f"Model {model.version.ref} could not score these inputs: {exc}.{hint}"
            ) from exc
        prediction_id = uuid.uuid4().hex
        latency = time.perf_counter() - started
        writers[PREDICTIONS].put(
            {
                "prediction_id": prediction_id,
                "ts": now,
                "endpoint": name,
                "model_name": model.version.model_name,
                "model_version": model.version.version,
                "unit_id": body.unit_id,
                "entities": json_bytes(body.entities).decode(),
                "inputs": json_bytes(row).decode(),
                "output": output,
                "latency_seconds": latency,
            }
        )
        writers[FEATURE_LOOKUPS].put(LoggedLookup(prediction_id, f"endpoint:{name}", now, plan.views, raw))
        metrics.predictions.labels(name).inc()
        metrics.latency.labels(name).observe(latency)
        return {
            "prediction_id": prediction_id,
            "endpoint": name,
            "model": model.version.model_name,
            "model_version": model.version.version,
            "output": output,
            "feature_statuses": {k: v[0] for k, v in fetched.statuses.items()},
        }

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackItem | list[FeedbackItem]) -> Any:
        """Record labels by prediction id (the latest label of a prediction wins)."""
        items = body if isinstance(body, list) else [body]
        now = project.clock.now()
        records = [{"prediction_id": item.prediction_id, "label": item.label, "ts": now} for item in items]
        accepted = await asyncio.to_thread(_put_all, writers[LABELS], records)
        metrics.feedback.inc(accepted)
        if accepted < len(records):
            message = (
                f"The label queue is full: accepted the first {accepted} of {len(records)} labels; "
                "send the rest again shortly."
            )
            return JSONResponse({"error": message, "accepted": accepted}, status_code=503)
        return {"accepted": accepted}

    @app.post("/v1/predictions/flush")
    async def flush() -> dict[str, bool]:
        """Write everything queued so far (predictions, labels, feature lookups) before answering."""
        for writer in writers.values():
            await asyncio.to_thread(writer.flush)
        return {"flushed": True}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _put_all(writer: BatchWriter, records: list[dict[str, Any]]) -> int:
    """Queue records in order, waiting for room; returns how many were queued before one could not be."""
    for accepted, record in enumerate(records):
        if not writer.put(record, timeout=FEEDBACK_WAIT_SECONDS):
            return accepted
    return len(records)


def _describe(name: str, model: LoadedModel) -> dict[str, Any]:
    return {
        "endpoint": name,
        "model": model.version.model_name,
        "model_version": model.version.version,
        "inputs": model.version.inputs,
        "features": model.version.features,
    }


async def _refresh_routes(router: Router) -> None:
    while True:
        await asyncio.sleep(ROUTE_REFRESH_SECONDS)
        try:
            await asyncio.to_thread(router.refresh)
        except Exception:  # keep serving the last good routes; the next tick retries
            logger.exception("Route refresh failed")
