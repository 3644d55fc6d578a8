"""loopml's side of benchmarks/features.py: `Project.get_historical_features` or the raw DuckDB ASOF floor,
one system per process (so each has its own peak memory), timed as benchmarks/worker.py describes.

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

from loopml import Entity, FeatureView, Field, ParquetSource, Project
from loopml.config import write_config


def floor(spec: dict, entities: pd.DataFrame) -> pd.DataFrame:
    """One raw ASOF query per view, as a user would write it by hand: no ttl, no created time."""
    with duckdb.connect() as conn:
        conn.execute("SET TimeZone='UTC'")
        conn.register("entities", entities.assign(r=np.arange(len(entities))))
        result = entities
        for view in spec["views"]:
            names = ", ".join(f"f.{f}" for f in view["features"])
            frame = conn.execute(
                f"SELECT e.r, f.event_timestamp AS {view['name']}_ts, {names} FROM entities AS e "
                f"ASOF LEFT JOIN read_parquet('{view['path']}') AS f "
                "ON e.user_id = f.user_id AND e.event_timestamp >= f.event_timestamp ORDER BY r"
            ).df()
            result = pd.concat([result.reset_index(drop=True), frame.drop(columns=["r"])], axis=1)
        return result


def project(directory: Path, spec: dict) -> tuple[Project, list[str]]:
    """A loopml project with one FeatureView per view of the spec, applied; returns it and the refs."""
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
    result = Project(directory)
    result.apply([user, *views])
    return result, [f"{view['name']}:{f}" for view in spec["views"] for f in view["features"]]


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
