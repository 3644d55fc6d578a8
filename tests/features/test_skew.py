"""The skew check end to end: online reads through the feature server are logged, then replayed offline."""

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from loopml.cli.main import app as cli
from loopml.clock import SimulatedClock
from loopml.errors import NotFoundError, ValidationError
from loopml.features import FeatureService, FeatureView, Field, ParquetSource
from loopml.features.skew import (
    OFFLINE_MISSING,
    ONLINE_MISSING,
    ONLINE_NEWER,
    STALE,
    VALUE_DIFFERS,
    FeatureSkew,
    SkewReport,
    skew_report,
    values_match,
)
from loopml.project import Project
from loopml.serving.app import create_app
from tests.features.conftest import USER, ts

T0 = ts("2026-01-01 00:00")
WINDOW = (T0, T0 + timedelta(days=1))


def add_source_rows(project: Project, part: int, rows: dict) -> None:
    directory = Path(project.path) / "data" / "users"
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(directory / f"part-{part}.parquet", index=False)


@pytest.fixture
def users(project: Project) -> FeatureView:
    """Users 1 and 2 with a risk score and a tier, as of T0."""
    add_source_rows(
        project,
        0,
        {"user_id": [1, 2], "event_timestamp": [T0, T0], "risk": [0.25, 0.5], "tier": ["gold", "silver"]},
    )
    view = FeatureView(
        "users",
        [USER],
        ParquetSource("data/users/*.parquet"),
        [Field("risk"), Field("tier", "string")],
        ttl=timedelta(days=2),
    )
    project.apply([USER, view, FeatureService("scoring", ("users:risk",))])
    return view


@pytest.fixture
def client(project: Project, users: FeatureView) -> Iterator[TestClient]:
    with TestClient(create_app(project)) as client:
        yield client


def materialise_then_add_a_newer_row(project: Project, clock: SimulatedClock) -> None:
    """User 1 gets an offline row at T0 + 3 h that the online store (materialised at T0 + 1 h) lacks."""
    project.materialize(end=T0 + timedelta(hours=1))
    add_source_rows(
        project,
        1,
        {"user_id": [1], "event_timestamp": [T0 + timedelta(hours=3)], "risk": [0.9], "tier": ["gold"]},
    )
    clock.set(T0 + timedelta(hours=4))


def look_up(client: TestClient, user_ids: list[int]) -> dict:
    body = {"entities": {"user_id": user_ids}, "features": ["users:risk", "users:tier"]}
    response = client.post("/v1/features/online", json=body)
    assert response.status_code == 200, response.text
    client.post("/v1/predictions/flush").raise_for_status()
    return response.json()["features"]


def push(client: TestClient, user_id: int, at: pd.Timestamp, risk: float, tier: str) -> None:
    row = {"user_id": user_id, "event_timestamp": at.isoformat(), "risk": risk, "tier": tier}
    response = client.post("/v1/features/push", json={"view": "users", "rows": [row]})
    assert response.status_code == 200, response.text


def by_feature(report: SkewReport) -> dict[str, FeatureSkew]:
    return {f.feature: f for f in report.features}


def test_materialised_values_served_online_show_no_skew(
    project: Project, clock: SimulatedClock, client: TestClient
) -> None:
    project.materialize(end=T0 + timedelta(hours=1))
    clock.set(T0 + timedelta(hours=2))
    served = look_up(client, [1, 2, 3])
    assert served["risk"]["statuses"] == ["present", "present", "missing"]

    report = skew_report(project, *WINDOW)
    assert (report.lookups, report.replayed) == (3, 3)
    features = by_feature(report)
    assert set(features) == {"users:risk", "users:tier"}
    for feature in features.values():
        assert (feature.lookups, feature.compared, feature.mismatches) == (
            3,
            2,
            0,
        )  # user 3: null on both sides
        assert feature.mismatch_rate == 0.0
    assert report.samples == []


def test_a_newer_offline_row_not_yet_materialised_is_flagged_stale(
    project: Project, clock: SimulatedClock, client: TestClient
) -> None:
    materialise_then_add_a_newer_row(project, clock)
    assert look_up(client, [1, 2])["risk"]["values"] == [0.25, 0.5]

    features = by_feature(skew_report(project, *WINDOW))
    risk, tier = features["users:risk"], features["users:tier"]
    assert (risk.compared, risk.mismatches, risk.mismatch_rate) == (2, 1, 0.5)
    assert risk.reasons == {
        ONLINE_MISSING: 0,
        OFFLINE_MISSING: 0,
        STALE: 1,
        VALUE_DIFFERS: 0,
        ONLINE_NEWER: 0,
    }
    assert tier.mismatches == 0  # the new row kept the tier
    [sample] = skew_report(project, *WINDOW).samples
    assert (sample.feature, sample.entities, sample.reason) == ("users:risk", {"user_id": 1}, STALE)
    assert (sample.online_value, sample.offline_value) == (0.25, 0.9)
    assert (sample.online_event_ts, sample.offline_event_ts) == (T0, T0 + timedelta(hours=3))
    assert sample.lookup_ts == T0 + timedelta(hours=4)


