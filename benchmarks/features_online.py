"""Online feature serving: one entity, 50 features across 5 views, against Feast on the same Parquet files.

For each online store (SQLite, Redis) and each mode (in-process call, HTTP to a running server), requests for
one random user arrive open-loop at a fixed Poisson rate (benchmarks/openloop.py) and latency counts from each
request's scheduled arrival, so a slow answer delays the ones behind it instead of hiding them. loopml is
measured here; Feast runs in its own virtual environment (.bench/feast) through benchmarks/feast_online.py.
Every system must return the Parquet files' latest values for a sample of users. Prints a table with the
ratio of Feast's p99 to loopml's and writes benchmarks/results/features_online.json.

    .venv/bin/python benchmarks/features_online.py                     # 10k users, 100 req/s, 60 s per run
    .venv/bin/python benchmarks/features_online.py --no-feast --duration 5 --backends sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openloop
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from loopml import Entity, FeatureView, Field, ParquetSource, Project
from loopml.config import CONFIG_FILE, write_config
from loopml.serving.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
FEAST_PYTHON = ROOT / ".bench" / "feast" / "bin" / "python"
REDIS_URL = os.environ.get("LOOPML_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
VIEWS, FEATURES = 5, 10


def write_sources(directory: Path, users: int, now: pd.Timestamp) -> dict[int, dict[str, float]]:
    """Two rows per user and view (the latest within 6 h of now); returns each user's latest values."""
    rng = np.random.default_rng(0)
    expected: dict[int, dict[str, float]] = {u: {} for u in range(users)}
    for v in range(VIEWS):
        latest = now - pd.to_timedelta(rng.integers(60, 6 * 3600, users), unit="s")
        older = latest - pd.to_timedelta(rng.integers(600, 12 * 3600, users), unit="s")
        columns: dict[str, Any] = {
            "user_id": np.concatenate([np.arange(users), np.arange(users)]),
            "event_timestamp": np.concatenate([older, latest]),
        }
        columns.update({f"f{v}_{i}": rng.random(2 * users) for i in range(FEATURES)})
        pq.write_table(pa.table(columns), directory / f"view{v}.parquet")
        for i in range(FEATURES):
            for user, value in enumerate(columns[f"f{v}_{i}"][users:]):
                expected[user][f"f{v}_{i}"] = float(value)
    return expected


def feature_views(data_dir: Path) -> list[FeatureView]:
    user = Entity("user", ["user_id"])
    return [
        FeatureView(
            f"view{v}",
            [user],
            ParquetSource(str(data_dir / f"view{v}.parquet"), "event_timestamp"),
            [Field(f"f{v}_{i}") for i in range(FEATURES)],
            ttl=timedelta(days=1),
        )
        for v in range(VIEWS)
    ]


def feature_refs() -> list[str]:
    return [f"view{v}:f{v}_{i}" for v in range(VIEWS) for i in range(FEATURES)]


