"""Serving: `loopml serve` under open-loop load, and against `mlflow models serve` on the same model.

Three measurements, each on a server started for it (`loopml serve` through ServerProcess; MLflow's scoring
server from its own venv, .bench/mlflow):

1. many: MODELS endpoints (14; each its own registered model: scikit-learn pipelines of gradient-boosted
   trees with a category encoder, and LightGBM classifiers), reading 1 to 3 of 3 feature views each, one
   server. Every request names a random endpoint and a random user (`{"entities": {"user_id": U}, "inputs":
   {"amount": A, "channel": C}, "unit_id": "uU"}` to /v1/endpoints/NAME/predict): the server fetches the
   user's features from the online store (SQLite; Redis too when it answers on 127.0.0.1:6379), scores and
   logs the prediction. Rate search: the highest step of the rate ladder at which p99 stays within the SLO
   (10 ms). Target: 2,000 req/s.
2. mlflow: one scikit-learn Pipeline (StandardScaler + LogisticRegression on 8 numeric columns), saved by
   mlflow.sklearn in MLflow's venv, served as saved by `mlflow models serve --env-manager local` and, after
   `loopml models import` (loopml.registry.interop.import_model) and deploy, by `loopml serve`, both on
   `POST /invocations` with the same one-row `dataframe_split` bodies. Both must return the same predictions
   (and the model's own) on probe rows first. Rate search on each, over the same ladder and the same arrival
   schedules, so every rate both reached compares p50 and p99 at equal load. Target: loopml's rate >= 3x
   MLflow's.
3. cost: part 1's world at one fixed rate: the base server (logging on, no shadow), the same server with a
   shadow route on every endpoint mirroring 100% of the traffic to a second version of its model, and a
   server with prediction logging off (loopml.yaml `serving.log_predictions: false`). Runs alternate
   base/shadow on one server, REPEATS times each; p50 and p99 are medians over the repeats, with the spread
   of the base's p99 shown as the noise floor. Checked: the base logged rows, the shadow route scored
   (loopml_shadow_predictions_total moved), logging off logged nothing.

How load is made and measured (benchmarks/loadgen.py): arrivals follow a Poisson schedule fixed before the run
(the same seed for every system at a given rate); a generator process sends each arrival when it is due over
a pool of keep-alive connections, whatever the server is doing (open loop), and times it from its *scheduled*
arrival to the end of its answer, so queueing in the server, in the connection pool or in a late generator all
count. loopml runs as `loopml serve --workers 2 --pin-workers` (one process per core, each pinned to its own),
MLflow as `mlflow models serve -w 2` (the same number of uvicorn workers); `--workers 1` measures a single
process pinned to SERVER_CPUS. Each step is one continuous run: WARMUP s of load (not counted), then DURATION s measured. A step
passes when no request failed, p99 <= SLO and the achieved rate is >= 95% of the offered rate. The search
climbs the ladder until a step fails twice in a row (one retry, as the machine is noisy), then halves the
gap between the last passing and the failing rate REFINE times (so a server failing the first rung still
gets a figure), and reports the highest passing rate. The server's CPU time per request (its process tree's
user + system time over the run, divided by the requests answered) is reported too: unlike latency, it
hardly moves when other work shares the machine. The send lag (scheduled arrival to the write) and the generator's CPU use show whether the generator
kept up: a large latency with a small send lag is the server's. The server runs on SERVER_CPUS and the
generator on CLIENT_CPUS (by default cores 0 and 1 on a 2-core machine), set with sched_setaffinity;
servers get OMP_NUM_THREADS=1 (one-row predictions; LightGBM would otherwise spin threads on every core).
MLflow runs as `pip install mlflow` ships it: uvicorn without uvloop/httptools, access log on.

Prints the tables (medians and ratios) and writes benchmarks/results/serving.json.

    .venv/bin/python benchmarks/serving.py                          # everything at full size (6-10 minutes)
    .venv/bin/python benchmarks/serving.py --parts many --backends sqlite
    .venv/bin/python benchmarks/serving.py --parts mlflow --rates 100,200,400,800,1600,3200
    .venv/bin/python benchmarks/serving.py --quick                  # toy sizes, 1-2 minutes
    .venv/bin/python benchmarks/serving.py --check-generator        # the generators against a no-op server
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import loadgen
import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
MLFLOW_VENV = ROOT / ".bench" / "mlflow"
REDIS_URL = os.environ.get("LOOPML_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
LADDER = (250, 500, 750, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000)
QUICK_LADDER = (20, 40)
VIEWS = {
    "profile": ("account_age_days", "tenure_score", "country_risk", "segment_score"),
    "activity": ("txn_count_7d", "txn_count_30d", "amount_avg_30d", "declines_7d"),
    "risk": ("risk_score", "chargebacks_90d", "device_count", "ip_risk"),
}
CHANNELS = ("web", "app", "pos")
LIGHTGBM_PARAMS = {"n_estimators": 60, "num_leaves": 15, "n_jobs": 1, "verbose": -1}
SCORING_COLUMNS = tuple(f"x{i}" for i in range(8))
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
console = Console(width=150, highlight=False)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------------- load


def measure(server: Server, requests: list[bytes], rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """One continuous run at `rate`: WARMUP s of load that is not counted, then DURATION s measured; the
    measured figures, with the server's CPU time per request over the whole run (robust to other load on the
    machine, unlike latency).

    The schedule's seed depends on the rate only, so every system gets the same arrivals at a given rate.
    """
    offsets, picks = loadgen.schedule(rate, args.warmup + args.duration, len(requests), int(rate * 1000))
    cpu = server.cpu_seconds()
    result = loadgen.run(
        server.url,
        requests,
        offsets,
        picks,
        warmup=args.warmup,
        processes=args.generator_processes,
        connections=args.connections,
        cpus=args.client_cpus,
    )
    result["answered_with_warmup"] = result["ok"] + result["warmup_requests"] - result["warmup_errors"]
    result["server_cpu_ms_per_request"] = (
        1000 * (server.cpu_seconds() - cpu) / max(result["answered_with_warmup"], 1)
    )
    return {"rate": rate, **result}


def passes(result: dict[str, Any], slo_ms: float) -> bool:
    return (
        result["errors"] == 0
        and result["p99_ms"] is not None
        and result["p99_ms"] <= slo_ms
        and result["achieved_rate"] >= 0.95 * result["offered_rate"]
    )


def search(label: str, server: Server, requests: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    """Climb the rate ladder until a step fails twice in a row, then halve the gap between the last passing
    and the failing rate REFINE times; the steps and the highest passing rate (None if none passed)."""
    steps: list[dict[str, Any]] = []

    def step(rate: float, refining: bool) -> bool:
        result = measure(server, requests, rate, args)
        if not passes(result, args.slo_ms):
            time.sleep(1.0)  # let a backlog drain before the retry
            again = measure(server, requests, rate, args)
            again["retry_of"] = {k: result[k] for k in ("p50_ms", "p99_ms", "errors", "achieved_rate")}
            result = again
        result["passed"] = passes(result, args.slo_ms)
        result["refining"] = refining
        steps.append(result)
        show_step(label, result)
        return result["passed"]

    best, failed = 0.0, None
    for rate in args.rates:
        if not step(rate, refining=False):
            failed = rate
            break
        best = rate
    for _ in range(args.refine if failed is not None else 0):
        middle = round((best + failed) / 2 / 10) * 10  # a round number between the two
        if not best < middle < failed:
            break
        if step(middle, refining=True):
            best = middle
        else:
            failed = middle
    if failed is None:
        console.print(f"  {label}: passed the top of the ladder; raise --rates to find its limit")
    return {"steps": steps, "max_rate": best or None, "top_of_ladder": failed is None}


def show_step(label: str, r: dict[str, Any]) -> None:
    verdict = "ok" if r.get("passed", True) else "FAIL"
    if r["p99_ms"] is None:
        console.print(f"  {label} {r['rate']:>6g}/s: no answers ({r['first_error']}) {verdict}")
        return
    console.print(
        f"  {label} {r['rate']:>6g}/s: achieved {r['achieved_rate']:7.0f}/s, p50 {r['p50_ms']:6.2f} ms, "
        f"p99 {r['p99_ms']:7.2f} ms, send lag p99 {r['send_lag_p99_ms']:5.2f} ms, errors {r['errors']} {verdict}"
        + (f" ({r['first_error'].splitlines()[0][:120]})" if r["errors"] else "")
    )


# ------------------------------------------------------------------------------------------------ servers


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the block on `cpus`: a process started inside inherits them, with every thread it starts."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def single_threaded_math() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in SINGLE_THREADED}
    os.environ.update(SINGLE_THREADED)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class Server:
    """A running server: its URL and its process (whose whole process tree is the server)."""

    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time used so far by the process and its descendants (user + system, all threads)."""
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        tree, frontier = {self.pid}, [self.pid]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
            tree.update(children)
            frontier += children
        return sum(times.get(pid, 0.0) for pid in tree)


