"""Experiment tracking: loopml against MLflow 3.x on the same kind of database, each system in its own process.

a. Logging from a training loop: STEPS steps x KEYS metrics (100k values by default), each step doing the
   same small numpy work (a stand-in for a training step, which releases the GIL as real ones do). Reported:
   the time the loop spent inside logging calls ("blocked"), the loop's wall time against the same loop without
   logging, and the time until every value is durably written (after loopml's end_run / MLflow's end_run and
   flush_async_logging). Systems: loopml `log_metrics` (one call per step) and `log_metric` (one call per
   value); MLflow `mlflow.log_metrics` per step, synchronous (its default) and with `synchronous=False`.
   Agreement: each side's database must hold all STEPS x KEYS values of the run (counted in SQL).
b. Search over RUNS runs, each with 3 params (model among 10 values, lr, depth), 3 metrics (auc, loss, f1;
   one logged value each) and a tag (team): `params.model = 'gbm' and metrics.auc > 0.9`, ordered by
   `metrics.f1 DESC`, 100 results, the same filter string for both (MLflow's grammar is loopml's). Median of
   SEARCH_REPEATS calls after one warm-up call. Agreement: both return the same runs in the same order
   (matched by run name).

How the stores are filled for (b): creating 100k runs through MLflow's API would take hours, so each side's
schema is created by its own code (loopml: `MetadataStore.migrate()`; MLflow: `MlflowClient.create_experiment`
on the empty database, which runs MLflow's own migrations), then the same generated rows are bulk-inserted
into its own tables with executemany in one transaction: loopml's runs, run_params, run_metrics,
run_latest_metrics, run_tags; MLflow's runs, params, metrics, latest_metrics, tags (with the
`mlflow.runName` tag MLflow's create_run sets). Both use a SQLite file (MLflow's default backend).

MLflow runs from its own venv (`make .bench/mlflow/.installed`); without it only loopml is measured.
Prints a table with medians and ratios and writes benchmarks/results/registry.json.

    .venv/bin/python benchmarks/registry.py                        # 100k metrics, 100k runs
    .venv/bin/python benchmarks/registry.py --quick                # toy sizes, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MLFLOW_PYTHON = HERE.parent / ".bench" / "mlflow" / "bin" / "python"
FILTER = "params.model = 'gbm' and metrics.auc > 0.9"
ORDER_BY = ["metrics.f1 DESC"]
MAX_RESULTS = 100
MODELS = ["gbm", "rf", "logreg", "svm", "knn", "mlp", "xgb", "lgbm", "nb", "tree"]
TEAMS = ["risk", "fraud", "growth", "ads", "search"]
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WORK_SIZE = 96  # numpy matrix side for one "training step"

LOGGING = {
    "loopml-batch": ("loopml log_metrics (1 call/step)", "loopml"),
    "loopml-single": ("loopml log_metric (1 call/value)", "loopml"),
    "mlflow-sync": ("MLflow log_metrics, synchronous", "mlflow"),
    "mlflow-async": ("MLflow log_metrics, synchronous=False", "mlflow"),
}
SEARCH = {
    "loopml-search": ("loopml search_runs", "loopml"),
    "mlflow-search": ("MLflow MlflowClient.search_runs", "mlflow"),
}


# ------------------------------------------------------------------------------------------------ shared


def synthetic_runs(count: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """The runs both stores get for the search benchmark, identical on each side (stdlib random only)."""
    rng = random.Random(seed)
    for i in range(count):
        yield {
            "name": f"run-{i:06d}",
            "start_ms": START_MS + i * 1000,
            "params": {
                "model": rng.choice(MODELS),
                "lr": str(rng.choice([0.3, 0.1, 0.03, 0.01, 0.003])),
                "depth": str(rng.randint(2, 12)),
            },
            "metrics": {"auc": 0.5 + rng.random() / 2, "loss": rng.random(), "f1": rng.random()},
            "team": rng.choice(TEAMS),
        }


def training_step() -> Callable[[], None]:
    """One step's work: a few small matrix products (numpy releases the GIL, as training libraries do)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.random((WORK_SIZE, WORK_SIZE)), rng.random((WORK_SIZE, WORK_SIZE))

    def work() -> None:
        c = a
        for _ in range(4):
            c = (c @ b) / WORK_SIZE

    return work


