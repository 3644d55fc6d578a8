"""Declared windowed aggregations: point-in-time exact offline, the same values online."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from loopml.errors import ValidationError
from loopml.features import Aggregation, FeatureView, ParquetSource
from loopml.features.aggregations import aggregate_online
from loopml.project import Project
from tests.features.conftest import USER, ts, write_source

AGGREGATIONS = [
    Aggregation("amount", "sum", "7d", name="spend_7d"),
    Aggregation("amount", "mean", "1d"),
    Aggregation("amount", "min", "1h"),
    Aggregation("amount", "max", "30d"),
    Aggregation("amount", "count", "1d"),
    Aggregation(None, "count", "7d", name="txn_count_7d"),
]


def transactions_view(project: Project, frame: pd.DataFrame, created: bool = False) -> FeatureView:
    view = FeatureView(
        "user_txn" + ("_late" if created else ""),
        [USER],
        ParquetSource(
            write_source(project, "txn" + ("_late" if created else ""), frame),
            "event_timestamp",
            "created_timestamp" if created else None,
        ),
        aggregations=AGGREGATIONS,
    )
    project.apply([USER, view])
    return view


def test_windows_include_their_end_and_exclude_their_start(project: Project) -> None:
    end = ts("2026-01-10 00:00")
    frame = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1],
            "event_timestamp": [
                end - timedelta(days=7) - timedelta(microseconds=1),  # just before the window: out
                end - timedelta(days=7),  # exactly one window back: in
                end - timedelta(microseconds=1),  # just before the row: in
                end,  # at the row's time (the event being scored): out
            ],
            "amount": [1000.0, 1.0, 2.0, 4000.0],
        }
    )
    view = transactions_view(project, frame)
    entity = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [end, end]})
    result = project.get_historical_features(
        entity, [f"{view.name}:spend_7d", f"{view.name}:txn_count_7d", f"{view.name}:amount_mean_1d"]
    )
    assert result.spend_7d.tolist() == [3.0, 0.0]
    assert result.txn_count_7d.tolist() == [2, 0]
    assert result.amount_mean_1d.iloc[0] == 2.0 and pd.isna(result.amount_mean_1d.iloc[1])


def test_late_events_count_only_once_created(project: Project) -> None:
    frame = pd.DataFrame(
        {
            "user_id": [1, 1],
            "event_timestamp": [ts("2026-01-01 10:00"), ts("2026-01-01 11:00")],
            "created_timestamp": [ts("2026-01-01 10:00"), ts("2026-01-03 00:00")],  # a backfill
            "amount": [5.0, 7.0],
        }
    )
    view = transactions_view(project, frame, created=True)
    entity = pd.DataFrame(
        {
            "user_id": [1, 1, 1],
            "event_timestamp": [ts("2026-01-02 00:00"), ts("2026-01-03 00:00"), ts("2026-01-03 00:01")],
        }
    )
    result = project.get_historical_features(entity, [f"{view.name}:spend_7d"])
    assert result.spend_7d.tolist() == [5.0, 5.0, 12.0]  # known strictly after its creation


def random_events(seed: int, created: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events and entity rows on a coarse grid, so equal times and exact window edges are common."""
    rng = np.random.default_rng(seed)
    base = ts("2026-01-01")
    n = 400
    minutes = rng.integers(0, 60 * 24 * 40, n) // 30 * 30  # half-hour grid over 40 days
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(1, 6, n),
            "event_timestamp": base + pd.to_timedelta(minutes, unit="min"),
            "amount": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 20.0, n).round(2)),
        }
    )
    if created:
        late = rng.choice([0, 0, 30, 60 * 24, 60 * 24 * 3], n)
        frame["created_timestamp"] = frame.event_timestamp + pd.to_timedelta(late, unit="min")
    picks = rng.integers(0, n, 150)
    entity_times = frame.event_timestamp.iloc[picks].reset_index(drop=True) + pd.to_timedelta(
        rng.choice([0, 30, 60, 60 * 24, 60 * 24 * 7], 150), unit="min"
    )
    entity = pd.DataFrame({"user_id": rng.integers(1, 7, 150), "event_timestamp": entity_times})
    return frame, entity


