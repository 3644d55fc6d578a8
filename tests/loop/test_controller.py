from datetime import timedelta

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.errors import ValidationError
from loopml.loop.controller import NONE, SKIPPED, Controller
from loopml.loop.policy import DriftRetrainPolicy, get_policy, save_policy
from loopml.project import Project
from loopml.serving.app import create_app
from tests.helpers import START, build_world, train_and_deploy


@pytest.fixture
def policy() -> DriftRetrainPolicy:
    return DriftRetrainPolicy("toy_drift", "toy", "toy", min_window_rows=50, drift_window=timedelta(days=1))


def serve_events(project: Project, clock, events: pd.DataFrame, amount_factor: float = 1.0) -> None:
    with TestClient(create_app(project)) as client:
        for row in events.itertuples(index=False):
            clock.set(row.event_timestamp.to_pydatetime())
            body = {
                "entities": {"user_id": int(row.user_id)},
                "inputs": {"amount": float(row.amount) * amount_factor, "channel": row.channel},
            }
            client.post("/v1/endpoints/toy/predict", json=body).raise_for_status()
        client.post("/v1/predictions/flush").raise_for_status()


def test_policy_round_trips_and_validates(project: Project, policy) -> None:
    save_policy(project.metadata, policy)
    assert get_policy(project.metadata, "toy_drift") == (policy, {})
    with pytest.raises(ValidationError, match="evaluation_window"):
        DriftRetrainPolicy(
            "p", "m", "e", training_window=timedelta(days=1), evaluation_window=timedelta(days=2)
        )


def test_controller_skips_without_a_champion_or_enough_traffic(project: Project, policy) -> None:
    save_policy(project.metadata, policy)
    [decision] = Controller(project).tick()
    assert decision.action == SKIPPED and "no alias 'champion'" in decision.reason
    events = build_world(project)
    train_and_deploy(project, events)
    [decision] = Controller(project).tick()
    assert decision.action == SKIPPED and "only 0 predictions" in decision.reason
    assert [e.kind for e in project.metadata.events(subject_prefix="policy:toy_drift")][-2:] == [
        "policy.skipped"
    ] * 2


def test_controller_sees_no_drift_on_familiar_traffic_and_drift_on_shifted_traffic(
    project: Project, clock, policy
) -> None:
    events = build_world(project, days=12)
    train_and_deploy(project, events[events.event_timestamp < START + pd.Timedelta(days=9)])
    save_policy(project.metadata, policy)
    project.materialize(end=START + pd.Timedelta(days=9), start=START)
    day_ten = events[
        (events.event_timestamp >= START + pd.Timedelta(days=9))
        & (events.event_timestamp < START + pd.Timedelta(days=10))
    ]
    serve_events(project, clock, day_ten)
    clock.set(START + pd.Timedelta(days=10))
    [calm] = Controller(project).tick()
    assert calm.action == NONE, calm.reason
    assert calm.evidence["drifted_features"] == []

    project.materialize(end=START + pd.Timedelta(days=10))
    day_eleven = events[
        (events.event_timestamp >= START + pd.Timedelta(days=10))
        & (events.event_timestamp < START + pd.Timedelta(days=11))
    ]
    serve_events(project, clock, day_eleven, amount_factor=5.0)
    clock.set(START + pd.Timedelta(days=11))
    [drifted] = Controller(project).tick()
    assert drifted.evidence["drifted_features"] == ["amount"]
    assert drifted.evidence["p_values"]["amount"] < policy.p_value_threshold
    # Drift share 1/3 passes the threshold 0.3; with no labels yet, the retrain waits instead of guessing.
    assert drifted.action == "deferred" and "no labelled predictions" in drifted.reason
    assert project.registry.get_alias("toy", "champion") == 1

    report = CliRunner().invoke(
        app,
        [
            "monitor",
            "drift",
            "toy",
            "--window",
            "1d",
            "--at",
            clock.now().isoformat(),
            "-p",
            str(project.path),
        ],
    )
    assert report.exit_code == 0, report.output
    amount_row = next(line for line in report.output.splitlines() if "amount" in line)
    assert "ks" in amount_row and "critical" in amount_row
    assert "drift share: 0.33 (1 of 3 features)" in report.output


def test_a_failing_policy_is_recorded_and_does_not_stop_the_others(
    project: Project, policy, monkeypatch
) -> None:
    events = build_world(project)
    train_and_deploy(project, events)
    save_policy(project.metadata, policy)
    save_policy(project.metadata, DriftRetrainPolicy("other", "toy", "toy"))

    import loopml.loop.controller as controller_module

    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("snapshot store unreachable")
        return original(*args, **kwargs)

    original = controller_module.model_drift
    monkeypatch.setattr(controller_module, "model_drift", broken)
    first, second = Controller(project).tick()
    assert (first.policy, first.action) == ("other", "failed")
    assert "RuntimeError: snapshot store unreachable" in first.reason
    assert (second.policy, second.action) == ("toy_drift", SKIPPED)
    assert project.metadata.events(kind="policy.failed")[0].subject == "policy:other"
