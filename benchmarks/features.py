"""Training-set retrieval: loopml's point-in-time join against the raw DuckDB ASOF floor.

Builds feature views of random data as Parquet, then times, on the same files:
- floor: one raw DuckDB ASOF query per view (latest row at or before the entity time; no ttl, no created time),
- loopml: `Project.get_historical_features` (ttl, created-time cutoff, ties, left join, row order kept).
Both must agree wherever the floor's row is within the ttl. Prints medians and the ratio, and writes
benchmarks/results/features.json.

    .venv/bin/python benchmarks/features.py                 # 1M entity rows, 3 views x 5M rows x 10 features
    .venv/bin/python benchmarks/features.py --entities 100000 --rows 500000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopml import Entity, FeatureView, Field, ParquetSource, Project
from loopml.config import write_config

START = pd.Timestamp("2026-01-01", tz="UTC")
DAYS = 90


def build(directory: Path, args: argparse.Namespace) -> tuple[list[FeatureView], pd.DataFrame]:
    rng = np.random.default_rng(0)
    user = Entity("user", ["user_id"])
    views = []
    for v in range(args.views):
        seconds = np.sort(rng.integers(0, DAYS * 86_400, args.rows))
        event = START + pd.to_timedelta(seconds, unit="s")
        columns = {
            "user_id": rng.integers(0, args.users, args.rows),
            "event_timestamp": event,
            "created_timestamp": event + pd.to_timedelta(rng.integers(0, 600, args.rows), unit="s"),
        }
        columns.update({f"f{v}_{i}": rng.random(args.rows) for i in range(args.features)})
        path = directory / f"view{v}"
        path.mkdir()
        pq.write_table(pa.table(columns), path / "part-0.parquet", row_group_size=500_000)
        schema = [Field(f"f{v}_{i}") for i in range(args.features)]
        source = ParquetSource(str(path / "*.parquet"), "event_timestamp", "created_timestamp")
        views.append(FeatureView(f"view{v}", [user], source, schema, ttl=timedelta(days=args.ttl_days)))
    entities = pd.DataFrame(
        {
            "user_id": rng.integers(0, args.users, args.entities),
            "event_timestamp": START
            + pd.to_timedelta(rng.integers(0, DAYS * 86_400, args.entities), unit="s"),
        }
    )
    return views, entities


def floor(views: list[FeatureView], entities: pd.DataFrame) -> pd.DataFrame:
    """One raw ASOF query per view, as a user would write it by hand."""
    with duckdb.connect() as conn:
        conn.execute("SET TimeZone='UTC'")
        conn.register("entities", entities.assign(r=np.arange(len(entities))))
        result = entities
        for view in views:
            names = ", ".join(f"f.{f}" for f in view.feature_names)
            frame = conn.execute(
                f"SELECT e.r, f.event_timestamp AS {view.name}_ts, {names} FROM entities AS e "
                f"ASOF LEFT JOIN read_parquet('{view.source.path}') AS f "
                "ON e.user_id = f.user_id AND e.event_timestamp >= f.event_timestamp ORDER BY r"
            ).df()
            result = pd.concat([result.reset_index(drop=True), frame.drop(columns=["r"])], axis=1)
        return result


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=5_000_000, help="feature rows per view")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--features", type=int, default=10, help="features per view")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--ttl-days", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "features.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        views, entities = build(directory, args)
        write_config(directory / "project", "bench")
        project = Project(directory / "project")
        project.apply([views[0].entities[0], *views])
        refs = [f"{v.name}:{f}" for v in views for f in v.feature_names]
        floor_seconds, raw = timed(lambda: floor(views, entities), args.repeats)
        loopml_seconds, ours = timed(lambda: project.get_historical_features(entities, refs), args.repeats)

    ttl = pd.Timedelta(days=args.ttl_days)
    for view in views:
        # The floor ignores ttl and created time; compare where both say the same row is the answer.
        fresh = raw[f"{view.name}_ts"].notna() & (
            entities.event_timestamp - raw[f"{view.name}_ts"] <= ttl - pd.Timedelta(minutes=10)
        )
        column = f"{view.name.replace('view', 'f')}_0"
        agree = np.isclose(raw.loc[fresh, column], ours.loc[fresh, column]).mean()
        assert agree > 0.99, f"{view.name}: only {agree:.1%} agree with the floor"

    rows = [
        {"system": "raw DuckDB ASOF (floor)", "median_seconds": floor_seconds, "ratio_to_floor": 1.0},
        {
            "system": "loopml get_historical_features",
            "median_seconds": loopml_seconds,
            "ratio_to_floor": loopml_seconds / floor_seconds,
        },
    ]
    print(
        f"{args.entities:,} entity rows x {args.views} views x {args.rows:,} rows x {args.features} features, "
        f"ttl {args.ttl_days} d, median of {args.repeats}"
    )
    for row in rows:
        print(f"  {row['system']:<34} {row['median_seconds']:7.2f} s   x{row['ratio_to_floor']:.2f}")
    args.output.write_text(
        json.dumps({"args": {**vars(args), "output": str(args.output)}, "results": rows}, indent=2)
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