@contextlib.contextmanager
def loopml_server(directory: Path, args: argparse.Namespace) -> Iterator[Server]:
    """`loopml serve` for the project in `directory` (ServerProcess), on the server CPUs."""
    from loopml.serving.server import ServerProcess

    server = ServerProcess(directory, workers=args.workers, pin_workers=args.workers > 1)
    with pinned(args.server_cpus), single_threaded_math():
        url = server.start(timeout=300)
    try:
        assert server.process is not None
        yield Server(url, server.process.pid)
    finally:
        server.stop()


@contextlib.contextmanager
def mlflow_server(model_dir: Path, args: argparse.Namespace, log: Path) -> Iterator[Server]:
    """`mlflow models serve -m DIR --env-manager local -w WORKERS` from MLflow's venv, on the server CPUs (as
    many uvicorn workers as loopml gets)."""
    port = free_port()
    cpus = args.server_cpus
    env = {
        **os.environ,
        **SINGLE_THREADED,
        "PATH": f"{MLFLOW_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",  # it runs `uvicorn`
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
    }
    command = [str(MLFLOW_VENV / "bin" / "mlflow"), "models", "serve", "-m", str(model_dir)]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(args.workers)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: `mlflow` and the uvicorn it starts stop together
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/ping", process, log)
        yield Server(url, process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The server for {url} exited with {process.returncode}; see {log}.")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s; see {log}.")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def idle_cpu(server: Server, seconds: float) -> float:
    """The share of a core the server uses with no requests (route refreshes, log writers' timers): part of
    its CPU time per request at low rates."""
    before = server.cpu_seconds()
    time.sleep(seconds)
    return (server.cpu_seconds() - before) / seconds


