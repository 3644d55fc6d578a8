"""The feature server inside `loopml serve`: online reads and pushed values over HTTP.

Feature views come from the router's cache (refreshed with the routes), so a read touches only the online
store. Reads observe their latency and the age of what they returned, per view.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from prometheus_client import CollectorRegistry, Histogram
from pydantic import BaseModel, Field

from loopml.clock import as_utc
from loopml.errors import ValidationError
from loopml.features.definitions import FeatureView, feature_column, group_feature_refs
from loopml.features.online import entity_key, read_online
from loopml.serving.router import Router

if TYPE_CHECKING:
    from loopml.project import Project

AGE_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 86_400, 7 * 86_400)


class OnlineRequest(BaseModel):
    entities: dict[str, list[int | str]] = Field(description="Join key columns, e.g. {'user_id': [1, 2]}.")
    features: list[str] = Field(min_length=1, description="'view:feature' references.")
    full_feature_names: bool = False


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


def feature_routes(project: Project, router: Router, registry: CollectorRegistry) -> APIRouter:
    metrics = FeatureMetrics(registry)
    api = APIRouter(prefix="/v1/features")

    @api.post("/online")
    def online(body: OnlineRequest) -> dict[str, Any]:
        """Current values of features for a list of entities, each with its status and event time."""
        started = time.perf_counter()
        requests = [
            (router.feature_view(name), names) for name, names in group_feature_refs(body.features).items()
        ]
        now = project.clock.now()
        found = read_online(
            project.online, requests, body.entities, now=now, full_feature_names=body.full_feature_names
        )
        metrics.read_seconds.observe(time.perf_counter() - started)
        for view, names in requests:  # the features of a view share its rows' event times
            for event_ts in found.event_timestamps[
                feature_column(view.name, names[0], body.full_feature_names)
            ]:
                if event_ts is not None:
                    metrics.age_seconds.labels(view.name).observe(now.timestamp() - event_ts)
        return {
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

    @api.post("/push")
    def push(body: PushRequest) -> dict[str, int]:
        """Write fresh values straight to the online store (last write wins by event time)."""
        view = router.feature_view(body.view)
        now = project.clock.now().timestamp()
        rows = [_pushed_row(view, row, index, now) for index, row in enumerate(body.rows)]
        return {"written": project.online.write(view.name, rows)}

    return api


def _pushed_row(
    view: FeatureView, row: dict[str, Any], index: int, now: float
) -> tuple[str, float, float, dict[str, Any]]:
    missing = [k for k in (*view.join_keys, view.source.timestamp_field, *view.feature_names) if k not in row]
    if missing:
        raise ValidationError(
            f"Row {index} pushed to '{view.name}' lacks {missing}; send every join key, the event time and every "
            "feature (null for none)."
        )
    unknown = sorted(set(row) - {*view.join_keys, view.source.timestamp_field, *view.feature_names})
    if unknown:
        raise ValidationError(
            f"Row {index} pushed to '{view.name}' has unknown field(s) {unknown}; its features are "
            f"{list(view.feature_names)}."
        )
    try:
        event_ts = as_utc(datetime.fromisoformat(str(row[view.source.timestamp_field]))).timestamp()
    except ValueError as exc:
        raise ValidationError(
            f"Row {index}: '{view.source.timestamp_field}' must be an ISO 8601 time, got {row[view.source.timestamp_field]!r}."
        ) from exc
    values = {name: row[name] for name in view.feature_names}
    return entity_key([row[k] for k in view.join_keys]), event_ts, now, values