def brute_force(frame: pd.DataFrame, user: int, at: pd.Timestamp, aggregation: Aggregation) -> float | None:
    """The definition, row by row."""
    visible = frame[
        (frame.user_id == user)
        & (frame.event_timestamp < at)
        & (frame.event_timestamp >= at - aggregation.window)
    ]
    if "created_timestamp" in frame:
        visible = visible[visible.created_timestamp < at]
    if aggregation.column is None:
        return len(visible)
    values = visible[aggregation.column].dropna()
    if aggregation.function == "count":
        return len(values)
    if aggregation.function == "sum":
        return float(values.sum())
    if values.empty:
        return None
    return float({"mean": values.mean, "min": values.min, "max": values.max}[aggregation.function]())


@pytest.mark.parametrize("created", [False, True], ids=["event-time", "created-time"])
@pytest.mark.parametrize("seed", [1, 2])
def test_aggregations_equal_the_row_by_row_definition(project: Project, seed: int, created: bool) -> None:
    frame, entity = random_events(seed, created)
    view = transactions_view(project, frame, created)
    result = project.get_historical_features(entity, [f"{view.name}:{a.name}" for a in AGGREGATIONS])
    assert len(result) == len(entity)
    for aggregation in AGGREGATIONS:
        expected = [
            brute_force(frame, row.user_id, row.event_timestamp, aggregation) for row in entity.itertuples()
        ]
        got = [None if pd.isna(v) else v for v in result[aggregation.name]]
        assert [e is None for e in expected] == [g is None for g in got], aggregation.name
        assert np.allclose(
            [e for e in expected if e is not None], [g for g in got if g is not None], rtol=1e-12
        ), aggregation.name


def test_online_aggregate_matches_the_definition() -> None:
    now = ts("2026-01-10").timestamp()
    events = [(now - 7 * 86_400 - 1, {"amount": 100.0}), (now - 7 * 86_400, {"amount": 2.0})]
    events += [(now - 60, {"amount": None}), (now, {"amount": 50.0})]  # at now: not yet
    assert aggregate_online(Aggregation("amount", "sum", "7d"), events, now) == 2.0
    assert aggregate_online(Aggregation(None, "count", "7d"), events, now) == 2
    assert aggregate_online(Aggregation("amount", "count", "7d"), events, now) == 1
    assert aggregate_online(Aggregation("amount", "max", "30d"), events, now) == 100.0
    assert aggregate_online(Aggregation("amount", "mean", "1m"), events[:1], now) is None


def test_aggregation_definitions_are_validated() -> None:
    with pytest.raises(ValidationError, match="not supported"):
        Aggregation("amount", "median", "7d")
    with pytest.raises(ValidationError, match="needs a column"):
        Aggregation(None, "sum", "7d")
    with pytest.raises(ValidationError, match="not a duration"):
        Aggregation("amount", "sum", "seven days")
    source = ParquetSource("data/x/*.parquet")
    with pytest.raises(ValidationError, match="both schema and aggregations"):
        from loopml.features import Field

        FeatureView("v", [USER], source, [Field("x")], aggregations=AGGREGATIONS)
    with pytest.raises(ValidationError, match="at least the longest window"):
        FeatureView("v", [USER], source, aggregations=AGGREGATIONS, ttl=timedelta(days=1))
    with pytest.raises(ValidationError, match="more than once"):
        FeatureView(
            "v", [USER], source, aggregations=[Aggregation("a", "sum", "1d"), Aggregation("a", "sum", "1d")]
        )
    view = FeatureView("v", [USER], source, aggregations=AGGREGATIONS)
    assert view.ttl == timedelta(days=30)
    assert view.feature_names[:2] == ("spend_7d", "amount_mean_1d")
    assert view.dtype_of("txn_count_7d") == "int64"
    assert FeatureView.from_spec(view.spec()) == view
