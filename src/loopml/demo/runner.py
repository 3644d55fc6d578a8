"""`loopml demo`: train v1, serve it over HTTP on loopback, let the world change, and let the loop react.

Everything runs on a simulated clock shared through a file by the demo, the `loopml serve` child process and
the controller: each request is sent at its transaction's time, labels arrive when their chargebacks do, the
feature job and the retraining policy run at the end of each simulated day, and rollouts are analysed every
simulated hour. A retrained candidate that passes the gate goes shadow → canary → promoted; a few days later
the demo rolls out a deliberately wrong candidate (trained on inverted labels), which the canary analysis
rolls back on its own.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loopml.clock import FileClock
from loopml.config import write_config
from loopml.data.snapshots import get_snapshot
from loopml.delivery.rollouts import (
    PROMOTED,
    SHADOW_PHASE,
    Rollout,
    RolloutSpec,
    list_rollouts,
    start_rollout,
    tick_rollouts,
)
from loopml.demo import features as demo_features
from loopml.demo.report import write_report
from loopml.demo.world import World, WorldConfig, generate
from loopml.loop.controller import ROLLING_OUT, Controller, Decision
from loopml.loop.policy import DriftRetrainPolicy, save_policy
from loopml.loop.retrain import prepare_retrain, score_version
from loopml.project import Project
from loopml.serving.endpoints import deploy
from loopml.serving.server import ServerProcess
from loopml.training.evaluation import classification_metrics
from loopml.training.pipeline import TrainingSpec

MODEL = "fraud-detector"
ENDPOINT = "fraud"
FEEDBACK_CHUNK = 2000
# The demo's traffic is about a dozen transactions an hour: a half-day shadow, then half the traffic.
ROLLOUT = {
    "steps": [50.0, 100.0],
    "shadow_minutes": 360.0,
    "min_step_minutes": 360.0,
    "min_step_requests": 60,
    "analysis_interval_minutes": 60.0,
    "analysis": {"min_requests": 60},
}


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("loopml-demo")
    world: WorldConfig = field(default_factory=WorldConfig)
    warmup_days: int = 30
    bootstrap_days: int = 21
    recency_half_life_days: float | None = 7.0
    policy: dict[str, Any] = field(
        default_factory=lambda: {
            "drift_share_threshold": 0.3,
            "p_value_threshold": 0.001,
            "drift_window": timedelta(days=2),
            "evaluation_window": timedelta(days=3),
            "cooldown": timedelta(days=4),
            "min_delta": 0.02,
            "rollout": ROLLOUT,
        }
    )
    bad_candidate_after_days: int = 2  # after the first promotion, a wrong candidate goes out

    @property
    def live_start_day(self) -> int:
        return self.warmup_days + self.bootstrap_days


@dataclass(frozen=True)
class DayRecord:
    day: int
    date: str
    requests: int
    served_versions: list[int]
    decision: Decision


@dataclass(frozen=True)
class RolloutRecord:
    """One rollout decision, at simulated time, with the candidate's share of traffic after it."""

    time: str
    rollout: int
    candidate: int
    action: str
    reason: str
    share: float


@dataclass(frozen=True)
class DemoResult:
    config: DemoConfig
    days: list[DayRecord]
    change_date: str
    first_drift_date: str | None
    promotions: list[tuple[str, int]]
    rollouts: list[RolloutRecord]
    versions: list[dict[str, Any]]
    comparison: pd.DataFrame
    served: pd.DataFrame
    report_path: Path
    seconds: float