def timed_loop(
    steps: int, keys: int, log: Callable[[int, dict[str, float]], None] | None
) -> dict[str, float]:
    """Run the training loop; seconds spent in `log` calls and in the whole loop."""
    work = training_step()
    names = [f"metric_{k:03d}" for k in range(keys)]
    blocked = 0.0
    started = time.perf_counter()
    for step in range(steps):
        work()
        values = {name: step + k / 1000 for k, name in enumerate(names)}
        if log is not None:
            before = time.perf_counter()
            log(step, values)
            blocked += time.perf_counter() - before
    return {"loop_seconds": time.perf_counter() - started, "blocked_seconds": blocked}


def database_url(directory: Path, name: str, args: argparse.Namespace) -> str:
    """A SQLite file in `directory`, or with --postgres a schema of this process's own (dropped at its exit)."""
    if not args.postgres:
        return f"sqlite:///{directory / f'{name}.db'}"
    import atexit

    import sqlalchemy as sa

    schema = f"bench_{name}_{os.getpid()}"
    admin = sa.create_engine(args.postgres)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    atexit.register(drop)
    return f"{args.postgres}?options=-csearch_path%3D{schema}"


def analyze_if_postgres(conn: Any, tables: list[str]) -> None:
    """PostgreSQL's autovacuum would gather statistics on freshly loaded tables within a minute; do it now,
    for both systems alike. SQLite gathers none by itself and neither system asks it to."""
    if conn.dialect.name == "postgresql":
        for table in tables:
            conn.exec_driver_sql(f"ANALYZE {table}")


def count_rows(url: str, sql: str, **params: Any) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar())
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------- loopml workers


