from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from loopml.errors import NotFoundError, ValidationError
from loopml.features import Entity, FeatureView, Field, ParquetSource
from loopml.project import Project
from tests.features.conftest import USER, ts, write_source


def entity_rows(*rows: tuple[int, str]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [r[0] for r in rows], "event_timestamp": [ts(r[1]) for r in rows]})


def test_takes_latest_value_at_or_before_the_row_time(project: Project, user_view) -> None:
    result = project.get_historical_features(
        entity_rows((1, "2026-01-01 23:59"), (1, "2026-01-02 00:00"), (1, "2026-01-02 12:00")),
        ["user_scores:score"],
    )
    # 00:00 on Jan 2: the Jan 2 row exists but was created at 00:00 (its correction only at 06:00).
    assert result.score.tolist() == [1.0, 2.0, 2.5]


def test_no_value_from_after_the_row_time(project: Project, user_view) -> None:
    result = project.get_historical_features(
        entity_rows((1, "2025-12-31 23:00"), (2, "2026-01-01 11:59")), ["user_scores:score"]
    )
    assert result.score.isna().all()


def test_rows_created_after_the_row_time_do_not_leak(project: Project, user_view) -> None:
    # The Jan 3 value has event time Jan 3 00:00 but was only written (backfilled) on Jan 5.
    result = project.get_historical_features(entity_rows((1, "2026-01-03 00:00")), ["user_scores:score"])
    assert result.score.tolist() == [2.5]


def test_ties_on_event_time_go_to_the_latest_created(project: Project, user_view) -> None:
    result = project.get_historical_features(
        entity_rows((1, "2026-01-02 07:00")), ["user_scores:score", "user_scores:label"]
    )
    assert (result.score[0], result.label[0]) == (2.5, "c")


def test_ttl_is_respected_at_its_boundary(project: Project, user_view) -> None:
    result = project.get_historical_features(
        entity_rows((2, "2026-01-02 12:00"), (2, "2026-01-02 12:00:01")), ["user_scores:score"]
    )
    assert result.score[0] == 10.0
    assert pd.isna(result.score[1])


def test_left_join_keeps_every_row_in_order_with_its_own_columns(project: Project, user_view) -> None:
    entities = entity_rows(
        (2, "2026-01-01 13:00"), (99, "2026-01-01 13:00"), (1, "2026-01-01 13:00"), (2, "2026-01-01 13:00")
    )
    entities["amount"] = [5.0, 6.0, 7.0, 8.0]
    result = project.get_historical_features(entities, ["user_scores:score"])
    assert result.user_id.tolist() == [2, 99, 1, 2]
    assert result.amount.tolist() == [5.0, 6.0, 7.0, 8.0]
    assert result.score.fillna(-1).tolist() == [10.0, -1, 1.0, 10.0]


def test_several_views_and_full_feature_names(project: Project, user_view) -> None:
    merchant = Entity("merchant", join_keys=["merchant_id"])
    rows = pd.DataFrame({"merchant_id": [7], "ts": [ts("2026-01-01")], "score": [0.5]})
    view = FeatureView(
        "merchant_scores",
        [merchant],
        ParquetSource(write_source(project, "m", rows), "ts"),
        [Field("score")],
        ttl=timedelta(days=7),
    )
    project.apply([merchant, view])
    entities = entity_rows((1, "2026-01-01 06:00"))
    entities["merchant_id"] = [7]
    with pytest.raises(ValidationError, match="full_feature_names=True"):
        project.get_historical_features(entities, ["user_scores:score", "merchant_scores:score"])
    result = project.get_historical_features(
        entities, ["user_scores:score", "merchant_scores:score"], full_feature_names=True
    )
    assert (result.user_scores__score[0], result.merchant_scores__score[0]) == (1.0, 0.5)


def test_each_view_applies_its_own_ttl_in_one_retrieval(project: Project, user_view) -> None:
    """user_scores keeps a value for 1 day, user_profile (same user, same entity rows) for 7 days."""
    rows = pd.DataFrame({"user_id": [2], "event_timestamp": [ts("2026-01-01 12:00")], "tier": [3.0]})
    profile = FeatureView(
        "user_profile",
        [USER],
        ParquetSource(write_source(project, "user_profile", rows), "event_timestamp"),
        [Field("tier")],
        ttl=timedelta(days=7),
    )
    project.apply([profile])
    moments = ["2026-01-02 12:00", "2026-01-02 12:00:01", "2026-01-08 12:00", "2026-01-08 12:00:01"]
    result = project.get_historical_features(
        entity_rows(*[(2, m) for m in moments]), ["user_scores:score", "user_profile:tier"]
    )
    assert result.score.fillna(-1).tolist() == [10.0, -1, -1, -1]
    assert result.tier.fillna(-1).tolist() == [3.0, 3.0, 3.0, -1]


