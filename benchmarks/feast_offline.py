"""Feast's side of benchmarks/features.py: its `get_historical_features`, run in Feast's own venv.

Builds and applies a Feast repo in a temp dir over the data directory that features.py writes (spec.json,
entities.parquet, one Parquet file per view) with the chosen offline store (`file`: pandas/dask, `duckdb`:
ibis on DuckDB), then times `get_historical_features(...).to_df()` as benchmarks/worker.py describes. Feast is
asked to drop feature rows created after the entity row's time, as loopml always does.

    .bench/feast/bin/python benchmarks/feast_offline.py DATA OUT --store duckdb --repeats 3
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import feast
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
from feast.types import Float64
from worker import time_calls, worker_arguments


def feature_store(repo: Path, offline: str, spec: dict) -> tuple[FeatureStore, list[str]]:
    """A local Feast repo with one FeatureView per view of the spec, applied; returns it and the refs."""
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
    views = [
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
    store.apply([user, *views])
    return store, [f"{view['name']}:{f}" for view in spec["views"] for f in view["features"]]


def main() -> None:
    args, spec, entities = worker_arguments(__doc__, "store", ["file", "duckdb"])
    with tempfile.TemporaryDirectory() as tmp:
        store, refs = feature_store(Path(tmp), args.store, spec)
        time_calls(
            lambda: store.get_historical_features(
                entity_df=entities, features=refs, filter_by_created_timestamp=True
            ).to_df(),
            args.repeats,
            args.out,
            version=feast.__version__,
        )


if __name__ == "__main__":
    main()
