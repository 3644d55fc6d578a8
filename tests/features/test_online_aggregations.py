"""Aggregation views online: what serving reads equals what the training set says at the same moment."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from loopml.errors import ValidationError
from loopml.features.online import NULL, PRESENT
from loopml.project import Project
from tests.features.conftest import ts
from tests.features.test_aggregations import AGGREGATIONS, random_events, transactions_view


def offline_at(project: Project, view_name: str, users: list[int], at: pd.Timestamp) -> pd.DataFrame:
    entity = pd.DataFrame({"user_id": users, "event_timestamp": [at] * len(users)})
    return project.get_historical_features(entity, [f"{view_name}:{a.name}" for a in AGGREGATIONS])


@pytest.mark.parametrize("hours_after", [0, 5, 24 * 3])
def test_online_aggregates_equal_the_training_set_at_the_same_moment(
    online_project: Project, clock, hours_after: int
) -> None:
    frame, _ = random_events(3, created=False)
    end = ts("2026-01-25")
    frame = frame[frame.event_timestamp < end]  # nothing happens after the materialisation
    view = transactions_view(online_project, frame)
    written = online_project.materialize(end=end)
    assert written[view.name] == int(
        ((frame.event_timestamp >= end - view.ttl) & (frame.event_timestamp <= end)).sum()
    )
    now = end + timedelta(hours=hours_after)  # windows slide with the clock, without a new materialisation
    clock.set(now)
    users = [1, 2, 3, 4, 5, 99]
    online = online_project.get_online_features(
        {"user_id": users}, [f"{view.name}:{a.name}" for a in AGGREGATIONS]
    )
    expected = offline_at(online_project, view.name, users, now)
    for aggregation in AGGREGATIONS:
        got = online.values[aggregation.name]
        want = [None if pd.isna(v) else v for v in expected[aggregation.name]]
        assert [g is None for g in got] == [w is None for w in want], aggregation.name
        assert np.allclose([g for g in got if g is not None], [w for w in want if w is not None], rtol=1e-12)
        assert online.statuses[aggregation.name] == [PRESENT if g is not None else NULL for g in got]
    assert online.values["txn_count_7d"][-1] == 0 and online.values["spend_7d"][-1] == 0.0  # unknown user


def test_materialising_a_window_again_does_not_count_twice(online_project: Project, clock) -> None:
    frame, _ = random_events(4, created=False)
    view = transactions_view(online_project, frame)
    end = ts("2026-01-25")
    online_project.materialize(end=end)
    clock.set(end)
    first = online_project.get_online_features({"user_id": [1, 2]}, [f"{view.name}:txn_count_7d"]).values
    online_project.materialize(end=end)
    online_project.materialize(end=end, start=end - timedelta(days=2))
    assert (
        online_project.get_online_features({"user_id": [1, 2]}, [f"{view.name}:txn_count_7d"]).values == first
    )
    assert first["txn_count_7d"][0] > 0


def test_pushed_events_are_counted_at_once(online_project: Project, clock) -> None:
    frame = pd.DataFrame({"user_id": [1], "event_timestamp": [ts("2026-01-01")], "amount": [10.0]})
    view = transactions_view(online_project, frame)
    clock.set(ts("2026-01-03 12:01"))
    online_project.materialize(end=ts("2026-01-03 12:00"))
    online_project.push(
        view.name, [{"user_id": 1, "event_timestamp": "2026-01-03T11:59:00+00:00", "amount": 5.0}]
    )
    online_project.push(
        view.name, [{"user_id": 1, "event_timestamp": ts("2026-01-03 12:00"), "amount": None}]
    )
    online = online_project.get_online_features(
        {"user_id": [1]}, [f"{view.name}:spend_7d", f"{view.name}:txn_count_7d", f"{view.name}:amount_min_1h"]
    )
    assert online.values == {"spend_7d": [15.0], "txn_count_7d": [3], "amount_min_1h": [5.0]}
    assert online.event_timestamps["spend_7d"] == [ts("2026-01-03 12:00").timestamp()]
    clock.set(ts("2026-01-08 12:00"))  # the first event (Jan 1) has left the 7-day window
    assert online_project.get_online_features({"user_id": [1]}, [f"{view.name}:spend_7d"]).values == {
        "spend_7d": [5.0]
    }
    with pytest.raises(ValidationError, match="lacks \\['amount'\\]"):
        online_project.push(view.name, [{"user_id": 1, "event_timestamp": "2026-01-03T12:00:00"}])
    with pytest.raises(ValidationError, match="ISO 8601"):
        online_project.push(view.name, [{"user_id": 1, "event_timestamp": "yesterday", "amount": 1.0}])


def test_materialising_skips_events_recorded_after_its_end(online_project: Project, clock) -> None:
    frame = pd.DataFrame(
        {
            "user_id": [1, 1],
            "event_timestamp": [ts("2026-01-02"), ts("2026-01-02 01:00")],
            "created_timestamp": [ts("2026-01-02"), ts("2026-01-04")],  # the second is a later backfill
            "amount": [1.0, 2.0],
        }
    )
    view = transactions_view(online_project, frame, created=True)
    assert online_project.materialize(end=ts("2026-01-03")) == {view.name: 1}
    clock.set(ts("2026-01-03"))
    online = online_project.get_online_features({"user_id": [1]}, [f"{view.name}:spend_7d"])
    offline = offline_at(online_project, view.name, [1], ts("2026-01-03"))
    assert online.values["spend_7d"] == [1.0] == offline.spend_7d.tolist()