def metric_sum(url: str, name: str) -> float:
    """The sum of a Prometheus counter's samples over all its labels (0 when the server has none)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name}{{", f"{name} "))
    )


# ---------------------------------------------------------------------------------- part 1: the world


@dataclass
class ServedModel:
    endpoint: str
    model_name: str
    features: list[str]  # feature refs, view:name
    request_features: list[str]


@dataclass
class World:
    directory: Path
    models: list[ServedModel]
    latest: pd.DataFrame  # each user's latest feature values (index user_id, one column per feature)
    users: int


def model_plan(count: int, sklearn: int) -> list[ServedModel]:
    """`count` models, `sklearn` of them (evenly spread) scikit-learn pipelines on numeric and categorical
    inputs (loopml's demo estimator: a category encoder and gradient-boosted trees), the others LightGBM
    classifiers on numeric inputs; each reads one, two or three of the views."""
    names = list(VIEWS)
    pipelines = {round(i * count / sklearn) for i in range(sklearn)} if sklearn else set()
    plan = []
    for k in range(count):
        views = [names[(k + j) % len(names)] for j in range(1 + k % 3)]
        refs = [f"{view}:{feature}" for view in views for feature in VIEWS[view]]
        lightgbm = k not in pipelines
        plan.append(
            ServedModel(
                endpoint=f"model_{k:02d}",
                model_name=f"{'lgbm' if lightgbm else 'sklearn'}_{k:02d}",
                features=refs,
                request_features=["amount"] if lightgbm else ["amount", "channel"],
            )
        )
    return plan


def write_views(directory: Path, users: int, now: pd.Timestamp) -> pd.DataFrame:
    """Two rows per user and view: one ten days old (what training joins) and the latest, within 6 hours of
    now (what serving reads); returns the latest values."""
    rng = np.random.default_rng(0)
    latest = pd.DataFrame(index=pd.RangeIndex(users, name="user_id"))
    for view, features in VIEWS.items():
        old = now - pd.Timedelta(days=10)
        recent = now - pd.to_timedelta(rng.integers(60, 6 * 3600, users), unit="s")
        frame = pd.DataFrame(
            {
                "user_id": np.concatenate([np.arange(users), np.arange(users)]),
                "event_timestamp": np.concatenate([np.full(users, old), recent]),
                **{f: rng.gamma(2.0, 1.0 + i, 2 * users).round(3) for i, f in enumerate(features)},
            }
        )
        path = directory / "data" / view
        path.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path / "part-0.parquet", index=False)
        for f in features:
            latest[f] = frame[f].to_numpy()[users:]
    return latest


def training_events(users: int, count: int, now: pd.Timestamp, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, count)
    amount = rng.lognormal(3, 1, count).round(2)
    return pd.DataFrame(
        {
            "user_id": user,
            "event_timestamp": now
            - pd.Timedelta(days=9)
            + pd.to_timedelta(np.sort(rng.integers(0, 7 * 86_400, count)), unit="s"),
            "amount": amount,
            "channel": rng.choice(CHANNELS, count),
            "is_bad": (rng.random(count) < 0.05 + 0.3 * (amount > 40) + 0.2 * (user % 7 == 0)).astype(int),
        }
    )


def build_world(directory: Path, args: argparse.Namespace) -> World:
    """A project with 3 feature views over USERS users, MODELS trained and deployed models (each with a second
    version under the alias `challenger`, for the shadow route), materialized to SQLite."""
    from loopml import Entity, FeatureView, Field, ParquetSource, Project
    from loopml.config import write_config
    from loopml.serving.endpoints import deploy
    from loopml.training import TrainingSpec

    started = time.perf_counter()
    write_config(directory, "bench")
    now = pd.Timestamp.now(tz="UTC").floor("s")
    latest = write_views(directory, args.users, now)
    user = Entity("user", ["user_id"])
    views = [
        FeatureView(
            name,
            [user],
            ParquetSource(f"data/{name}/*.parquet", "event_timestamp"),
            [Field(f) for f in features],
            ttl=timedelta(days=30),
        )
        for name, features in VIEWS.items()
    ]
    project = Project(directory)
    try:
        project.apply([user, *views])
        models = model_plan(args.models, min(args.sklearn_models, args.models))
        for k, model in enumerate(models):
            events = training_events(args.users, args.events, now, seed=k)
            lightgbm = model.model_name.startswith("lgbm")
            spec = TrainingSpec(
                model_name=model.model_name,
                features=tuple(model.features),
                request_features=tuple(model.request_features),
                label="is_bad",
                estimator="lightgbm:LGBMClassifier" if lightgbm else "loopml.demo.model:make_estimator",
                params=LIGHTGBM_PARAMS if lightgbm else {"max_iter": 30 + 5 * k, "categorical": ["channel"]},
            )
            trained = project.train(
                spec, events[["user_id", "event_timestamp", *model.request_features, "is_bad"]]
            )
            first = project.registry.register(trained, reason="serving benchmark")
            second = project.registry.register(trained, reason="serving benchmark: the shadow's version")
            project.registry.set_alias(model.model_name, "champion", first.version, reason="benchmark")
            project.registry.set_alias(model.model_name, "challenger", second.version, reason="benchmark")
            deploy(project.metadata, project.registry, model.endpoint, model.model_name, "champion")
        written = project.materialize(end=now.to_pydatetime())
        assert all(n == args.users for n in written.values()), written
    finally:
        project.close()
    console.print(
        f"built {len(models)} models on {len(VIEWS)} views x {args.users:,} users in "
        f"{time.perf_counter() - started:.0f} s"
    )
    return World(directory, models, latest, args.users)


def many_requests(
    world: World, args: argparse.Namespace
) -> tuple[list[bytes], list[tuple[ServedModel, dict]]]:
    """POOL requests per endpoint (random user, amount, channel), encoded once; and each one's body."""
    rng = np.random.default_rng(1)
    requests, bodies = [], []
    for model in world.models:
        for _ in range(args.pool):
            u = int(rng.integers(world.users))
            inputs: dict[str, Any] = {"amount": round(float(rng.lognormal(3, 1)), 2)}
            if "channel" in model.request_features:
                inputs["channel"] = str(rng.choice(CHANNELS))
            body = {"entities": {"user_id": u}, "inputs": inputs, "unit_id": f"u{u}"}
            bodies.append((model, body))
            path = f"/v1/endpoints/{model.endpoint}/predict"
            requests.append(loadgen.encode_post("127.0.0.1", path, json.dumps(body).encode()))
    return requests, bodies


def check_many(
    url: str, world: World, bodies: list[tuple[ServedModel, dict]], samples: int
) -> dict[str, Any]:
    """Every endpoint answers `samples` of its requests with what its model scores locally on the users'
    latest feature values (so the server fetched the right features from the online store)."""
    from loopml import Project
    from loopml.training.evaluation import predict_scores

    project = Project(world.directory)
    compared = 0
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for model in world.models:
                version = project.registry.resolve(f"{model.model_name}@champion")
                estimator = project.registry.load(version)
                mine = [body for served, body in bodies if served is model][:samples]
                for body in mine:
                    response = client.post(f"/v1/endpoints/{model.endpoint}/predict", json=body)
                    assert response.status_code == 200, (
                        f"{model.endpoint}: {response.status_code} {response.text}"
                    )
                    answer = response.json()
                    row = {**world.latest.loc[body["entities"]["user_id"]].to_dict(), **body["inputs"]}
                    frame = pd.DataFrame({c: [row[c]] for c in version.inputs})
                    expected = float(predict_scores(estimator, frame)[0])
                    assert answer["model_version"] == version.version, answer
                    assert np.isclose(answer["output"], expected, rtol=1e-9, atol=1e-12), (
                        f"{model.endpoint}, user {body['entities']['user_id']}: the server answered "
                        f"{answer['output']!r}, the model scores {expected!r} on the latest features"
                    )
                    compared += 1
    finally:
        project.close()
    return {"compared": compared, "endpoints": len(world.models)}


@contextlib.contextmanager
def online_store(world: World, backend: str) -> Iterator[None]:
    """Point the project's loopml.yaml at `backend` (materializing into Redis first), restored afterwards."""
    if backend == "sqlite":
        yield
        return
    from loopml import Project

    path = world.directory / "loopml.yaml"
    saved = path.read_text()
    config = yaml.safe_load(saved)
    config["online"] = {"url": REDIS_URL, "key_prefix": f"loopml-bench-serving:{uuid.uuid4().hex[:12]}:"}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    project = Project(world.directory)
    try:
        project.materialize(end=pd.Timestamp.now(tz="UTC").floor("s").to_pydatetime())
        yield
    finally:
        project.online.clear()
        project.close()
        path.write_text(saved)


def redis_unreachable() -> str | None:
    """None when Redis answers at REDIS_URL, else why not."""
    try:
        import redis
    except ImportError as exc:
        return str(exc)
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc)
    finally:
        client.close()
    return None