def loopml_logging(directory: Path, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    from loopml.clock import SystemClock
    from loopml.schema import register_all_tables
    from loopml.storage.metadata import MetadataStore
    from loopml.training.tracking import Tracker

    register_all_tables()
    url = database_url(directory, "loopml", args)
    metadata = MetadataStore(url, SystemClock())
    metadata.migrate()
    tracker = Tracker(metadata)
    repeats = []
    for _ in range(args.log_repeats):
        run_id = tracker.start_run("bench", {"steps": args.steps}, {})
        if mode == "batch":

            def log(step: int, values: dict[str, float], run_id: str = run_id) -> None:
                tracker.log_metrics(run_id, values, step=step)
        else:

            def log(step: int, values: dict[str, float], run_id: str = run_id) -> None:
                for key, value in values.items():
                    tracker.log_metric(run_id, key, value, step=step)

        started = time.perf_counter()
        result = timed_loop(args.steps, args.keys, log)
        tracker.end_run(run_id)  # writes everything still queued first
        result["durable_seconds"] = time.perf_counter() - started
        result["stored"] = count_rows(url, "SELECT count(*) FROM run_metrics WHERE run_id = :r", r=run_id)
        result["baseline_seconds"] = timed_loop(args.steps, args.keys, None)["loop_seconds"]
        repeats.append(result)
    tracker.close()
    return {"repeats": repeats}


def loopml_search(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from loopml.clock import SystemClock
    from loopml.schema import register_all_tables
    from loopml.storage.metadata import MetadataStore
    from loopml.training.run_search import search_plan, search_runs
    from loopml.training.tables import run_latest_metrics, run_metrics, run_params, run_tags, runs

    register_all_tables()
    metadata = MetadataStore(database_url(directory, "loopml", args), SystemClock())
    metadata.migrate()
    started = time.perf_counter()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rows: dict[str, list[dict[str, Any]]] = {
        "runs": [],
        "params": [],
        "metrics": [],
        "latest": [],
        "tags": [],
    }
    for i, run in enumerate(synthetic_runs(args.runs)):
        run_id = f"{i:08d}-0000-4000-8000-000000000000"
        at = epoch + timedelta(milliseconds=run["start_ms"])
        rows["runs"].append(
            {
                "id": run_id,
                "pipeline": "bench",
                "name": run["name"],
                "status": "finished",
                "code_version": {},
                "started_at": at,
                "ended_at": at + timedelta(seconds=1),
            }
        )
        rows["params"] += [{"run_id": run_id, "key": k, "value": v} for k, v in run["params"].items()]
        metric_rows = [
            {"run_id": run_id, "key": k, "value": v, "step": 0, "ts": at} for k, v in run["metrics"].items()
        ]
        rows["metrics"] += metric_rows
        rows["latest"] += metric_rows
        rows["tags"].append({"run_id": run_id, "key": "team", "value": run["team"]})
    with metadata.begin() as conn:
        conn.execute(insert(runs), rows["runs"])
        conn.execute(insert(run_params), rows["params"])
        conn.execute(insert(run_metrics), rows["metrics"])
        conn.execute(insert(run_latest_metrics), rows["latest"])
        conn.execute(insert(run_tags), rows["tags"])
    with metadata.begin() as conn:
        analyze_if_postgres(conn, ["runs", "run_params", "run_metrics", "run_latest_metrics", "run_tags"])
    filled = time.perf_counter() - started

    def search() -> list[str]:
        return [run.name for run in search_runs(metadata, FILTER, ORDER_BY, MAX_RESULTS)]

    plan = search_plan(metadata, FILTER, ORDER_BY, MAX_RESULTS)
    return {**time_searches(search, args.search_repeats), "fill_seconds": filled, "plan": plan}


def time_searches(search: Callable[[], list[str]], repeats: int) -> dict[str, Any]:
    names = search()  # warm-up: caches, compiled statements, imports
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        search()
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "names": names}


# --------------------------------------------------------------------------------------- MLflow workers


def mlflow_client(directory: Path, args: argparse.Namespace) -> tuple[Any, str, str]:
    """A client on a fresh database in `directory`: a copy of `template` (an empty database MLflow has already
    migrated, which takes it 10 s or more) when given."""
    import logging

    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if args.template:
        shutil.copyfile(args.template, directory / "mlflow.db")
    url = database_url(directory, "mlflow", args)
    client = MlflowClient(tracking_uri=url)
    experiment_id = client.create_experiment("bench", artifact_location=str(directory / "mlartifacts"))
    return client, experiment_id, url


def mlflow_logging(directory: Path, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    import mlflow

    _, experiment_id, url = mlflow_client(directory, args)
    mlflow.set_tracking_uri(url)
    synchronous = mode == "sync"
    repeats = []
    for _ in range(args.log_repeats):
        run = mlflow.start_run(experiment_id=experiment_id)
        mlflow.log_params({"steps": args.steps})

        def log(step: int, values: dict[str, float]) -> None:
            mlflow.log_metrics(values, step=step, synchronous=synchronous)

        started = time.perf_counter()
        result = timed_loop(args.steps, args.keys, log)
        if not synchronous:
            mlflow.flush_async_logging()
        mlflow.end_run()
        result["durable_seconds"] = time.perf_counter() - started
        result["stored"] = count_rows(
            url, "SELECT count(*) FROM metrics WHERE run_uuid = :r", r=run.info.run_id
        )
        result["baseline_seconds"] = timed_loop(args.steps, args.keys, None)["loop_seconds"]
        repeats.append(result)
    return {"repeats": repeats, "mlflow_version": mlflow.__version__}


def mlflow_search(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    import mlflow
    import sqlalchemy as sa

    client, experiment_id, url = mlflow_client(directory, args)
    started = time.perf_counter()
    rows: dict[str, list[dict[str, Any]]] = {
        "runs": [],
        "params": [],
        "metrics": [],
        "latest": [],
        "tags": [],
    }
    artifacts = directory / "mlartifacts"
    for i, run in enumerate(synthetic_runs(args.runs)):
        uuid = f"{i:032x}"
        rows["runs"].append(
            {
                "run_uuid": uuid,
                "name": run["name"],
                "source_type": "LOCAL",
                "source_name": "",
                "entry_point_name": "",
                "user_id": "bench",
                "status": "FINISHED",
                "start_time": run["start_ms"],
                "end_time": run["start_ms"] + 1000,
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": f"{artifacts}/{uuid}/artifacts",
                "experiment_id": int(experiment_id),
            }
        )
        rows["params"] += [{"key": k, "value": v, "run_uuid": uuid} for k, v in run["params"].items()]
        metric_rows = [
            {"key": k, "value": v, "timestamp": run["start_ms"], "run_uuid": uuid, "step": 0, "is_nan": False}
            for k, v in run["metrics"].items()
        ]
        rows["metrics"] += metric_rows
        rows["latest"] += metric_rows
        rows["tags"] += [
            {"key": "team", "value": run["team"], "run_uuid": uuid},
            {"key": "mlflow.runName", "value": run["name"], "run_uuid": uuid},
        ]
    columns = {
        "runs": "run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, "
        "end_time, source_version, lifecycle_stage, artifact_uri, experiment_id",
        "params": "key, value, run_uuid",
        "metrics": "key, value, timestamp, run_uuid, step, is_nan",
        "latest_metrics": "key, value, timestamp, run_uuid, step, is_nan",
        "tags": "key, value, run_uuid",
    }
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table, source in (
            ("runs", "runs"),
            ("params", "params"),
            ("metrics", "metrics"),
            ("latest_metrics", "latest"),
            ("tags", "tags"),
        ):
            names = [c.strip() for c in columns[table].split(",")]
            quoted = ", ".join(f'"{n}"' for n in names)
            marks = ", ".join(f":{n}" for n in names)
            conn.execute(sa.text(f"INSERT INTO {table} ({quoted}) VALUES ({marks})"), rows[source])
    with engine.begin() as conn:
        analyze_if_postgres(conn, ["runs", "params", "metrics", "latest_metrics", "tags"])
    engine.dispose()
    filled = time.perf_counter() - started

    def search() -> list[str]:
        found = client.search_runs([experiment_id], FILTER, max_results=MAX_RESULTS, order_by=ORDER_BY)
        return [run.info.run_name for run in found]

    return {
        **time_searches(search, args.search_repeats),
        "fill_seconds": filled,
        "mlflow_version": mlflow.__version__,
    }


def mlflow_template(directory: Path) -> dict[str, Any]:
    """Let MLflow create and migrate an empty database, to be copied by the other MLflow workers."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}").search_experiments()
    return {}


def worker(args: argparse.Namespace) -> None:
    directory = Path(args.directory)
    task = args.task
    if task == "mlflow-template":
        result = mlflow_template(directory)
    elif task == "loopml-batch":
        result = loopml_logging(directory, args, "batch")
    elif task == "loopml-single":
        result = loopml_logging(directory, args, "single")
    elif task == "mlflow-sync":
        result = mlflow_logging(directory, args, "sync")
    elif task == "mlflow-async":
        result = mlflow_logging(directory, args, "async")
    elif task == "loopml-search":
        result = loopml_search(directory, args)
    else:
        result = mlflow_search(directory, args)
    from worker import peak_bytes  # benchmarks/worker.py: this process's resident high-water mark

    Path(args.out).write_text(json.dumps({**result, "peak_bytes": peak_bytes()}))


# ---------------------------------------------------------------------------------------------- driver


def run_worker(
    task: str, system: str, args: argparse.Namespace, timeout: float, directory: str | None = None
) -> dict[str, Any]:
    """One task in a fresh process (and a fresh database directory) of its system's interpreter."""
    python = str(MLFLOW_PYTHON) if system == "mlflow" else sys.executable
    with tempfile.TemporaryDirectory() as scratch:
        tmp = directory or scratch
        out = Path(tmp) / "result.json"
        command = [
            python,
            str(Path(__file__).resolve()),
            "--worker",
            task,
            "--directory",
            tmp,
            "--out",
            str(out),
            *size_flags(args),
            *(["--template", args.template] if args.template and system == "mlflow" else []),
        ]
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp, env=env)
        except subprocess.TimeoutExpired:
            return {"failure": f"stopped at the {timeout:g} s time limit"}
        if done.returncode != 0 or not out.exists():
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            return {"failure": f"exit {done.returncode}: " + "\n".join(tail)}
        return json.loads(out.read_text())


def size_flags(args: argparse.Namespace) -> list[str]:
    return [
        *(["--postgres", args.postgres] if args.postgres else []),
        "--steps",
        str(args.steps),
        "--keys",
        str(args.keys),
        "--runs",
        str(args.runs),
        "--log-repeats",
        str(args.log_repeats),
        "--search-repeats",
        str(args.search_repeats),
    ]


def summarise_logging(task: str, result: dict[str, Any], expected: int) -> dict[str, Any]:
    name = LOGGING[task][0]
    if "failure" in result:
        return {"task": task, "system": name, "failure": result["failure"]}
    repeats = result["repeats"]
    stored = [r["stored"] for r in repeats]
    assert all(s == expected for s in stored), f"{name}: stored {stored} values, expected {expected} per run"

    def median(key: str) -> float:
        return statistics.median(r[key] for r in repeats)

    return {
        "task": task,
        "system": name,
        "blocked_seconds": median("blocked_seconds"),
        "loop_seconds": median("loop_seconds"),
        "baseline_seconds": median("baseline_seconds"),
        "loop_overhead_seconds": statistics.median(
            r["loop_seconds"] - r["baseline_seconds"] for r in repeats
        ),
        "durable_seconds": median("durable_seconds"),
        "stored_per_run": expected,
        "repeats": len(repeats),
        "raw": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100, help="metrics logged per step")
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the stores searched")
    parser.add_argument("--log-repeats", type=int, default=3)
    parser.add_argument("--search-repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="toy sizes: 20 steps x 10 keys, 300 runs")
    parser.add_argument("--no-mlflow", action="store_true", help="measure loopml only")
    parser.add_argument("--only", choices=["logging", "search"], help="run one of the two benchmarks")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for one worker process")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "registry.json")
    parser.add_argument("--worker", dest="task", help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--template", help=argparse.SUPPRESS)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run both systems on PostgreSQL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test), each "
        "worker in a schema of its own; MLflow's venv needs psycopg",
    )
    args = parser.parse_args()
    if args.task:
        worker(args)
        return
    if args.quick:
        args.steps, args.keys, args.runs, args.log_repeats, args.search_repeats = 20, 10, 300, 2, 3

    systems = {"loopml"}
    mlflow_version = None
    if args.no_mlflow:
        pass
    elif not MLFLOW_PYTHON.exists() or not (MLFLOW_PYTHON.parent.parent / ".installed").exists():
        print(f"skipping MLflow: {MLFLOW_PYTHON.parent.parent} is missing (make .bench/mlflow/.installed)")
    else:
        systems.add("mlflow")
    template_dir = tempfile.TemporaryDirectory()
    if "mlflow" in systems and not args.postgres:
        made = run_worker("mlflow-template", "mlflow", args, args.timeout, template_dir.name)
        if "failure" in made:
            sys.exit(f"MLflow could not create its database: {made['failure']}")
        args.template = str(Path(template_dir.name) / "mlflow.db")
    expected = args.steps * args.keys
    print(
        f"a. logging {args.steps:,} steps x {args.keys} metrics = {expected:,} values, median of {args.log_repeats}; "
        f"b. search over {args.runs:,} runs, median of {args.search_repeats}; "
        + ("PostgreSQL" if args.postgres else "SQLite files")
    )
    logging_rows = []
    for task, (_, system) in LOGGING.items():
        if system in systems and args.only in (None, "logging"):
            result = run_worker(task, system, args, args.timeout)
            mlflow_version = result.get("mlflow_version", mlflow_version)
            logging_rows.append(summarise_logging(task, result, expected))
    search_rows = []
    for task, (name, system) in SEARCH.items():
        if system in systems and args.only in (None, "search"):
            result = run_worker(task, system, args, args.timeout)
            mlflow_version = result.get("mlflow_version", mlflow_version)
            if "failure" in result:
                search_rows.append({"task": task, "system": name, "failure": result["failure"]})
                continue
            search_rows.append(
                {
                    "task": task,
                    "system": name,
                    "median_seconds": statistics.median(result["seconds"]),
                    "seconds": result["seconds"],
                    "fill_seconds": result["fill_seconds"],
                    "returned": len(result["names"]),
                    "names": result["names"],
                    **({"plan": result["plan"]} if "plan" in result else {}),
                }
            )
    agreement = check_search(search_rows)
    ratios = ratios_of(logging_rows, search_rows)
    print_tables(logging_rows, search_rows, ratios, agreement)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "mlflow_version": mlflow_version,
                "filter": FILTER,
                "order_by": ORDER_BY,
                "logging": logging_rows,
                "search": [{k: v for k, v in row.items() if k != "names"} for row in search_rows],
                "search_agreement": agreement,
                "ratios": ratios,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")
    failures = [row for row in logging_rows + search_rows if "failure" in row]
    if failures:
        sys.exit("failed: " + "; ".join(f"{row['system']}: {row['failure']}" for row in failures))


def check_search(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """loopml and MLflow must return the same runs in the same order."""
    found = {row["task"]: row["names"] for row in rows if "names" in row}
    if len(found) < 2:
        return {"compared": False}
    ours, theirs = found["loopml-search"], found["mlflow-search"]
    same_set, same_order = set(ours) == set(theirs), ours == theirs
    print(f"  search agreement: {len(ours)} runs each, same set: {same_set}, same order: {same_order}")
    assert same_set and same_order, f"loopml returned {ours[:5]}..., MLflow {theirs[:5]}..."
    return {"compared": True, "runs": len(ours), "same_set": same_set, "same_order": same_order}


def ratios_of(logging_rows: list[dict[str, Any]], search_rows: list[dict[str, Any]]) -> dict[str, float]:
    """How many times longer MLflow takes than loopml (the per-step loopml call against each MLflow mode)."""
    by_task = {row["task"]: row for row in logging_rows + search_rows if "failure" not in row}
    ratios: dict[str, float] = {}
    ours = by_task.get("loopml-batch")
    for task in ("mlflow-sync", "mlflow-async"):
        if ours and task in by_task:
            for key in ("blocked_seconds", "durable_seconds"):
                ratios[f"{task}/{key}"] = by_task[task][key] / ours[key]
    if "loopml-search" in by_task and "mlflow-search" in by_task:
        ratios["search"] = (
            by_task["mlflow-search"]["median_seconds"] / by_task["loopml-search"]["median_seconds"]
        )
    return ratios


def print_tables(
    logging_rows: list[dict[str, Any]],
    search_rows: list[dict[str, Any]],
    ratios: dict[str, float],
    agreement: dict[str, Any],
) -> None:
    print(f"  {'logging':<40} {'blocked':>9} {'loop':>9} {'no-log':>9} {'durable':>9} {'stored':>9}")
    for row in logging_rows:
        if "failure" in row:
            print(f"  {row['system']:<40} {row['failure']}")
            continue
        print(
            f"  {row['system']:<40} {row['blocked_seconds']:8.3f}s {row['loop_seconds']:8.3f}s "
            f"{row['baseline_seconds']:8.3f}s {row['durable_seconds']:8.3f}s {row['stored_per_run']:>9,}"
        )
    print(f"  {'search':<40} {'median':>9} {'fill':>9} {'returned':>9}")
    for row in search_rows:
        if "failure" in row:
            print(f"  {row['system']:<40} {row['failure']}")
            continue
        print(
            f"  {row['system']:<40} {row['median_seconds']:8.4f}s {row['fill_seconds']:8.1f}s {row['returned']:>9}"
        )
    for name, ratio in ratios.items():
        print(f"  MLflow / loopml, {name}: x{ratio:,.1f}")


if __name__ == "__main__":
    main()
