"""Retraining triggers (manual, schedule, consecutive drift windows, live metric) and retraining into a
rollout instead of a direct promotion, with one retrain per model at a time."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.delivery.rollouts import list_rollouts
from loopml.loop.controller import DEFERRED, NONE, PROMOTED, ROLLING_OUT, Controller
from loopml.loop.policy import DriftRetrainPolicy, get_policy, request_retrain, save_policy
from loopml.project import Project
from loopml.serving.prediction_log import LABEL_SCHEMA, LABELS, append_by_day, record_table
from tests.helpers import START, build_world, events_between, serve_events, train_and_deploy

LENIENT = {
    "min_window_rows": 20,
    "min_evaluation_rows": 30,
    "min_evaluation_positives": 2,
    "evaluation_window": timedelta(days=1),
    "training_window": timedelta(days=5),
    "drift_window": timedelta(days=1),
    "min_delta": -1.0,  # any candidate passes the gate: these tests are about what happens next
}


def serve_days(project: Project, clock, shifted_day: int | None = None) -> Project:
    """Days 9 to 11 served (amounts five times higher on `shifted_day`) and labelled; the champion trained
    on days 0 to 8."""
    events = build_world(project, days=12)
    train_and_deploy(project, events_between(events, 0, 9))
    project.materialize(end=START + pd.Timedelta(days=12), start=START)
    for day in (9, 10, 11):
        served = events_between(events, day, day + 1)
        ids = serve_events(project, clock, served, amount_factor=5.0 if day == shifted_day else 1.0)
        labels = [
            {"prediction_id": i, "label": float(b), "ts": START + pd.Timedelta(days=day + 1)}
            for i, b in zip(ids, served.is_bad, strict=True)
        ]
        append_by_day(project.offline, LABELS, record_table(labels, LABEL_SCHEMA))
    clock.set(START + pd.Timedelta(days=12))
    return project


@pytest.fixture
def labelled(project: Project, clock) -> Project:
    return serve_days(project, clock)


def policy(**changes) -> DriftRetrainPolicy:
    return DriftRetrainPolicy("toy_policy", "toy", "toy", **{**LENIENT, **changes})


def test_a_manual_request_retrains_once_without_drift(labelled: Project) -> None:
    save_policy(labelled.metadata, policy())
    [quiet] = Controller(labelled).tick()
    assert quiet.action == NONE
    request_retrain(labelled.metadata, "toy_policy", reason="new labels from the audit")
    [retrained] = Controller(labelled).tick()
    assert retrained.action == PROMOTED and retrained.evidence["triggers"] == ["manual request"]
    assert labelled.registry.get_alias("toy", "champion") == 2
    assert get_policy(labelled.metadata, "toy_policy")[1]["requested"] is False
    [after] = Controller(labelled).tick()  # the request is spent; drift alone waits out the cool-down
    assert after.action in (NONE, DEFERRED) and labelled.registry.get_alias("toy", "champion") == 2
    assert after.action == NONE or "within the cooldown" in after.reason


def test_a_schedule_retrains_every_period(labelled: Project, clock) -> None:
    save_policy(labelled.metadata, policy(every=timedelta(days=7), cooldown=timedelta(hours=1)))
    [first] = Controller(labelled).tick()
    assert first.action == PROMOTED and first.evidence["triggers"][0].startswith("schedule")
    clock.advance(timedelta(days=1))
    [waiting] = Controller(labelled).tick()
    assert waiting.action != PROMOTED


@pytest.mark.parametrize(("windows", "action"), [(1, PROMOTED), (2, NONE)])
def test_drift_must_hold_for_the_consecutive_windows(
    project: Project, clock, windows: int, action: str
) -> None:
    serve_days(project, clock, shifted_day=11)  # drift in the newest day only
    save_policy(project.metadata, policy(consecutive_windows=windows))
    [decision] = Controller(project).tick()
    assert decision.action == action, decision.reason
    if windows == 2:
        first, second = decision.evidence["window_shares"]
        assert first > 0.3 >= second and "in at least one of the last 2 windows" in decision.reason


def test_a_live_metric_below_its_floor_triggers(labelled: Project) -> None:
    save_policy(labelled.metadata, policy(metric_floor=0.999))
    [decision] = Controller(labelled).tick()
    assert decision.action == PROMOTED
    assert decision.evidence["live_metric"] < 0.999
    assert any(t.startswith("live roc_auc") for t in decision.evidence["triggers"])


def test_a_candidate_that_passes_the_gate_is_rolled_out_and_blocks_the_next_retrain(
    labelled: Project,
) -> None:
    save_policy(labelled.metadata, policy(rollout={"steps": [10, 50, 100], "shadow_minutes": 30}))
    request_retrain(labelled.metadata, "toy_policy")
    [decision] = Controller(labelled).tick()
    assert decision.action == ROLLING_OUT
    [rollout] = list_rollouts(labelled, endpoint="toy", active_only=True)
    assert rollout.candidate_version == decision.evidence["candidate_version"] and rollout.phase == "shadow"
    assert labelled.registry.get_alias("toy", "champion") == 1  # not promoted: the rollout decides
    request_retrain(labelled.metadata, "toy_policy")
    [blocked] = Controller(labelled).tick()
    assert blocked.action == DEFERRED and "one retrain at a time" in blocked.reason


def test_policy_show_and_trigger_from_the_command_line(labelled: Project) -> None:
    save_policy(labelled.metadata, policy(rollout={"steps": [10, 100]}))
    runner = CliRunner()
    shown = runner.invoke(app, ["policy", "show", "toy_policy", "-p", str(labelled.path)])
    assert shown.exit_code == 0 and "consecutive_windows" in shown.output and "rollout" in shown.output
    asked = runner.invoke(
        app, ["policy", "trigger", "toy_policy", "--reason", "audit", "-p", str(labelled.path)]
    )
    assert asked.exit_code == 0 and "requested" in asked.output
    assert get_policy(labelled.metadata, "toy_policy")[1]["requested"] is True
    kinds = [e.kind for e in labelled.metadata.events(subject_prefix="policy:toy_policy")]
    assert kinds[-1] == "policy.requested"