def run_demo(config: DemoConfig | None = None, console: Console | None = None) -> DemoResult:
    """Run the whole loop; returns what happened, and writes an HTML report into the work directory."""
    config = config or DemoConfig()
    started = time.monotonic()
    world = generate(config.world)
    project, clock = _new_project(config, world)
    live_start = world.day_start(config.live_start_day)
    _land_events(project, world, 0, config.live_start_day)
    project.apply(demo_features.DEFINITIONS, actor="demo")
    project.materialize(end=live_start)
    v1 = _train_first_model(project, world, config)
    save_policy(
        project.metadata, DriftRetrainPolicy("fraud_drift", MODEL, ENDPOINT, **config.policy), actor="demo"
    )

    server = ServerProcess(config.workdir, clock_file=clock.path)
    base_url = server.start()
    if console:
        console.print(f"Serving [bold]{MODEL}[/] v{v1.version} at {base_url}/v1/endpoints/{ENDPOINT}/predict")
    try:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            days, served, rollouts = _simulate(project, clock, world, config, client, console)
    finally:
        server.stop()

    change_date = world.day_start(config.world.change_day).date().isoformat()
    promotions = [
        (d.date, d.decision.evidence["candidate_version"]) for d in days if d.decision.action == PROMOTED
    ] + [(r.time[:10], r.candidate) for r in rollouts if r.action == PROMOTED]
    drifted = [
        d for d in days if d.decision.evidence.get("drift_share", 0) > config.policy["drift_share_threshold"]
    ]
    comparison = _compare_versions(project, world, config, promotions)
    live = world.transactions.set_index("transaction_id").loc[served.transaction_id].reset_index()
    served["v1_output"] = score_version(project, v1, live, "event_timestamp").to_numpy()
    result = DemoResult(
        config=config,
        days=days,
        change_date=change_date,
        first_drift_date=drifted[0].date if drifted else None,
        promotions=promotions,
        rollouts=rollouts,
        versions=_versions(project),
        comparison=comparison,
        served=served,
        report_path=config.workdir.resolve() / "report.html",
        seconds=time.monotonic() - started,
    )
    write_report(result, project)
    project.close()
    clock.close()
    return result


def _new_project(config: DemoConfig, world: World) -> tuple[Project, FileClock]:
    if config.workdir.exists():
        shutil.rmtree(config.workdir)
    write_config(config.workdir, "loopml-demo")
    clock = FileClock(
        config.workdir / ".loopml" / "clock", start=world.day_start(config.warmup_days).to_pydatetime()
    )
    return Project(config.workdir, clock=clock), clock


def _land_events(project: Project, world: World, first_day: int, end_day: int) -> None:
    """Write the transactions of days [first_day, end_day) and the labels delivered in them to the lake.

    Labels reach the system with the feedback sent at the end of the day they arrive.
    """
    tx = world.transactions
    start, end = world.day_start(first_day), world.day_start(end_day)
    happened = tx[(tx.event_timestamp >= start) & (tx.event_timestamp < end)]
    delivered_at = tx.label_available_at.dt.ceil("D")
    delivered = tx[(delivered_at > start) & (delivered_at <= end)].assign(delivered_at=delivered_at)
    name = f"{start:%Y%m%d}-{end:%Y%m%d}.parquet"
    for directory, rows in (
        ("transactions", happened[["transaction_id", "user_id", "merchant_id", "amount", "event_timestamp"]]),
        ("labels", delivered[["merchant_id", "event_timestamp", "delivered_at", "is_fraud"]]),
    ):
        target = project.path / "data" / directory
        target.mkdir(parents=True, exist_ok=True)
        temporary = target / f".{name}.tmp"
        rows.to_parquet(temporary, index=False)
        temporary.replace(target / name)


def _transaction_event(row: Any) -> dict[str, Any]:
    return {
        "user_id": row.user_id,
        "event_timestamp": row.event_timestamp.to_pydatetime(),
        "amount": row.amount,
    }


def _train_first_model(project: Project, world: World, config: DemoConfig) -> Any:
    live_start = world.day_start(config.live_start_day)
    tx = world.transactions
    history = tx[
        (tx.event_timestamp >= world.day_start(config.warmup_days))
        & (tx.event_timestamp < live_start)
        & (tx.label_available_at <= live_start)
    ]
    spec = TrainingSpec(
        model_name=MODEL,
        features=demo_features.FRAUD_SERVICE.features,
        request_features=demo_features.REQUEST_FEATURES,
        label="is_fraud",
        estimator="loopml.demo.model:make_estimator",
        recency_half_life_days=config.recency_half_life_days,
    )
    entity_df = history[
        ["user_id", "merchant_id", "amount", "merchant_category", "event_timestamp", "is_fraud"]
    ]
    trained = project.train(spec, entity_df.reset_index(drop=True))
    version = project.registry.register(
        trained, actor="demo", reason="first model, trained on labelled history"
    )
    project.registry.set_alias(
        MODEL, "champion", version.version, actor="demo", reason="first model goes live"
    )
    deploy(project.metadata, project.registry, ENDPOINT, MODEL, "champion", actor="demo")
    return version