def part_many(world: World, args: argparse.Namespace) -> dict[str, Any]:
    requests, bodies = many_requests(world, args)
    runs = {}
    for backend in args.backends:
        console.print(f"[bold]many[/]: {len(world.models)} models, online store {backend}")
        with online_store(world, backend), loopml_server(world.directory, args) as server:
            agreement = check_many(server.url, world, bodies, args.samples)
            idle = idle_cpu(server, min(2.0, args.duration))
            runs[backend] = {
                "agreement": agreement,
                "idle_cpu": idle,
                **search(f"loopml {backend}", server, requests, args),
            }
    return {"models": [m.model_name for m in world.models], "requests_in_pool": len(requests), "runs": runs}


# ---------------------------------------------------------------------------- part 2: MLflow's server

SAVE_MLFLOW_MODEL = """
import json, sys
import numpy as np, pandas as pd, mlflow, sklearn
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

columns = json.loads(sys.argv[3])
rng = np.random.default_rng(7)
X = pd.DataFrame({c: rng.normal(0, 1 + i, 5000) for i, c in enumerate(columns)})
y = (X[columns[0]] + 0.5 * X[columns[1]] - 0.2 * X[columns[2]] + rng.normal(0, 1, len(X)) > 0).astype(int)
model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
mlflow.sklearn.save_model(model, sys.argv[1], signature=infer_signature(X, model.predict(X)))
probe = pd.DataFrame({c: rng.normal(0, 1 + i, 50) for i, c in enumerate(columns)})
json.dump({"rows": probe.values.tolist(), "labels": model.predict(probe).tolist(),
           "mlflow_version": mlflow.__version__, "sklearn_version": sklearn.__version__}, open(sys.argv[2], "w"))
"""


def save_mlflow_model(directory: Path) -> tuple[Path, dict[str, Any]]:
    model_dir, probe = directory / "mlflow-model", directory / "probe.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [
            str(MLFLOW_VENV / "bin" / "python"),
            "-c",
            SAVE_MLFLOW_MODEL,
            str(model_dir),
            str(probe),
            json.dumps(SCORING_COLUMNS),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"MLflow could not save the model: {done.stderr[-3000:]}")
    return model_dir, json.loads(probe.read_text())


def import_into_loopml(directory: Path, model_dir: Path) -> int:
    """A loopml project serving the MLflow model on one endpoint (`loopml models import`, then deploy)."""
    from loopml import Project
    from loopml.config import write_config
    from loopml.registry.interop import import_model
    from loopml.serving.endpoints import deploy

    write_config(directory, "bench-mlflow")
    project = Project(directory)
    try:
        version = import_model(project.registry, model_dir, name="scoring")
        project.registry.set_alias("scoring", "champion", version.version, reason="benchmark")
        deploy(project.metadata, project.registry, "scoring", "scoring", "champion")
        return version.version
    finally:
        project.close()


def split_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"dataframe_split": {"columns": list(SCORING_COLUMNS), "data": rows}}


def check_invocations(url: str, path: str, probe: dict[str, Any], system: str) -> dict[str, Any]:
    """The server's predictions for the probe rows, in one batch and one by one, are the model's."""
    expected = probe["labels"]
    with httpx.Client(base_url=url, timeout=30) as client:
        batch = client.post(path, json=split_body(probe["rows"]))
        if batch.status_code in (404, 405):
            return {"available": False, "why": f"POST {path} answered {batch.status_code}"}
        assert batch.status_code == 200, f"{system} {path}: {batch.status_code} {batch.text[:500]}"
        singles = []
        for row in probe["rows"][:10]:
            response = client.post(path, json=split_body([row]))
            assert response.status_code == 200, (
                f"{system} {path}: {response.status_code} {response.text[:500]}"
            )
            singles += predictions_of(response.json())
    got = predictions_of(batch.json())
    assert got == expected, f"{system} predicted {got[:10]}..., the model {expected[:10]}..."
    assert singles == expected[:10], f"{system} one row at a time: {singles}, the model {expected[:10]}"
    return {
        "available": True,
        "compared": len(expected) + len(singles),
        "answer": batch.json() if len(got) < 3 else None,
    }