def redis_reachable() -> str | None:
    """None when Redis answers, else why not."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc)
    finally:
        client.close()
    return None


def build_project(directory: Path, data_dir: Path, online: dict[str, str], now: pd.Timestamp) -> Project:
    """A project whose loopml.yaml names the online store, so `loopml serve` reads the same one."""
    write_config(directory, "bench")
    path = directory / CONFIG_FILE
    config = yaml.safe_load(path.read_text())
    config["online"].update(online)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    project = Project(directory)
    views = feature_views(data_dir)
    project.apply([views[0].entities[0], *views])
    written = project.materialize(end=now.to_pydatetime())
    assert all(n > 0 for n in written.values()), written
    return project


def check_values(found: dict[str, Any], expected: dict[str, float], where: str) -> None:
    """`found` maps feature name to value; it must equal the latest Parquet row exactly."""
    wrong = {name: (found.get(name), value) for name, value in expected.items() if found.get(name) != value}
    assert not wrong, (
        f"{where}: {len(wrong)} of {len(expected)} values differ, e.g. {next(iter(wrong.items()))}"
    )


def measure_in_process(
    project: Project, args: argparse.Namespace, backend: str, expected: dict[int, dict[str, float]]
) -> dict[str, Any]:
    refs = feature_refs()
    for user in args.sample_users:
        found = project.get_online_features({"user_id": [user]}, refs)
        assert all(s == ["present"] for s in found.statuses.values()), found.statuses
        values = {name: column[0] for name, column in found.values.items()}
        check_values(values, expected[user], f"loopml {backend} in-process, user {user}")

    def call(user: int) -> object:
        return project.get_online_features({"user_id": [user]}, refs)

    return openloop.measure("loopml", backend, "in-process", lambda: call, args, workers=1)


def measure_http(
    url: str, args: argparse.Namespace, system: str, backend: str, expected: dict[int, dict[str, float]]
) -> tuple[dict[str, Any], bytes]:
    """Open-loop POSTs to /v1/features/online at `url`; the row and one answer's bytes."""
    refs = feature_refs()
    client = openloop.JSONPoster(url, "/v1/features/online")
    for user in args.sample_users:
        answer = client.post({"entities": {"user_id": [user]}, "features": refs})
        features = json.loads(answer)["features"]
        values = {name: feature["values"][0] for name, feature in features.items()}
        if system == "loopml":
            check_values(values, expected[user], f"loopml {backend} http, user {user}")

    def connection() -> openloop.Call:
        return openloop.poster_call(
            url, "/v1/features/online", lambda user: {"entities": {"user_id": [user]}, "features": refs}
        )

    return openloop.measure(system, backend, "http", connection, args, workers=args.in_flight), answer


def measure_floor(args: argparse.Namespace, answer: bytes, directory: Path) -> dict[str, Any]:
    """benchmarks/http_floor.py as a child process, answering with `answer` under the same load."""
    path = directory / "answer.json"
    path.write_bytes(answer)
    port = openloop.free_port()
    script = Path(__file__).with_name("http_floor.py")
    process = subprocess.Popen([sys.executable, str(script), str(port), str(path)])
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{url}/v2/health/ready", process)
        return measure_http(url, args, "floor", "-", {})[0]
    finally:
        process.terminate()
        process.wait(30)


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The server for {url} exited with {process.returncode}.")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s.")


def run_loopml(
    args: argparse.Namespace, data_dir: Path, now: pd.Timestamp, expected: dict[int, dict[str, float]]
) -> list[dict[str, Any]]:
    rows = []
    for backend in args.backends:
        directory = data_dir.parent / f"loopml-{backend}"
        if backend == "sqlite":
            online = {"url": f"sqlite:///{directory / 'online.db'}"}
        else:
            online = {"url": REDIS_URL, "key_prefix": f"loopml-bench:{uuid.uuid4().hex[:12]}:"}
        project = build_project(directory, data_dir, online, now)
        try:
            rows.append(measure_in_process(project, args, backend, expected))
            server = ServerProcess(directory)
            try:
                row, answer = measure_http(server.start(), args, "loopml", backend, expected)
                rows.append(row)
            finally:
                server.stop()
        finally:
            if backend == "redis":
                project.online.clear()
            project.close()
    return [*rows, measure_floor(args, answer, data_dir.parent)]


