"""Feast's side of benchmarks/features.py: its `get_historical_features`, run in Feast's own venv.

Builds and applies a Feast repo in a temp dir over the data directory that features.py writes (spec.json,
entities.parquet, one Parquet file per view, the event file of the aggregation) with the chosen offline store
(`file`: pandas/dask, `duckdb`: ibis on DuckDB), then times `get_historical_features(...).to_df()` as
benchmarks/worker.py describes. Feast is asked to drop feature rows created after the entity row's time, as
loopml always does.

The aggregation is declared the way Feast documents windowed aggregations: a StreamFeatureView with
`Aggregation(column, "sum", time_window=7 days)` over the event file. Before timing, one call on a few entity
rows asks for it; if Feast cannot compute it (0.67 cannot: its offline stores look for a column of that name
in the source), the error is recorded in timing.json and the timed calls cover the plain views only.

    .bench/feast/bin/python benchmarks/feast_offline.py DATA OUT --store duckdb --repeats 3
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import feast
import pandas as pd
from feast import (
    Aggregation,
    Entity,
    FeatureStore,
    FeatureView,
    Field,
    FileSource,
    PushSource,
    RepoConfig,
    StreamFeatureView,
    ValueType,
)
from feast.types import Float64
from worker import time_calls, worker_arguments


def feature_store(repo: Path, offline: str, spec: dict) -> tuple[FeatureStore, list[str], str | None]:
    """A local Feast repo with one FeatureView per view of the spec and, if the spec has an aggregation, a
    StreamFeatureView declaring it; applied. Returns it, the plain refs and the aggregation's ref."""
    config = RepoConfig(
        project="bench",
        provider="local",
        registry=str(repo / "registry.db"),
        online_store={"type": "sqlite", "path": str(repo / "online.db")},
        offline_store={"type": offline},
        entity_key_serialization_version=3,
        repo_path=repo,
    )
    store = FeatureStore(config=config)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    views: list[FeatureView] = [
        FeatureView(
            name=view["name"],
            entities=[user],
            ttl=timedelta(days=spec["ttl_days"]),
            schema=[Field(name=f, dtype=Float64) for f in view["features"]],
            source=FileSource(
                name=f"{view['name']}_source",
                path=view["path"],
                timestamp_field="event_timestamp",
                created_timestamp_column="created_timestamp",
            ),
        )
        for view in spec["views"]
    ]
    aggregation_ref = None
    if aggregation := spec.get("aggregation"):
        views.append(aggregation_view(user, aggregation))
        aggregation_ref = f"{aggregation['name']}:{aggregation['feature']}"
    store.apply([user, *views])
    refs = [f"{view['name']}:{f}" for view in spec["views"] for f in view["features"]]
    return store, refs, aggregation_ref


def aggregation_view(user: Entity, aggregation: dict) -> StreamFeatureView:
    """The spec's aggregation as Feast declares one: a StreamFeatureView whose push source is backed by the
    event file (the batch source is what offline retrieval reads)."""
    window = timedelta(days=aggregation["window_days"])
    events = FileSource(
        name=f"{aggregation['name']}_events",
        path=aggregation["path"],
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp" if aggregation["created"] else "",
    )
    return StreamFeatureView(
        name=aggregation["name"],
        entities=[user],
        ttl=window,
        source=PushSource(name=f"{aggregation['name']}_push", batch_source=events),
        schema=[Field(name=aggregation["feature"], dtype=Float64)],
        aggregations=[
            Aggregation(
                column=aggregation["column"],
                function="sum",
                time_window=window,
                name=aggregation["feature"],
            )
        ],
        timestamp_field="event_timestamp",
    )


def retrieve(store: FeatureStore, entities: pd.DataFrame, refs: list[str]) -> pd.DataFrame:
    return store.get_historical_features(
        entity_df=entities, features=refs, filter_by_created_timestamp=True
    ).to_df()


def aggregation_error(store: FeatureStore, entities: pd.DataFrame, ref: str) -> str | None:
    """Why Feast cannot retrieve the aggregation (None if it can), from one call on a few entity rows."""
    try:
        retrieve(store, entities.head(100), [ref])
    except Exception as error:  # whatever Feast raises is the answer
        return f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return None


def main() -> None:
    args, spec, entities = worker_arguments(__doc__, "store", ["file", "duckdb"])
    with tempfile.TemporaryDirectory() as tmp:
        store, refs, aggregation_ref = feature_store(Path(tmp), args.store, spec)
        error = aggregation_error(store, entities, aggregation_ref) if aggregation_ref else None
        if aggregation_ref and error is None:
            refs.append(aggregation_ref)
        time_calls(
            lambda: retrieve(store, entities, refs),
            args.repeats,
            args.out,
            version=feast.__version__,
            aggregation=bool(aggregation_ref) and error is None,
            aggregation_error=error,
        )


if __name__ == "__main__":
    main()