def predictions_of(answer: Any) -> list[Any]:
    """MLflow's answer shape: {"predictions": [...]} (a bare list from old servers)."""
    values = answer["predictions"] if isinstance(answer, dict) else answer
    return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]


def part_mlflow(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    console.print(
        "[bold]mlflow[/]: the same scikit-learn Pipeline behind `mlflow models serve` and `loopml serve`"
    )
    model_dir, probe = save_mlflow_model(work)
    version = import_into_loopml(work / "loopml-scoring", model_dir)
    rng = np.random.default_rng(2)
    rows = [
        [float(v) for v in rng.normal(0, 1 + np.arange(len(SCORING_COLUMNS))).round(4)]
        for _ in range(args.pool)
    ]
    result: dict[str, Any] = {
        "mlflow_version": probe["mlflow_version"],
        "sklearn_version": probe["sklearn_version"],
        "loopml_version_imported": version,
        "payload": split_body(rows[:1]),
    }
    with mlflow_server(model_dir, args, work / "mlflow-serve.log") as server:
        result["mlflow_agreement"] = check_invocations(server.url, "/invocations", probe, "MLflow")
        requests = [
            loadgen.encode_post("127.0.0.1", "/invocations", json.dumps(split_body([r])).encode())
            for r in rows
        ]
        result["mlflow"] = {
            "idle_cpu": idle_cpu(server, min(2.0, args.duration)),
            **search("MLflow", server, requests, args),
        }
    path = args.invocations_path.format(endpoint="scoring")
    with loopml_server(work / "loopml-scoring", args) as server:
        agreement = check_invocations(server.url, path, probe, "loopml")
        result["loopml_agreement"] = agreement
        if agreement["available"]:
            requests = [
                loadgen.encode_post("127.0.0.1", path, json.dumps(split_body([r])).encode()) for r in rows
            ]
            result["loopml"] = {
                "idle_cpu": idle_cpu(server, min(2.0, args.duration)),
                **search("loopml", server, requests, args),
            }
        else:
            console.print(f"  loopml: {agreement['why']}; not measured (the MLflow scoring route is missing)")
    ours, theirs = result.get("loopml", {}).get("max_rate"), result["mlflow"]["max_rate"]
    result["ratio"] = ours / theirs if ours and theirs else None
    return result


# ------------------------------------------------------------------------------ part 3: shadow, logging


def set_shadows(world: World, on: bool) -> None:
    """A shadow route mirroring 100% of every endpoint's traffic to its model's `challenger` version (or
    none). The shadow form of deploy: deploy(..., alias, mode="shadow", weight=percent); weight 0 removes it."""
    from loopml import Project
    from loopml.serving.endpoints import deploy

    project = Project(world.directory)
    try:
        for model in world.models:
            deploy(
                project.metadata,
                project.registry,
                model.endpoint,
                model.model_name,
                "challenger",
                mode="shadow",
                weight=100.0 if on else 0.0,
            )
    finally:
        project.close()


def wait_for_shadows(url: str, world: World, on: bool, timeout: float = 15.0) -> None:
    """Until every endpoint reports a loaded shadow route (or none), as GET /v1/endpoints/NAME shows."""

    def shadow_loaded(name: str) -> bool:
        routes = httpx.get(f"{url}/v1/endpoints/{name}", timeout=10).json().get("routes", [])
        return any(r.get("mode") == "shadow" and r.get("model_version") is not None for r in routes)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(shadow_loaded(m.endpoint) == on for m in world.models):
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"The server did not {'load' if on else 'drop'} the shadow routes within {timeout:g} s."
    )


def logged_rows(url: str, world: World) -> int:
    """Rows in the prediction log after the server flushed what it had queued."""
    from loopml import Project

    httpx.post(f"{url}/v1/predictions/flush", timeout=120).raise_for_status()
    project = Project(world.directory)
    try:
        if not project.offline.exists("predictions"):
            return 0
        with project.offline.connect() as conn:
            return int(
                conn.execute(f"SELECT count(*) FROM {project.offline.scan('predictions')}").fetchone()[0]
            )
    finally:
        project.close()