def test_pushed_values_the_offline_source_lacks_are_mismatches_with_their_reason(
    project: Project, clock: SimulatedClock, client: TestClient
) -> None:
    project.materialize(end=T0 + timedelta(hours=1))
    clock.set(T0 + timedelta(hours=2))
    push(client, 1, T0, 0.3, "gold")  # same event time as the source row, another value
    push(client, 2, T0 + timedelta(minutes=90), 0.5, "bronze")  # newer than the source: only the tier differs
    push(client, 5, T0 + timedelta(hours=1), 0.7, "gold")  # an entity the source does not have
    look_up(client, [1, 2, 5])

    report = skew_report(project, *WINDOW)
    risk, tier = by_feature(report)["users:risk"], by_feature(report)["users:tier"]
    assert (risk.compared, risk.mismatches) == (3, 2)
    assert (risk.reasons[VALUE_DIFFERS], risk.reasons[OFFLINE_MISSING]) == (1, 1)
    assert (tier.compared, tier.mismatches) == (3, 2)
    assert (tier.reasons[ONLINE_NEWER], tier.reasons[OFFLINE_MISSING]) == (1, 1)
    assert [f.feature for f in report.features] == ["users:risk", "users:tier"]  # equal rates, by name
    reasons = {(m.feature, m.entities["user_id"]): m.reason for m in report.samples}
    assert reasons == {
        ("users:risk", 1): VALUE_DIFFERS,
        ("users:risk", 5): OFFLINE_MISSING,
        ("users:tier", 2): ONLINE_NEWER,
        ("users:tier", 5): OFFLINE_MISSING,
    }


def test_values_never_materialised_are_missing_online(
    project: Project, clock: SimulatedClock, client: TestClient
) -> None:
    clock.set(T0 + timedelta(hours=2))
    assert look_up(client, [1, 2])["risk"]["statuses"] == ["missing", "missing"]

    report = skew_report(project, *WINDOW, features=["users:risk"])
    [risk] = report.features
    assert (risk.feature, risk.compared, risk.mismatches, risk.mismatch_rate) == ("users:risk", 2, 2, 1.0)
    assert risk.reasons[ONLINE_MISSING] == 2
    assert {(m.online_status, m.offline_value) for m in report.samples} == {
        ("missing", 0.25),
        ("missing", 0.5),
    }


def test_features_can_be_narrowed_by_service_and_lookups_sampled(
    project: Project, clock: SimulatedClock, client: TestClient
) -> None:
    clock.set(T0 + timedelta(hours=2))
    look_up(client, [1, 2, 3])
    service = project.get_feature_service("scoring")
    assert [f.feature for f in skew_report(project, *WINDOW, service).features] == ["users:risk"]
    sampled = skew_report(project, *WINDOW, max_lookups=2)
    assert (sampled.lookups, sampled.replayed) == (3, 2)
    assert by_feature(sampled)["users:risk"].lookups == 2
    outside = skew_report(project, T0 + timedelta(days=1), T0 + timedelta(days=2))
    assert (outside.lookups, outside.features) == (0, [])
    with pytest.raises(ValidationError, match="has no feature 'rsk'"):
        skew_report(project, *WINDOW, features=["users:rsk"])
    with pytest.raises(NotFoundError, match="'nope'"):
        skew_report(project, *WINDOW, features=["nope:x"])


def test_values_match_nulls_numbers_and_strings() -> None:
    assert values_match(None, None) and not values_match(None, 0.0) and not values_match(0.0, None)
    assert values_match(0.1 + 0.2, 0.3) and values_match(3, 3.0)
    assert not values_match(0.3, 0.3001)
    assert values_match("gold", "gold") and not values_match("gold", "Gold") and not values_match("1", 1)


def test_the_command_prints_a_table_json_and_a_message_for_an_empty_window(
    project: Project, clock: SimulatedClock, client: TestClient
) -> None:
    materialise_then_add_a_newer_row(project, clock)
    look_up(client, [1, 2])
    runner = CliRunner()
    window = ["--since", "2026-01-01", "--until", "2026-01-02", "-p", str(project.path)]

    table = runner.invoke(cli, ["features", "skew", *window])
    assert table.exit_code == 0, table.output
    assert "2 feature lookups from 2026-01-01 00:00 to 2026-01-02 00:00" in table.output
    rows = [line for line in table.output.splitlines() if "users:" in line and "│" in line]
    assert [row.split("│")[1].strip() for row in rows[:2]] == ["users:risk", "users:tier"]  # worst first
    assert [cell.strip() for cell in rows[0].split("│")[2:11]] == [
        "2",
        "2",
        "1",
        "50.0%",
        "0",
        "0",
        "1",
        "0",
        "0",
    ]
    assert "stale" in table.output and "user_id=1" in table.output

    as_json = runner.invoke(cli, ["features", "skew", *window, "--feature", "users:risk", "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert [(f["feature"], f["mismatches"], f["mismatch_rate"]) for f in data["features"]] == [
        ("users:risk", 1, 0.5)
    ]
    assert data["samples"][0]["reason"] == STALE and data["samples"][0]["offline_event_ts"].startswith(
        "2026-01-01T03"
    )

    empty = runner.invoke(
        cli, ["features", "skew", "--until", "2025-06-01", "--days", "2", "-p", str(project.path)]
    )
    assert empty.exit_code == 0, empty.output
    assert "No feature lookups were logged from 2025-05-30 00:00 to 2025-06-01 00:00" in empty.output
    clash = runner.invoke(
        cli, ["features", "skew", "--since", "2026-01-01", "--days", "1", "-p", str(project.path)]
    )
    assert clash.exit_code == 2 and "--since and --days both set the window's start" in clash.output