def test_entity_less_retrieval_reads_every_key_and_time_in_the_range(project: Project, user_view) -> None:
    result = project.get_historical_features(
        None, ["user_scores:score", "user_scores:label"], start=ts("2026-01-01"), end=ts("2026-01-02 23:00")
    )
    assert list(zip(result.user_id, result.event_timestamp, strict=True)) == [
        (1, ts("2026-01-01 00:00")),
        (2, ts("2026-01-01 12:00")),
        (1, ts("2026-01-02 00:00")),  # two rows share this time: one entity row
    ]
    # As known at each row's own time: the 06:00 correction of Jan 2 was not written yet.
    assert result.score.tolist() == [1.0, 10.0, 2.0]
    assert result.label.tolist() == ["a", "z", "b"]


def test_entity_less_retrieval_explains_what_it_needs(project: Project, user_view) -> None:
    with pytest.raises(ValidationError, match="pass start= and end="):
        project.get_historical_features(None, ["user_scores:score"])
    with pytest.raises(ValidationError, match="leave them out"):
        project.get_historical_features(
            entity_rows((1, "2026-01-01")), ["user_scores:score"], start=ts("2026-01-01")
        )
    with pytest.raises(ValidationError, match="range is empty"):
        project.get_historical_features(
            None, ["user_scores:score"], start=ts("2026-01-02"), end=ts("2026-01-01")
        )
    merchant = Entity("merchant", join_keys=["merchant_id"])
    rows = pd.DataFrame({"merchant_id": [7], "ts": [ts("2026-01-01")], "score": [0.5]})
    view = FeatureView(
        "merchant_scores", [merchant], ParquetSource(write_source(project, "m", rows), "ts"), [Field("score")]
    )
    project.apply([merchant, view])
    with pytest.raises(ValidationError, match="one set of join keys"):
        project.get_historical_features(
            None,
            ["user_scores:score", "merchant_scores:score"],
            start=ts("2026-01-01"),
            end=ts("2026-01-02"),
            full_feature_names=True,
        )


def test_naive_timestamps_are_read_as_utc(project: Project, user_view) -> None:
    entities = pd.DataFrame({"user_id": [1], "event_timestamp": [pd.Timestamp("2026-01-02 12:00")]})
    assert project.get_historical_features(entities, ["user_scores:score"]).score.tolist() == [2.5]


@pytest.mark.parametrize(
    ("entities", "features", "message"),
    [
        (pd.DataFrame({"user_id": [1]}), ["user_scores:score"], "no timestamp column 'event_timestamp'"),
        (pd.DataFrame({"event_timestamp": [ts("2026-01-01")]}), ["user_scores:score"], "lacks join key"),
        (entity_rows((1, "2026-01-01")), ["user_scores:nope"], "has no feature 'nope'"),
        (entity_rows((1, "2026-01-01")), ["score"], "view_name:feature_name"),
        (
            pd.DataFrame({"user_id": [1], "event_timestamp": ["not a time"]}),
            ["user_scores:score"],
            "must hold timestamps",
        ),
    ],
)
def test_bad_requests_get_clear_errors(project: Project, user_view, entities, features, message) -> None:
    with pytest.raises(ValidationError, match=message):
        project.get_historical_features(entities, features)


def test_unknown_view_is_not_found(project: Project, user_view) -> None:
    with pytest.raises(NotFoundError, match="No feature view or on-demand view named 'nope'"):
        project.get_historical_features(entity_rows((1, "2026-01-01")), ["nope:score"])


def test_definitions_are_validated() -> None:
    with pytest.raises(ValidationError, match="ttl"):
        FeatureView("v", [USER], ParquetSource("x"), [Field("a")], ttl=timedelta(0))
    with pytest.raises(ValidationError, match="dtype"):
        Field("a", "decimal")
    with pytest.raises(ValidationError, match="not valid"):
        Entity("bad name", join_keys=["id"])


