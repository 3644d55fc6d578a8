"""loopml's own JSON routes: predict by records, columns or entity keys; endpoints; feedback; log flush."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, RootModel
from starlette.background import BackgroundTask

from loopml.errors import ValidationError
from loopml.serving.bodies import json_response, openapi_body, parse_body
from loopml.serving.metrics import Metrics
from loopml.serving.prediction_log import LABELS, BatchWriter
from loopml.serving.router import Router, ServedEndpoint
from loopml.serving.scoring import column_lengths, rows_to_columns
from loopml.serving.service import SCORES, PredictionService, Scored

FEEDBACK_WAIT_SECONDS = 5.0
Scalar = float | int | str | bool | None


class PredictRequest(BaseModel):
    """Send exactly one of `records`, `columns` or `entities`."""

    records: list[dict[str, Scalar]] | None = Field(
        default=None, description="One object per row: model inputs, or entity keys plus request-time values."
    )
    columns: dict[str, list[Scalar]] | None = Field(default=None, description="One list of values per input.")
    entities: dict[str, int | str | list[int | str]] | None = Field(
        default=None, description="Join keys, e.g. {'user_id': 42}; the model's stored features are fetched."
    )
    inputs: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict, description="Request-time values sent with `entities`."
    )
    unit_id: str | None = Field(
        default=None, max_length=256, description="Who the request is for (sticky routing)."
    )


class FeedbackItem(BaseModel):
    prediction_id: str = Field(min_length=1, max_length=64)
    label: float = Field(allow_inf_nan=False)


class Feedback(RootModel[FeedbackItem | list[FeedbackItem]]):
    """One label or a list of them."""


def loopml_routes(
    service: PredictionService, router: Router, metrics: Metrics, writers: dict[str, BatchWriter], clock: Any
) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.get("/endpoints")
    async def endpoints() -> dict[str, Any]:
        return {"endpoints": [describe(served) for served in router.endpoints.values()]}

    @api.get("/endpoints/{name}")
    async def endpoint(name: str) -> dict[str, Any]:
        return describe(router.served(name))

    @api.post("/endpoints/{name}/predict", openapi_extra=openapi_body(PredictRequest))
    async def predict(name: str, request: Request) -> Response:
        """Score rows: model inputs as records or columns, or entity keys (stored features are fetched)."""
        body = parse_body(PredictRequest, await request.body())
        columns, rows, single = request_columns(body)
        scored, mirror = await service.predict(name, columns, rows, unit_id=body.unit_id)
        background = BackgroundTask(mirror) if mirror is not None else None
        response = json_response(answer(scored, single))
        response.background = background
        return response

    @api.post("/feedback", openapi_extra=openapi_body(Feedback))
    async def feedback(request: Request) -> Any:
        """Record labels by prediction id (the latest label of a prediction wins)."""
        body = parse_body(Feedback, await request.body()).root
        items = body if isinstance(body, list) else [body]
        now = clock.now()
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

    @api.post("/predictions/flush")
    async def flush() -> dict[str, bool]:
        """Write everything queued so far (predictions, shadow predictions, labels, feature lookups)."""
        await service.flush_shadows()
        for writer in writers.values():
            await asyncio.to_thread(writer.flush)
        return {"flushed": True}

    return api


def request_columns(body: PredictRequest) -> tuple[dict[str, list[Any]], int, bool]:
    """The request's rows as columns, their number, and whether it was the single-row entity form."""
    given = [name for name in ("records", "columns", "entities") if getattr(body, name) is not None]
    if len(given) != 1:
        raise ValidationError(
            f"Send exactly one of 'records', 'columns' or 'entities' (got {given or 'none'})."
        )
    if body.records is not None:
        columns = rows_to_columns(body.records)
        return _without_inputs(body, columns), len(body.records), False
    if body.columns is not None:
        return _without_inputs(body, dict(body.columns)), column_lengths(body.columns), False
    assert body.entities is not None
    merged = {**body.entities, **body.inputs}
    single = not any(isinstance(v, list) for v in merged.values())
    if single:
        return {k: [v] for k, v in merged.items()}, 1, True
    columns = {k: v if isinstance(v, list) else None for k, v in merged.items()}
    scalars = [k for k, v in columns.items() if v is None]
    if scalars:
        raise ValidationError(
            f"Mix of single values and lists in 'entities'/'inputs' ({scalars} are single values); send either "
            "one value per key or one list per key."
        )
    return columns, column_lengths(merged, "entities/inputs"), False  # type: ignore[arg-type]


def _without_inputs(body: PredictRequest, columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    if body.inputs:
        raise ValidationError(
            "'inputs' goes with 'entities'; with records or columns, put every value in the rows."
        )
    return columns


def answer(scored: Scored, single: bool) -> dict[str, Any]:
    """The JSON answer: the version that produced it, and each row's prediction id and output."""
    outputs = scored.outputs[SCORES].tolist()
    head = {
        "endpoint": scored.endpoint,
        "model": scored.model.version.model_name,
        "model_version": scored.version,
        "route": scored.route,
        "cached": scored.cached,
    }
    if single:
        return {
            "prediction_id": scored.prediction_ids[0],
            **head,
            "output": outputs[0],
            "feature_statuses": {k: v[0] for k, v in scored.statuses.items()},
        }
    return {
        **head,
        "predictions": [
            {"prediction_id": pid, "output": out}
            for pid, out in zip(scored.prediction_ids, outputs, strict=True)
        ],
        "feature_statuses": scored.statuses,
    }


def describe(served: ServedEndpoint) -> dict[str, Any]:
    """An endpoint with its routes, what each serves now, and its state in this server."""
    endpoint = served.endpoint
    loaded = {routed.route.name: routed.served for routed in served.table.routes}
    primary = served.table.primary.served if served.table.primary else None
    return {
        "endpoint": endpoint.name,
        "state": served.state,
        "reason": served.reason,
        "model": primary.version.model_name if primary else endpoint.primary.model_name,
        "model_version": primary.version.version if primary else None,
        "inputs": primary.scorer.input_names if primary else [],
        "features": primary.version.features if primary else [],
        "routes": [
            {
                "name": route.name,
                "mode": route.mode,
                "weight": route.weight,
                "target": route.target,
                "model_version": loaded[route.name].version.version if loaded.get(route.name) else None,
            }
            for route in endpoint.routes
        ],
        "settings": asdict(endpoint.settings),
    }


def _put_all(writer: BatchWriter, records: list[dict[str, Any]]) -> int:
    """Queue records in order, waiting for room; returns how many were queued before one could not be."""
    for accepted, record in enumerate(records):
        if not writer.put(record, timeout=FEEDBACK_WAIT_SECONDS):
            return accepted
    return len(records)