def _simulate(
    project: Project,
    clock: FileClock,
    world: World,
    config: DemoConfig,
    client: httpx.Client,
    console: Console | None,
) -> tuple[list[DayRecord], pd.DataFrame, list[RolloutRecord]]:
    """Send each hour's traffic (analysing rollouts after it), deliver due labels, run the feature job and a
    policy tick at the end of each day, and send out a wrong candidate a few days after the first promotion.

    Returns a record per day, what was served per transaction (output and true label) and the rollout log.
    """
    tx = world.transactions
    controller = Controller(project)
    prediction_ids: dict[int, str] = {}
    labelled: set[int] = set()
    records, served, rollouts = [], [], []
    bad_candidate_day: int | None = None
    live_days = range(config.live_start_day, config.world.days)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=False,
    ) as progress:
        task = progress.add_task("simulated days", total=len(live_days), status="")
        for day in live_days:
            day_start, day_end = world.day_start(day), world.day_start(day + 1)
            if day == bad_candidate_day:
                if _roll_out_a_wrong_candidate(project, config, day_start):
                    rollouts.append(_started(project))
                else:
                    bad_candidate_day += 1  # a rollout is still going on: try again tomorrow
            versions = []
            for hour in range(24):
                hour_start = day_start + pd.Timedelta(hours=hour)
                hour_end = hour_start + pd.Timedelta(hours=1)
                this_hour = tx[(tx.event_timestamp >= hour_start) & (tx.event_timestamp < hour_end)]
                for row in this_hour.itertuples(index=False):
                    clock.set(row.event_timestamp.to_pydatetime())
                    answer = _predict(client, row)
                    # The transaction joins its user's stream once scored, so the next one sees it online.
                    project.push("user_transactions", [_transaction_event(row)])
                    prediction_ids[row.transaction_id] = answer["prediction_id"]
                    served.append(
                        (row.transaction_id, day_start.date().isoformat(), answer["output"], row.is_fraud)
                    )
                    versions.append(answer["model_version"])
                clock.set(hour_end.to_pydatetime())
                for moved in _analyse_rollouts(project, client):
                    rollouts.append(moved)
                    if moved.action == PROMOTED and bad_candidate_day is None:
                        bad_candidate_day = day + config.bad_candidate_after_days

            clock.set(day_end.to_pydatetime())
            due = tx[(tx.label_available_at <= day_end) & tx.transaction_id.isin(prediction_ids.keys())]
            due = due[~due.transaction_id.isin(labelled)]
            _send_feedback(
                client,
                [
                    (prediction_ids[t], float(y))
                    for t, y in zip(due.transaction_id, due.is_fraud, strict=True)
                ],
            )
            labelled.update(due.transaction_id)
            client.post("/v1/predictions/flush").raise_for_status()
            _land_events(project, world, day, day + 1)
            project.materialize(end=day_end.to_pydatetime())

            decision = controller.tick()[0]
            if decision.action == PROMOTED:
                _wait_for_version(client, decision.evidence["candidate_version"])
            if decision.action == ROLLING_OUT:
                rollouts.append(_started(project))
            records.append(
                DayRecord(day, day_start.date().isoformat(), len(versions), sorted(set(versions)), decision)
            )
            share = decision.evidence.get("drift_share")
            status = (
                f"{day_start:%b %d}  v{max(versions)}  drift {share:.2f}  {decision.action}"
                if share is not None and versions
                else ""
            )
            progress.update(task, advance=1, status=status)
    columns = ["transaction_id", "date", "output", "is_fraud"]
    return records, pd.DataFrame(served, columns=columns), rollouts


def _analyse_rollouts(project: Project, client: httpx.Client) -> list[RolloutRecord]:
    """An hourly rollout tick, after the hour's predictions are in the log."""
    if not list_rollouts(project, endpoint=ENDPOINT, active_only=True):
        return []
    client.post("/v1/predictions/flush").raise_for_status()
    decisions = tick_rollouts(project)
    current = {r.id: r for r in list_rollouts(project, endpoint=ENDPOINT)} if decisions else {}
    moved = []
    for decision in decisions:
        rollout = current[decision.rollout]
        if decision.action == PROMOTED:
            _wait_for_version(client, rollout.candidate_version)
        moved.append(_record(project, rollout, decision.action, decision.reason))
    return moved


def _started(project: Project) -> RolloutRecord:
    rollout = list_rollouts(project, endpoint=ENDPOINT, active_only=True)[0]
    return _record(project, rollout, "started", rollout.reason)


def _record(project: Project, rollout: Rollout, action: str, reason: str) -> RolloutRecord:
    """The decision, with the candidate's share of served traffic as the rollout now stands."""
    if not rollout.active:
        share = 100.0 if rollout.state == PROMOTED else 0.0
    else:
        share = 0.0 if rollout.phase == SHADOW_PHASE else rollout.spec.steps[rollout.step]
    return RolloutRecord(
        project.clock.now().strftime("%Y-%m-%d %H:%M"),
        rollout.id,
        rollout.candidate_version,
        action,
        reason,
        share,
    )


