"""loopml's side of benchmarks/features.py: `Project.get_historical_features` or the raw DuckDB floor, one
system per process (so each has its own peak memory), timed as benchmarks/worker.py describes.

    .venv/bin/python benchmarks/loopml_offline.py DATA OUT --system loopml --repeats 3
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from worker import time_calls, worker_arguments

from loopml import Aggregation, Entity, FeatureView, Field, ParquetSource, Project
from loopml.config import write_config


def floor(spec: dict, entities: pd.DataFrame) -> pd.DataFrame:
    """Raw queries as a user would write them by hand: one ASOF query per view (no ttl, no created time) and,
    for the aggregation, one range join summing the events of [t - window, t) created before t."""
    with duckdb.connect() as conn:
        conn.execute("SET TimeZone='UTC'")
        conn.register("entities", entities.assign(r=np.arange(len(entities))))
        frames = []
        for view in spec["views"]:
            names = ", ".join(f"f.{f}" for f in view["features"])
            frames.append(
                conn.execute(
                    f"SELECT e.r, f.event_timestamp AS {view['name']}_ts, {names} FROM entities AS e "
                    f"ASOF LEFT JOIN read_parquet('{view['path']}') AS f "
                    "ON e.user_id = f.user_id AND e.event_timestamp >= f.event_timestamp ORDER BY r"
                ).df()
            )
        if aggregation := spec.get("aggregation"):
            created = "AND t.created_timestamp < e.event_timestamp " if aggregation["created"] else ""
            frames.append(
                conn.execute(
                    f"SELECT e.r, coalesce(sum(t.{aggregation['column']}), 0) AS {aggregation['feature']} "
                    f"FROM entities AS e LEFT JOIN read_parquet('{aggregation['path']}') AS t "
                    "ON e.user_id = t.user_id AND t.event_timestamp < e.event_timestamp "
                    f"AND t.event_timestamp >= e.event_timestamp - INTERVAL {aggregation['window_days']} DAY "
                    f"{created}GROUP BY e.r ORDER BY e.r"
                ).df()
            )
        return pd.concat([entities.reset_index(drop=True), *(f.drop(columns=["r"]) for f in frames)], axis=1)


def project(directory: Path, spec: dict) -> tuple[Project, list[str]]:
    """A loopml project with one FeatureView per view of the spec (and one aggregation view if the spec has
    one), applied; returns it and the refs."""
    write_config(directory, "bench")
    user = Entity("user", ["user_id"])
    views = [
        FeatureView(
            view["name"],
            [user],
            ParquetSource(view["path"], "event_timestamp", "created_timestamp"),
            [Field(f) for f in view["features"]],
            ttl=timedelta(days=spec["ttl_days"]),
        )
        for view in spec["views"]
    ]
    refs = [f"{view['name']}:{f}" for view in spec["views"] for f in view["features"]]
    if aggregation := spec.get("aggregation"):
        created = "created_timestamp" if aggregation["created"] else None
        window = f"{aggregation['window_days']}d"
        views.append(
            FeatureView(
                aggregation["name"],
                [user],
                ParquetSource(aggregation["path"], "event_timestamp", created),
                aggregations=[Aggregation(aggregation["column"], "sum", window, name=aggregation["feature"])],
            )
        )
        refs.append(f"{aggregation['name']}:{aggregation['feature']}")
    result = Project(directory)
    result.apply([user, *views])
    return result, refs


def main() -> None:
    args, spec, entities = worker_arguments(__doc__, "system", ["floor", "loopml"])
    if args.system == "floor":
        time_calls(lambda: floor(spec, entities), args.repeats, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        loopml, refs = project(Path(tmp), spec)
        time_calls(lambda: loopml.get_historical_features(entities, refs), args.repeats, args.out)


if __name__ == "__main__":
    main()