def test_source_paths_with_quotes_are_read_safely(project: Project) -> None:
    rows = pd.DataFrame({"user_id": [1], "event_timestamp": [ts("2026-01-01")], "score": [7.0]})
    path = write_source(project, "o'brien", rows)
    view = FeatureView("quoted", [USER], ParquetSource(path), [Field("score")], ttl=timedelta(days=1))
    project.apply([USER, view])
    result = project.get_historical_features(entity_rows((1, "2026-01-01 01:00")), ["quoted:score"])
    assert result.score.tolist() == [7.0]


def test_a_feature_service_names_what_training_and_serving_read(project: Project, user_view, clock) -> None:
    from loopml.features import FeatureService

    service = FeatureService(
        "scorer", ["user_scores:score", "user_scores:label"], description="the scorer's inputs"
    )
    project.apply([service])
    stored = project.get_feature_service("scorer")
    assert stored == service
    offline = project.get_historical_features(entity_rows((1, "2026-01-02 07:00")), stored)
    assert (offline.score[0], offline.label[0]) == (2.5, "c")
    project.materialize(end=ts("2026-01-02 07:00"))
    clock.set(ts("2026-01-02 07:00"))
    online = project.get_online_features({"user_id": [1]}, stored)
    assert (online.values["score"], online.values["label"]) == ([2.5], ["c"])


def test_a_service_must_reference_existing_features(project: Project, user_view) -> None:
    from loopml.features import FeatureService

    with pytest.raises(ValidationError, match="reads view 'ghost', which is not a defined feature view"):
        project.apply([FeatureService("s", ["ghost:x"])])
    with pytest.raises(ValidationError, match="has no feature 'nope'"):
        project.apply([FeatureService("s", ["user_scores:nope"])])
    with pytest.raises(ValidationError, match="lists no features"):
        FeatureService("s", [])
    assert project.metadata.events(kind="feature_service.created") == []


def brute_force(entities: pd.DataFrame, rows: pd.DataFrame, ttl: timedelta) -> list[float | None]:
    """The definition, applied row by row: the reference the set-based join must equal."""
    answers = []
    for e in entities.itertuples():
        known = rows[
            (rows.user_id == e.user_id)
            & (rows.event_timestamp <= e.event_timestamp)
            & (rows.created_timestamp <= e.event_timestamp)
            & (rows.event_timestamp >= e.event_timestamp - ttl)
        ]
        best = known.sort_values(["event_timestamp", "created_timestamp"]).tail(1)
        answers.append(None if best.empty else float(best.score.iloc[0]))
    return answers


@pytest.mark.parametrize("with_created", [True, False], ids=["created-time", "event-time-only"])
@pytest.mark.parametrize("seed", range(5))
def test_join_equals_the_row_by_row_definition_on_random_data(
    project: Project, seed: int, with_created: bool
) -> None:
    rng = np.random.default_rng(seed)
    start = ts("2026-01-01")
    n = 300
    event = start + pd.to_timedelta(rng.integers(0, 10 * 24, n), unit="h")  # hourly grid: many equal times
    late = rng.random(n) < 0.2  # a fifth are backfills written days later
    delay = pd.to_timedelta(np.where(late, rng.integers(24, 120, n), rng.integers(0, 3, n)), unit="h")
    # Equal event times stay, but exact duplicates of (user, event, created) would have no defined winner.
    delay += pd.to_timedelta(np.arange(n), unit="s")
    if not with_created:  # a row is known from its event time, and only distinct event times have a winner
        event += pd.to_timedelta(np.arange(n), unit="s")
        delay = pd.to_timedelta(np.zeros(n), unit="s")
    rows = pd.DataFrame(
        {
            "user_id": rng.integers(0, 6, n),
            "event_timestamp": event,
            "created_timestamp": event + delay,
            "score": rng.random(n).round(6),
        }
    )
    path = write_source(project, f"random{seed}", rows)
    ttl = timedelta(hours=int(rng.integers(6, 72)))
    view = FeatureView(
        f"random{seed}",
        [USER],
        ParquetSource(path, "event_timestamp", "created_timestamp" if with_created else None),
        [Field("score")],
        ttl=ttl,
    )
    project.apply([USER, view])
    entities = pd.DataFrame(
        {
            "user_id": rng.integers(0, 7, 400),  # user 6 has no rows at all
            "event_timestamp": start + pd.to_timedelta(rng.integers(0, 12 * 24, 400), unit="h"),
        }
    )
    result = project.get_historical_features(entities, [f"random{seed}:score"])
    expected = brute_force(entities, rows, ttl)
    got = [None if pd.isna(v) else float(v) for v in result.score]
    assert got == expected
    assert sum(v is not None for v in expected) > 50  # the data exercises real matches