def run_feast(
    args: argparse.Namespace, data_dir: Path, now: pd.Timestamp, expected: dict[int, dict[str, float]]
) -> dict[str, Any]:
    """Feast in its own virtual environment: its version, rows and skipped backends, its samples checked."""
    if not args.feast_python.exists():
        raise SystemExit(
            f"{args.feast_python} is missing: create it with `make .bench/feast/.installed`, or pass --no-feast."
        )
    output = data_dir.parent / "feast.json"
    redis_host = REDIS_URL.removeprefix("redis://").split("/")[0]
    command = [
        str(args.feast_python),
        str(Path(__file__).with_name("feast_online.py")),
        *("--data-dir", str(data_dir), "--work-dir", str(data_dir.parent / "feast")),
        *("--users", str(args.users), "--rate", str(args.rate), "--duration", str(args.duration)),
        *("--warmup", str(args.warmup), "--in-flight", str(args.in_flight), "--end", now.isoformat()),
        *("--backends", ",".join(args.backends), "--redis", redis_host, "--output", str(output)),
        *("--sample-users", ",".join(str(u) for u in args.sample_users)),
    ]
    subprocess.run(command, check=True)
    found = json.loads(output.read_text())
    for sample in found["samples"]:
        user = sample["user"]
        check_values(
            sample["values"], expected[user], f"Feast {sample['backend']} {sample['mode']}, user {user}"
        )
    return found


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feast's p99 over loopml's, for the same backend and mode (1.0 on loopml's rows)."""
    loopml = {(r["backend"], r["mode"]): r["p99_ms"] for r in rows if r["system"] == "loopml"}
    for row in rows:
        base = loopml.get((row["backend"], row["mode"]))
        row["feast_p99_over_loopml_p99"] = None if base is None else row["p99_ms"] / base
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\none user x {VIEWS * FEATURES} features ({VIEWS} views x {FEATURES}), {args.users:,} users; open loop: "
        f"Poisson arrivals at {args.rate:g} req/s for {args.duration:g} s after {args.warmup:g} s warm-up; "
        f"HTTP with {args.in_flight} keep-alive connections; latency from the scheduled arrival"
    )
    header = f"  {'system':<7} {'backend':<7} {'mode':<10} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8}"
    print(header + f" {'lag p99':>7}  Feast p99 / loopml p99")
    for r in rows:
        ratio = r["feast_p99_over_loopml_p99"]
        print(
            f"  {r['system']:<7} {r['backend']:<7} {r['mode']:<10} {r['achieved_rate']:7.1f} {r['p50_ms']:7.2f} "
            f"{r['p99_ms']:7.2f} {r['p999_ms']:8.2f} {r['send_lag_p99_ms']:7.2f}  "
            + ("" if ratio is None else f"x{ratio:.1f}" if ratio >= 0.1 else f"x{ratio:.1g}")
        )
    behind = [
        f"{r['system']} {r['backend']} {r['mode']}"
        for r in rows
        if r["achieved_rate"] < 0.95 * r["offered_rate"]
    ]
    if behind:
        print(f"  did not keep up with {args.rate:g} req/s (a queue built up): {', '.join(behind)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument(
        "--rate", type=float, default=100.0, help="requests per second, the same for every run"
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured per run")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of load before each run, not measured"
    )
    parser.add_argument(
        "--in-flight", type=int, default=8, help="HTTP connections (requests in flight at most)"
    )
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["sqlite", "redis"])
    parser.add_argument("--no-feast", action="store_true", help="measure loopml only")
    parser.add_argument("--feast-python", type=Path, default=FEAST_PYTHON, help="Python of the Feast venv")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "features_online.json"
    )
    args = parser.parse_args()
    unknown = set(args.backends) - {"sqlite", "redis"}
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}; use sqlite, redis or both")
    if "redis" in args.backends and (why := redis_reachable()) is not None:
        parser.error(f"Redis at {REDIS_URL} is not reachable ({why}); start it or pass --backends sqlite")
    args.sample_users = random.Random(1).sample(range(args.users), min(5, args.users))

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        now = pd.Timestamp.now(tz="UTC").floor("s")
        expected = write_sources(data_dir, args.users, now)
        rows = run_loopml(args, data_dir, now, expected)
        feast = {"feast_version": None, "results": [], "skipped": []}
        if not args.no_feast:
            feast = run_feast(args, data_dir, now, expected)
        rows += feast["results"]

    rows = with_ratios(rows)
    print_table(rows, args)
    for why in feast["skipped"]:
        print(f"  Feast not measured on {why}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "args": {**vars(args), "output": str(args.output)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "feast_version": feast["feast_version"],
        "feast_skipped": feast["skipped"],
        "results": rows,
    }
    args.output.write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