@contextlib.contextmanager
def serving_setting(world: World, key: str, value: Any) -> Iterator[None]:
    path = world.directory / "loopml.yaml"
    saved = path.read_text()
    config = yaml.safe_load(saved)
    config.setdefault("serving", {})[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(saved)


def part_cost(world: World, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    console.print(
        f"[bold]cost[/]: shadow route and prediction logging at {rate:g} req/s, {args.repeats} repeats"
    )
    requests, _ = many_requests(world, args)
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "shadow": [], "no_log": []}
    checks: dict[str, Any] = {}
    with loopml_server(world.directory, args) as server:
        before = logged_rows(server.url, world)
        shadow_available = True
        for _ in range(args.repeats):
            runs["base"].append(measure(server, requests, rate, args))
            show_step("base", runs["base"][-1])
            if not shadow_available:
                continue
            try:
                set_shadows(world, on=True)
                wait_for_shadows(server.url, world, on=True)
            except (TypeError, RuntimeError, KeyError) as exc:
                shadow_available = False
                checks["shadow_unavailable"] = f"{type(exc).__name__}: {exc}"
                console.print(f"  shadow routes unavailable ({exc}); measuring the base only")
                continue
            mirrored = metric_sum(server.url, "loopml_shadow_predictions_total")
            runs["shadow"].append(measure(server, requests, rate, args))
            runs["shadow"][-1]["shadow_predictions"] = (
                metric_sum(server.url, "loopml_shadow_predictions_total") - mirrored
            )
            show_step("shadow", runs["shadow"][-1])
            set_shadows(world, on=False)
            wait_for_shadows(server.url, world, on=False)
        checks["logged_with_logging_on"] = logged_rows(server.url, world) - before
        checks["dropped_with_logging_on"] = metric_sum(server.url, "loopml_prediction_log_dropped_total")
    # Logging off is loopml.yaml's `serving.log_predictions: false`; `log_setting_honoured` checks it.
    with serving_setting(world, "log_predictions", False), loopml_server(world.directory, args) as server:
        before = logged_rows(server.url, world)
        for _ in range(args.repeats):
            runs["no_log"].append(measure(server, requests, rate, args))
            show_step("no log", runs["no_log"][-1])
        checks["logged_with_logging_off"] = logged_rows(server.url, world) - before
    checks["log_setting_honoured"] = checks["logged_with_logging_off"] == 0
    # every answered request and every shadow prediction is a row, unless the log queue dropped it
    answered = sum(r["answered_with_warmup"] for r in runs["base"] + runs["shadow"])
    mirrored = sum(r["shadow_predictions"] for r in runs["shadow"])
    checks["answered_with_logging_on"] = answered
    checks["shadow_predictions"] = mirrored
    checks["every_prediction_logged"] = (
        checks["logged_with_logging_on"] + checks["dropped_with_logging_on"] == answered + mirrored
    )
    if runs["shadow"]:
        checks["shadow_scored"] = all(r["shadow_predictions"] > 0 for r in runs["shadow"])
    summary = {name: summarise_repeats(rows) for name, rows in runs.items() if rows}
    base = summary["base"]["p99_ms"]
    for row in summary.values():
        row["p99_minus_base_ms"] = (
            row["p99_ms"] - base if row["p99_ms"] is not None and base is not None else None
        )
    return {"rate": rate, "repeats": args.repeats, "runs": runs, "summary": summary, "checks": checks}


def summarise_repeats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    p99s = [r["p99_ms"] for r in rows if r["p99_ms"] is not None]
    return {
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "p99_min_ms": min(p99s) if p99s else None,
        "p99_max_ms": max(p99s) if p99s else None,
        "achieved_rate": med("achieved_rate"),
        "send_lag_p99_ms": med("send_lag_p99_ms"),
        "server_cpu_ms_per_request": med("server_cpu_ms_per_request"),
        "errors": sum(r["errors"] for r in rows),
    }


# --------------------------------------------------------------------------------- generator self-check


ECHO_BODY = b'{"prediction_id":"0123456789abcdef0123456789abcdef","output":0.25}'


def echo_server(port: int) -> None:
    """A no-op HTTP server (asyncio protocol, uvloop when installed) answering every request at once."""
    import asyncio

    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(ECHO_BODY),
        ECHO_BODY,
    )

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15 :].split(b"\r\n")[0]) if at >= 0 else 0
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                self.transport.write(answer)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port)
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


