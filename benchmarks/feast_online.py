"""Feast's side of benchmarks/features_online.py, run with the Feast virtual environment's Python.

Defines the same 5 views over the same Parquet files in a Feast repository, materializes them to each online
store asked for, and measures `FeatureStore.get_online_features` in-process and `feast serve` over HTTP with the
same open-loop load. Writes its latencies, sampled values and Feast's version as JSON for the caller to check.

    .bench/feast/bin/python benchmarks/feast_online.py --data-dir D --work-dir W --end 2026-11-22T00:00:00+00:00 \\
        --sample-users 1,2 --output feast.json
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import subprocess
import sys
import time
import uuid
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import feast
import openloop
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

VIEWS, FEATURES = 5, 10
warnings.filterwarnings("ignore", category=DeprecationWarning)  # raised inside Feast's dependencies


def feature_refs() -> list[str]:
    return [f"view{v}:f{v}_{i}" for v in range(VIEWS) for i in range(FEATURES)]


def write_repo(repo: Path, project: str, backend: str, redis: str) -> FeatureStore:
    """A Feast repository (feature_store.yaml) with a local registry and the DuckDB offline store."""
    repo.mkdir(parents=True)
    if backend == "sqlite":
        online = f"  type: sqlite\n  path: {repo / 'online.db'}\n"
    else:
        online = f"  type: redis\n  connection_string: {redis}\n"
    (repo / "feature_store.yaml").write_text(
        f"project: {project}\nprovider: local\nregistry: {repo / 'registry.db'}\n"
        f"online_store:\n{online}offline_store:\n  type: duckdb\nentity_key_serialization_version: 3\n"
    )
    return FeatureStore(repo_path=str(repo))


def definitions(data_dir: Path) -> list[Entity | FeatureView]:
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    views = [
        FeatureView(
            name=f"view{v}",
            entities=[user],
            ttl=timedelta(days=1),
            schema=[Field(name="user_id", dtype=Int64)]
            + [Field(name=f"f{v}_{i}", dtype=Float64) for i in range(FEATURES)],
            source=FileSource(path=str(data_dir / f"view{v}.parquet"), timestamp_field="event_timestamp"),
            online=True,
        )
        for v in range(VIEWS)
    ]
    return [user, *views]


def in_process_values(store: FeatureStore, user: int) -> dict[str, Any]:
    found = store.get_online_features(features=feature_refs(), entity_rows=[{"user_id": user}]).to_dict()
    return {name: values[0] for name, values in found.items() if name != "user_id"}


def http_values(client: openloop.JSONPoster, user: int) -> dict[str, Any]:
    """Feast answers column-major: results[i] holds metadata.feature_names[i] for every entity row."""
    answer = json.loads(client.post({"features": feature_refs(), "entities": {"user_id": [user]}}))
    names = answer["metadata"]["feature_names"]
    found = {name: result["values"][0] for name, result in zip(names, answer["results"], strict=True)}
    statuses = {result["statuses"][0] for result in answer["results"]}
    assert statuses == {"PRESENT"}, statuses
    return {name: value for name, value in found.items() if name != "user_id"}


def start_server(repo: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`feast serve` with one worker (like `loopml serve`), no access log and no worker recycling."""
    port = openloop.free_port()
    command = [
        str(Path(sys.executable).with_name("feast")),
        *("-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port)),
        *("--workers", "1", "--no-access-log", "--max-requests", "0"),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`feast serve` exited with {process.returncode}; see {log}.")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"`feast serve` was not ready within 120 s; see {log}.")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def delete_redis_keys(redis_host: str, project: str) -> None:
    """Feast's Redis keys end with the project name."""
    import redis

    host, port = redis_host.split(",")[0].split(":")
    client = redis.Redis(host=host, port=int(port))
    keys = list(client.scan_iter(match=f"*{project}", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    client.close()


def run_backend(args: argparse.Namespace, backend: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    project = f"loopml_bench_{uuid.uuid4().hex[:10]}"
    repo = args.work_dir / backend
    store = write_repo(repo, project, backend, args.redis)
    try:
        store.apply(definitions(args.data_dir))
        started = time.perf_counter()
        store.materialize(start_date=args.end - timedelta(days=1), end_date=args.end)
        print(f"  Feast {backend}: materialized in {time.perf_counter() - started:.1f} s", flush=True)
        samples = [
            {"backend": backend, "mode": "in-process", "user": u, "values": in_process_values(store, u)}
            for u in args.sample_users
        ]
        refs = feature_refs()

        def call(user: int) -> object:
            return store.get_online_features(features=refs, entity_rows=[{"user_id": user}]).to_dict()

        rows = [openloop.measure("Feast", backend, "in-process", lambda: call, args, workers=1)]
        process, url = start_server(repo, args.work_dir / f"serve-{backend}.log")
        try:
            client = openloop.JSONPoster(url, "/get-online-features")
            samples += [
                {"backend": backend, "mode": "http", "user": u, "values": http_values(client, u)}
                for u in args.sample_users
            ]

            def connection() -> openloop.Call:
                return openloop.poster_call(
                    url,
                    "/get-online-features",
                    lambda user: {"features": refs, "entities": {"user_id": [user]}},
                )

            rows.append(openloop.measure("Feast", backend, "http", connection, args, workers=args.in_flight))
        finally:
            stop_server(process)
    finally:
        if backend == "redis":
            delete_redis_keys(args.redis, project)
    return rows, samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="view0.parquet … view4.parquet")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument(
        "--end", type=datetime.fromisoformat, required=True, help="materialize up to this time"
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["sqlite", "redis"])
    parser.add_argument("--redis", default="127.0.0.1:6379", help="Feast's Redis connection_string")
    parser.add_argument("--sample-users", type=lambda s: [int(u) for u in s.split(",")], required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    skipped = []
    for backend in args.backends:
        if backend == "redis" and importlib.util.find_spec("redis") is None:
            skipped.append("redis: the Feast venv lacks the redis client (feast[redis])")
            print(f"  Feast skipped on {skipped[-1]}", flush=True)
            continue
        backend_rows, backend_samples = run_backend(args, backend)
        rows += backend_rows
        samples += backend_samples
    args.output.write_text(
        json.dumps(
            {"feast_version": feast.__version__, "results": rows, "samples": samples, "skipped": skipped},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