def _roll_out_a_wrong_candidate(project: Project, config: DemoConfig, at: pd.Timestamp) -> bool:
    """Train a candidate on the champion's newest labelled data with the labels inverted, and roll it out
    straight to the canary: the analysis must take it back. False when it cannot go out today."""
    if list_rollouts(project, endpoint=ENDPOINT, active_only=True):
        return False
    policy = DriftRetrainPolicy("fraud_drift", MODEL, ENDPOINT, **config.policy)
    data = prepare_retrain(project, policy, at.to_pydatetime())
    if isinstance(data, str):
        return False
    inverted = data.fit_rows.assign(**{data.spec.label: 1 - data.fit_rows[data.spec.label]})
    wrong = project.registry.register(
        project.train(data.spec, inverted),
        actor="demo",
        reason="a wrong candidate: trained on inverted labels",
    )
    spec = RolloutSpec.from_dict({**ROLLOUT, "shadow_minutes": 0.0})
    start_rollout(
        project, ENDPOINT, wrong.version, spec=spec, actor="demo", reason="a wrong candidate goes out"
    )
    return True


def _predict(client: httpx.Client, row: Any) -> dict[str, Any]:
    response = client.post(
        f"/v1/endpoints/{ENDPOINT}/predict",
        json={
            "entities": {"user_id": int(row.user_id), "merchant_id": int(row.merchant_id)},
            "inputs": {"amount": float(row.amount), "merchant_category": str(row.merchant_category)},
            "unit_id": str(row.user_id),
        },
    )
    response.raise_for_status()
    return response.json()


def _send_feedback(client: httpx.Client, labels: list[tuple[str, float]]) -> None:
    for start in range(0, len(labels), FEEDBACK_CHUNK):
        chunk = labels[start : start + FEEDBACK_CHUNK]
        client.post(
            "/v1/feedback", json=[{"prediction_id": p, "label": y} for p, y in chunk]
        ).raise_for_status()


def _wait_for_version(client: httpx.Client, version: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/endpoints/{ENDPOINT}").json()["model_version"] != version:
        if time.monotonic() > deadline:
            raise RuntimeError(f"The server did not switch to v{version} within {timeout} s.")
        time.sleep(0.05)


def _versions(project: Project) -> list[dict[str, Any]]:
    champion = project.registry.get_alias(MODEL, "champion")
    return [
        {
            "version": v.version,
            "created": v.created_at.date().isoformat(),
            "training_rows": _snapshot_rows(project, v.dataset_id),
            "validation_auc": v.metrics.get("roc_auc"),
            "gate": v.gate,
            "champion": v.version == champion,
        }
        for v in project.registry.list_versions(MODEL)
    ]


def _snapshot_rows(project: Project, dataset_id: str | None) -> int | None:
    return None if dataset_id is None else get_snapshot(project.metadata, dataset_id).n_rows


def _compare_versions(
    project: Project, world: World, config: DemoConfig, promotions: list[tuple[str, int]]
) -> pd.DataFrame:
    """ROC AUC and average precision of v1 and of each promoted version, before and after the change.

    "After" starts where the last champion's training data ends, so no version is scored on rows it saw.
    """
    tx = world.transactions
    change = world.day_start(config.world.change_day)
    after = change
    if promotions:
        final = project.registry.get_version(MODEL, promotions[-1][1])
        after = max(
            change,
            pd.Timestamp(get_snapshot(project.metadata, final.dataset_id).time_end) + pd.Timedelta(seconds=1),
        )
    periods = {
        "before the change": (world.day_start(config.live_start_day), change),
        "after the change": (after, world.day_start(config.world.days)),
    }
    rows = []
    for version_number in [1, *(v for _, v in promotions)]:
        version = project.registry.get_version(MODEL, version_number)
        for period, (start, end) in periods.items():
            frame = tx[(tx.event_timestamp >= start) & (tx.event_timestamp < end)].reset_index(drop=True)
            if frame.empty:
                continue
            scores = score_version(project, version, frame, "event_timestamp").to_numpy()
            metrics = classification_metrics(frame.is_fraud.to_numpy(), scores)
            rows.append(
                {
                    "version": version_number,
                    "period": period,
                    "from": start.strftime("%Y-%m-%d %H:%M"),
                    "to": (end - pd.Timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M"),
                    "rows": len(frame),
                    "roc_auc": metrics["roc_auc"],
                    "average_precision": metrics["average_precision"],
                }
            )
    return pd.DataFrame(rows)
