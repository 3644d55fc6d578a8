"""The feature server inside `loopml serve`: online reads and pushed values over HTTP.

Feature views come from the router's cache (refreshed with the routes), so a read touches only the online
store. Reads observe their latency and the age of what they returned, per view, and are queued for the
feature lookup log (the skew check's input).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Histogram
from pydantic import BaseModel, Field

from loopml.errors import ValidationError
from loopml.features.definitions import feature_column
from loopml.features.lookup_log import FEATURE_LOOKUPS, FEATURE_SERVER, LoggedLookup
from loopml.features.online import push as push_rows
from loopml.features.online import read_online_async, with_transforms
from loopml.serving.bodies import json_response, openapi_body, parse_body
from loopml.serving.prediction_log import BatchWriter
from loopml.serving.router import Router

if TYPE_CHECKING:
    from loopml.project import Project


AGE_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 86_400, 7 * 86_400)


class OnlineRequest(BaseModel):
    entities: dict[str, list[int | str]] = Field(description="Join key columns, e.g. {'user_id': [1, 2]}.")
    features: list[str] | None = Field(
        default=None, min_length=1, description="'view:feature' references (or name a feature_service)."
    )
    feature_service: str | None = Field(default=None, description="A feature service to read instead.")
    full_feature_names: bool = False
    request_data: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Request-time columns read by on-demand views, one value per entity row.",
    )


class PushRequest(BaseModel):
    view: str
    rows: list[dict[str, Any]] = Field(
        min_length=1, description="Join keys, the event timestamp and features."
    )


class FeatureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.read_seconds = Histogram(
            "loopml_feature_read_seconds",
            "Time to read online features.",
            registry=registry,
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
        )
        self.age_seconds = Histogram(
            "loopml_feature_age_seconds",
            "Age of served feature values, from their event time.",
            ["view"],
            registry=registry,
            buckets=AGE_BUCKETS,
        )


def feature_routes(
    project: Project, router: Router, registry: CollectorRegistry, writers: dict[str, BatchWriter]
) -> APIRouter:
    """The /v1/features routes; online reads are logged through `writers[FEATURE_LOOKUPS]`."""
    metrics = FeatureMetrics(registry)
    api = APIRouter(prefix="/v1/features")

    @api.post("/online", openapi_extra=openapi_body(OnlineRequest))
    async def online(request: Request) -> Response:
        """Current values of features for a list of entities, each with its status and event time."""
        started = time.perf_counter()
        body = parse_body(OnlineRequest, await request.body())
        plan = router.feature_plan(_features(body, router))
        now = project.clock.now()
        raw = await read_online_async(
            project.online, plan.views, body.entities, now=now, full_feature_names=body.full_feature_names
        )
        found = with_transforms(plan, raw, body.request_data, full_feature_names=body.full_feature_names)
        metrics.read_seconds.observe(time.perf_counter() - started)
        now_ts = now.timestamp()
        for view, names in plan.views:  # a view's features share its rows' event times (`raw` has them all)
            ages = metrics.age_seconds.labels(view.name)
            for event_ts in raw.event_timestamps[
                feature_column(view.name, names[0], body.full_feature_names)
            ]:
                if event_ts is not None:
                    ages.observe(now_ts - event_ts)
        writers[FEATURE_LOOKUPS].put(
            LoggedLookup(uuid.uuid4().hex, FEATURE_SERVER, now, plan.views, raw, body.full_feature_names)
        )
        return json_response(
            {
                "entities": found.entities,
                "features": {
                    name: {
                        "values": found.values[name],
                        "statuses": found.statuses[name],
                        "event_timestamps": found.event_timestamps[name],
                    }
                    for name in found.values
                },
            }
        )

    @api.post("/push", openapi_extra=openapi_body(PushRequest))
    async def push(request: Request) -> dict[str, int]:
        """Write fresh values (or, for an aggregation view, events) straight to the online store."""
        body = parse_body(PushRequest, await request.body())
        view = router.feature_view(body.view)
        now = project.clock.now()
        return {"written": await asyncio.to_thread(push_rows, project.online, view, body.rows, now=now)}

    return api


def _features(body: OnlineRequest, router: Router) -> list[str]:
    """The references a read asks for: its own list, or its feature service's."""
    if (body.features is None) == (body.feature_service is None):
        raise ValidationError(
            "Send either 'features' (a list of 'view:feature') or 'feature_service', not both."
        )
    if body.feature_service is not None:
        return list(router.feature_service(body.feature_service).features)
    return body.features or []