def check_generator(args: argparse.Namespace) -> dict[str, Any]:
    """Both generators (loadgen's select loop and openloop.py's threads) against the no-op server."""
    import openloop

    port = free_port()
    cpus = args.server_cpus
    process = subprocess.Popen(
        [sys.executable, __file__, "--echo-server", str(port)],
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    url = f"http://127.0.0.1:{port}"
    body = json.dumps({"entities": {"user_id": 3}, "inputs": {"amount": 50.0, "channel": "web"}}).encode()
    requests = [loadgen.encode_post("127.0.0.1", "/v1/endpoints/m/predict", body)]
    rows = []

    def connection() -> openloop.Call:
        return openloop.poster_call(url, "/v1/endpoints/m/predict", lambda _: json.loads(body))

    try:
        time.sleep(1.0)
        for rate in args.rates:
            row = {
                "generator": "loadgen (select loop)",
                **measure(Server(url, process.pid), requests, rate, args),
            }
            row["passed"] = passes(row, args.slo_ms)
            rows.append(row)
            show_step(row["generator"], row)
            with pinned(args.client_cpus):
                threads = {"rate": rate, "users": 1, "workers": args.connections}
                openloop.run(connection, duration=args.warmup, **threads)
                usage = os.times()
                result = openloop.run(connection, duration=args.duration, **threads)
                spent = os.times()
            result["generator_cpu"] = (spent.user + spent.system - usage.user - usage.system) / args.duration
            row = {
                "generator": f"openloop.py ({args.connections} threads)",
                "rate": rate,
                **result,
                "ok": result["requests"] - result["errors"],
            }
            row["passed"] = passes(row, args.slo_ms)
            rows.append(row)
            show_step(row["generator"], row)
    finally:
        process.terminate()
        process.wait(10)
    return {"rows": rows}


# ----------------------------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


STEP_COLUMNS = ("system", "rate/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "lag p99 ms", "gen cpu")


def step_table(title: str, series: dict[str, dict[str, Any]]) -> Table:
    """One row per measured step; `srv ms/req` is the server's CPU time per request, `gen cpu` the share of a
    core the generator used."""
    table = Table(title=title, title_justify="left")
    for column in (*STEP_COLUMNS, "srv ms/req", "errors", "pass"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, run in series.items():
        for r in run["steps"]:
            table.add_row(
                name,
                f"{r['rate']:,g}",
                fmt(r["achieved_rate"], 0),
                fmt(r["p50_ms"]),
                fmt(r["p99_ms"]),
                fmt(r["p999_ms"]),
                fmt(r["send_lag_p99_ms"]),
                fmt(r.get("generator_cpu")),
                fmt(r.get("server_cpu_ms_per_request")),
                str(r["errors"]),
                "yes" if r["passed"] else "no",
            )
    idle = [f"{name} {run['idle_cpu']:.2f}" for name, run in series.items() if "idle_cpu" in run]
    if idle:
        table.caption = "share of a core each server uses idle: " + ", ".join(idle)
    return table


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    console.print(
        f"\nServing benchmark: open-loop Poisson arrivals, latency from each request's scheduled time; each step "
        f"{args.warmup:g} s warm-up + {args.duration:g} s measured; SLO p99 <= {args.slo_ms:g} ms; server CPUs "
        f"{sorted(args.server_cpus) if args.server_cpus else 'any'}, generator CPUs "
        f"{sorted(args.client_cpus) if args.client_cpus else 'any'}"
    )
    summary = Table(title="Highest rate with p99 <= SLO", title_justify="left")
    for column in ("measurement", "system", "req/s", "target", "verdict"):
        summary.add_column(column, justify="right" if column in ("req/s", "target") else "left")
    for name in ("many", "mlflow", "cost"):
        if "failure" in report.get(name, {}):
            console.print(f"[red]{name}: {report[name]['failure']}[/]")
    if "many" in report and "failure" not in report["many"]:
        many = report["many"]
        console.print(
            step_table(
                f"1. {len(many['models'])} models ({mix(many['models'])}), features from the online store, logging on",
                {f"loopml {b}": run for b, run in many["runs"].items()},
            )
        )
        for backend, run in many["runs"].items():
            rate = run["max_rate"]
            summary.add_row(
                f"{len(many['models'])} models",
                f"loopml, {backend}",
                highest(run),
                f"{args.target_rate:,g}",
                "met" if rate and rate >= args.target_rate else "not met",
            )
    if "mlflow" in report and "failure" not in report["mlflow"]:
        ml = report["mlflow"]
        series = {"MLflow": ml["mlflow"], **({"loopml": ml["loopml"]} if "loopml" in ml else {})}
        console.print(
            step_table("2. One scikit-learn Pipeline on POST /invocations (dataframe_split, 1 row)", series)
        )
        if "loopml" in ml:
            console.print(equal_rate_table(ml))
        summary.add_row("same model", f"MLflow {ml['mlflow_version']}", highest(ml["mlflow"]), "", "")
        ratio = ml["ratio"]
        summary.add_row(
            "same model",
            "loopml",
            highest(ml["loopml"]) if "loopml" in ml else "-",
            f"{args.target_ratio:g}x MLflow",
            "-"
            if ratio is None
            else f"x{ratio:.1f}, " + ("met" if ratio >= args.target_ratio else "not met"),
        )
    if "cost" in report and "failure" not in report["cost"]:
        console.print(cost_table(report["cost"]))
    console.print(summary)


def highest(run: dict[str, Any]) -> str:
    """The highest passing rate; `>= N` when the ladder ended before the server failed."""
    return ">= " * run["top_of_ladder"] + fmt(run["max_rate"], 0)


def mix(models: list[str]) -> str:
    sklearn = sum(name.startswith("sklearn") for name in models)
    return f"{sklearn} scikit-learn pipelines, {len(models) - sklearn} LightGBM"


def equal_rate_table(ml: dict[str, Any]) -> Table:
    table = Table(title="   p50 / p99 at equal rates (ms)", title_justify="left")
    for column in ("rate/s", "MLflow p50", "loopml p50", "MLflow p99", "loopml p99", "p99 MLflow / loopml"):
        table.add_column(column, justify="right")
    theirs = {r["rate"]: r for r in ml["mlflow"]["steps"]}
    for ours in ml["loopml"]["steps"]:
        other = theirs.get(ours["rate"])
        if other is None or other["p99_ms"] is None or ours["p99_ms"] is None:
            continue
        table.add_row(
            f"{ours['rate']:,g}",
            fmt(other["p50_ms"]),
            fmt(ours["p50_ms"]),
            fmt(other["p99_ms"]),
            fmt(ours["p99_ms"]),
            f"x{other['p99_ms'] / ours['p99_ms']:.1f}",
        )
    return table


def cost_table(cost: dict[str, Any]) -> Table:
    table = Table(
        title=f"3. Cost of a shadow route (100% mirrored) and of prediction logging at {cost['rate']:,g} req/s "
        f"(medians of {cost['repeats']})",
        title_justify="left",
    )
    columns = (
        "variant",
        "p50 ms",
        "p99 ms",
        "p99 range ms",
        "p99 - base ms",
        "lag p99 ms",
        "srv ms/req",
        "errors",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    names = {"base": "logging on, no shadow", "shadow": "+ shadow route", "no_log": "logging off"}
    for name, row in cost["summary"].items():
        table.add_row(
            names[name],
            fmt(row["p50_ms"]),
            fmt(row["p99_ms"]),
            f"{fmt(row['p99_min_ms'])}-{fmt(row['p99_max_ms'])}",
            fmt(row["p99_minus_base_ms"]),
            fmt(row["send_lag_p99_ms"]),
            fmt(row["server_cpu_ms_per_request"]),
            str(row["errors"]),
        )
    checks = cost["checks"]
    table.caption = (
        f"logging on: {checks['logged_with_logging_on']:,} rows logged for {checks['answered_with_logging_on']:,} "
        f"answers and {checks['shadow_predictions']:,.0f} shadow predictions, "
        f"{checks['dropped_with_logging_on']:,.0f} dropped; logging off: {checks['logged_with_logging_off']:,} rows"
        + ("" if checks["log_setting_honoured"] else " (serving.log_predictions is not honoured)")
    )
    return table


# ------------------------------------------------------------------------------------------------- main


def cpu_set(text: str) -> set[int] | None:
    """'0', '0,1', '0-3' or 'any' (no pinning)."""
    if text in ("", "any", "none"):
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        type=lambda s: s.split(","),
        default=["many", "mlflow", "cost"],
        help="which measurements, comma-separated: many, mlflow, cost",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes: 3 models, 100 users, 1 s steps")
    parser.add_argument("--models", type=int, default=14)
    parser.add_argument(
        "--sklearn-models",
        type=int,
        default=4,
        help="how many of the models are scikit-learn pipelines (the others are LightGBM)",
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=3000, help="labelled training rows per model")
    parser.add_argument("--pool", type=int, default=200, help="distinct request bodies per endpoint")
    parser.add_argument(
        "--backends",
        type=lambda s: s.split(","),
        default=None,
        help="online stores for part 1: sqlite,redis (default: both when Redis answers)",
    )
    parser.add_argument(
        "--rates",
        type=lambda s: [float(r) for r in s.split(",")],
        default=None,
        help=f"the rate ladder, req/s (default {','.join(map(str, LADDER))})",
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=2,
        help="steps halving the gap between the last passing and failing rate",
    )
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per step")
    parser.add_argument(
        "--warmup", type=float, default=1.5, help="seconds of unmeasured load before each step"
    )
    parser.add_argument("--slo-ms", type=float, default=10.0)
    parser.add_argument(
        "--cost-rate",
        type=float,
        default=1000.0,
        help="rate for part 3 (capped at half of part 1's SQLite maximum when that is lower)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant in part 3")
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections per generator process"
    )
    parser.add_argument("--generator-processes", type=int, default=1)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="loopml server processes (`loopml serve --workers N`; default 2, one per core here)",
    )
    parser.add_argument(
        "--server-cpus", default=None, help="CPUs for the server: '0', '0-1', 'any' (default 0)"
    )
    parser.add_argument("--client-cpus", default=None, help="CPUs for the load generator (default 1)")
    parser.add_argument(
        "--invocations-path",
        default="/invocations",
        help="loopml's MLflow scoring route ({endpoint} is replaced by the endpoint's name)",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="skip part 2")
    parser.add_argument(
        "--samples", type=int, default=3, help="requests per endpoint checked against the model"
    )
    parser.add_argument("--target-rate", type=float, default=2000.0)
    parser.add_argument("--target-ratio", type=float, default=3.0)
    parser.add_argument(
        "--check-generator",
        action="store_true",
        help="only measure the load generators against a no-op server",
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        return args
    unknown = set(args.parts) - {"many", "mlflow", "cost"}
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; use many, mlflow, cost")
    if args.quick:
        args.models, args.users, args.events, args.pool = min(args.models, 3), 100, 300, 20
        args.sklearn_models = min(args.sklearn_models, 1)
        args.duration, args.warmup, args.repeats, args.samples, args.refine = 1.0, 0.3, 1, 2, 0
        args.cost_rate = min(args.cost_rate, QUICK_LADDER[0])
        args.rates = args.rates or list(QUICK_LADDER)
    args.rates = args.rates or list(LADDER)
    if args.check_generator and args.rates == list(LADDER):
        args.rates = [1000, 2000, 3000, 4000, 6000]
    two = (os.cpu_count() or 1) >= 2
    server_default = "0" if two and args.workers == 1 else "any"  # several workers share every core
    args.server_cpus = cpu_set(args.server_cpus if args.server_cpus is not None else server_default)
    args.client_cpus = cpu_set(args.client_cpus if args.client_cpus is not None else ("1" if two else "any"))
    if args.backends is None:
        why = redis_unreachable()
        args.backends = ["sqlite"] if why else ["sqlite", "redis"]
        if why:
            console.print(f"Redis at {REDIS_URL} is not reachable ({why}): SQLite only")
    elif "redis" in args.backends and (why := redis_unreachable()):
        parser.error(f"Redis at {REDIS_URL} is not reachable ({why}); start it or pass --backends sqlite")
    name = "serving_generator.json" if args.check_generator else "serving.json"
    args.output = args.output or Path(__file__).parent / "results" / name
    return args


def main() -> None:
    args = arguments()
    if args.echo_server:
        echo_server(args.echo_server)
        return
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    if args.check_generator:
        report["generator_check"] = check_generator(args)
        series: dict[str, dict[str, Any]] = {}
        for row in report["generator_check"]["rows"]:
            series.setdefault(row["generator"], {"steps": []})["steps"].append(row)
        console.print(step_table("Load generators against a no-op server", series))
        failures: list[str] = []
    else:
        failures = run_parts(args, report)
    report["code"] = code_version()
    report["args"] = {
        k: sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str))
    console.print(f"wrote {args.output}")
    if failures:
        sys.exit("failed: " + "; ".join(failures))


def code_version() -> str | None:
    """The commit measured, with `-dirty` when the working tree had changes."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def run_parts(args: argparse.Namespace, report: dict[str, Any]) -> list[str]:
    """Run the requested parts into `report`; a part that fails is recorded as such and the others still run.
    Returns the failures."""
    started = time.perf_counter()
    failures: list[str] = []

    def attempt(name: str, run: Any, *run_args: Any) -> Any:
        try:
            report[name] = run(*run_args)
        except Exception as exc:  # one failing part must not lose the others' figures
            report[name] = {"failure": f"{type(exc).__name__}: {exc}"}
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            console.print(f"[red]{name} failed[/]:\n{traceback.format_exc()}")
        return report[name]

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        world = None
        if "many" in args.parts or "cost" in args.parts:
            world = build_world(work / "many", args)
        if "many" in args.parts:
            attempt("many", part_many, world, args)
        if "mlflow" in args.parts and args.no_mlflow:
            console.print("skipping MLflow (--no-mlflow)")
        elif "mlflow" in args.parts and not (MLFLOW_VENV / ".installed").exists():
            console.print(f"skipping MLflow: {MLFLOW_VENV} is missing (make .bench/mlflow/.installed)")
        elif "mlflow" in args.parts:
            attempt("mlflow", part_mlflow, work, args)
        if "cost" in args.parts:
            rate = args.cost_rate
            best = report.get("many", {}).get("runs", {}).get("sqlite", {}).get("max_rate")
            if best and best / 2 < rate:
                rate = max(best // 2, args.rates[0] / 2)
            attempt("cost", part_cost, world, args, rate)
    report["seconds"] = time.perf_counter() - started
    print_report(report, args)
    return failures


if __name__ == "__main__":
    main()
