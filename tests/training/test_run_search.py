"""Searching runs: the filter language, ordering with missing values last, paging, errors that point at the
mistake, and queries that use the indexes and load a page without one query per run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import event, text

from loopml.clock import SimulatedClock
from loopml.errors import NotFoundError, ValidationError
from loopml.storage.metadata import MetadataStore
from loopml.training.run_search import (
    _smallest_condition,
    build_search_query,
    parse_filter,
    resolve_run_id,
    search_plan,
    search_runs,
)
from loopml.training.tracking import Tracker

# name: (pipeline, params, metrics, tags); started one minute apart in this order
RUNS = {
    "gbm-a": (
        "churn",
        {"model": "gbm", "learning rate": "0.1"},
        {"auc": 0.91, "val.loss": 0.2},
        {"team": "risk"},
    ),
    "gbm-b": ("churn", {"model": "gbm", "learning rate": "0.05"}, {"auc": 0.85}, {"team": "fraud"}),
    "GBM-c": ("churn", {"model": "GBM"}, {"auc": 0.70, "val.loss": 0.5}, {"team": "risk"}),
    "lr-a": ("churn", {"model": "logreg"}, {"auc": 0.80, "val.loss": 0.4}, {}),
    "lr-b": ("fraud", {"model": "logreg"}, {}, {"team": "fraud"}),
    "rf-a": ("fraud", {"model": "rf_v2"}, {"auc": 0.88}, {"team": "risk"}),
}


@pytest.fixture
def named(metadata: MetadataStore, clock: SimulatedClock) -> Iterator[dict[str, str]]:
    """The runs of RUNS, name → id (the last one still running)."""
    tracker = Tracker(metadata, capture_environment=False)
    ids = {}
    for name, (pipeline, params, metrics, tags) in RUNS.items():
        clock.advance(timedelta(minutes=1))
        ids[name] = tracker.start_run(pipeline, params, {}, name=name, tags=tags)
        tracker.log_metrics(ids[name], metrics, step=3)
        if name != "rf-a":
            tracker.end_run(ids[name], "failed" if name == "lr-b" else "finished")
    tracker.close()
    yield ids


def names(metadata: MetadataStore, filter: str = "", order_by: tuple[str, ...] = (), **kwargs) -> list[str]:
    return [run.name for run in search_runs(metadata, filter, order_by, **kwargs)]


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ("metrics.auc > 0.85", {"gbm-a", "rf-a"}),
        ("metrics.auc >= 0.85", {"gbm-a", "gbm-b", "rf-a"}),
        ("metrics.auc < 0.8", {"GBM-c"}),
        ("metrics.auc <= 0.8", {"GBM-c", "lr-a"}),
        ("metrics.auc = 0.8", {"lr-a"}),
        ("metrics.auc != 0.8", {"gbm-a", "gbm-b", "GBM-c", "rf-a"}),  # runs without auc do not match
        ("params.model = 'gbm'", {"gbm-a", "gbm-b"}),
        ("params.model != 'gbm'", {"GBM-c", "lr-a", "lr-b", "rf-a"}),
        ("params.model LIKE 'gb%'", {"gbm-a", "gbm-b"}),  # LIKE respects case on every backend
        ("params.model ILIKE 'gb%'", {"gbm-a", "gbm-b", "GBM-c"}),
        ("params.model LIKE 'rf_v_'", {"rf-a"}),
        ("params.model IN ('GBM', 'rf_v2')", {"GBM-c", "rf-a"}),
        ("params.model NOT IN ('gbm', 'logreg')", {"GBM-c", "rf-a"}),
        ("tags.team = 'risk'", {"gbm-a", "GBM-c", "rf-a"}),
        ('tags.team IN ("fraud")', {"gbm-b", "lr-b"}),
        ("params.`learning rate` = '0.05'", {"gbm-b"}),
        ("metrics.`val.loss` < 0.45", {"gbm-a", "lr-a"}),
        ("metrics.val.loss < 0.45", {"gbm-a", "lr-a"}),  # dots need no backticks
        ("attributes.status = 'finished'", {"gbm-a", "gbm-b", "GBM-c", "lr-a"}),
        ("attributes.status IN ('failed', 'running')", {"lr-b", "rf-a"}),
        ("attributes.name LIKE '%-a'", {"gbm-a", "lr-a", "rf-a"}),
        ("attributes.pipeline = 'fraud'", {"lr-b", "rf-a"}),
        ("attributes.started_at > '2026-01-01T00:04:30'", {"lr-b", "rf-a"}),
        ("attributes.started_at <= '2026-01-01T00:02:00+00:00'", {"gbm-a", "gbm-b"}),
        (
            "metrics.auc > 0.8 AND params.model = 'gbm' and tags.team = 'risk' and attributes.status = 'finished'",
            {"gbm-a"},
        ),
        ("metrics.auc > 0.5 and metrics.auc < 0.86", {"gbm-b", "GBM-c", "lr-a"}),
        ("", set(RUNS)),
    ],
)
def test_each_operator_selects_the_right_runs(
    metadata: MetadataStore, named: dict[str, str], filter: str, expected: set[str]
) -> None:
    found = names(metadata, filter)
    assert len(found) == len(set(found))  # one row per run, however many joins
    assert set(found) == expected


def test_order_by_a_metric_puts_runs_lacking_it_last(metadata: MetadataStore, named: dict[str, str]) -> None:
    assert names(metadata, order_by=("metrics.auc DESC",)) == [
        "gbm-a",
        "rf-a",
        "gbm-b",
        "lr-a",
        "GBM-c",
        "lr-b",
    ]
    assert names(metadata, order_by=("metrics.auc",)) == ["GBM-c", "lr-a", "gbm-b", "rf-a", "gbm-a", "lr-b"]
    assert names(metadata, "params.model ILIKE 'gbm'", ("metrics.`val.loss` DESC",)) == [
        "GBM-c",
        "gbm-a",
        "gbm-b",
    ]
    # the filtered metric itself: every matching run has it
    assert names(metadata, "metrics.auc > 0.8", ("metrics.auc ASC",)) == ["gbm-b", "rf-a", "gbm-a"]
    assert names(metadata, "", ("tags.team", "attributes.name DESC")) == [
        "lr-b", "gbm-b", "rf-a", "gbm-a", "GBM-c", "lr-a",
    ]  # fmt: skip
    # by default newest first
    assert names(metadata) == ["rf-a", "lr-b", "lr-a", "GBM-c", "gbm-b", "gbm-a"]
    assert names(metadata, order_by=("attributes.started_at",))[0] == "gbm-a"


def test_pages_and_pipelines(metadata: MetadataStore, named: dict[str, str]) -> None:
    first = search_runs(metadata, "", ["metrics.auc DESC"], max_results=4)
    assert [r.name for r in first] == ["gbm-a", "rf-a", "gbm-b", "lr-a"] and first.next_offset == 4
    second = search_runs(metadata, "", ["metrics.auc DESC"], max_results=4, offset=first.next_offset)
    assert [r.name for r in second] == ["GBM-c", "lr-b"] and second.next_offset is None
    assert set(names(metadata, pipeline="fraud")) == {"lr-b", "rf-a"}
    assert names(metadata, "params.model = 'nothing'") == []
    with pytest.raises(ValidationError, match="max_results must be between 1 and 50000"):
        search_runs(metadata, max_results=0)


def test_results_carry_params_latest_metrics_and_tags(metadata: MetadataStore, named: dict[str, str]) -> None:
    (run,) = search_runs(metadata, "attributes.name = 'gbm-a'")
    assert run.id == named["gbm-a"] and run.pipeline == "churn" and run.status == "finished"
    assert run.params == {"model": "gbm", "learning rate": "0.1"}
    assert run.metrics == {"auc": 0.91, "val.loss": 0.2} and run.tags == {"team": "risk"}
    assert run.environment is None and run.artifacts is None  # get_run loads those


def test_a_page_is_loaded_with_one_query_per_table(metadata: MetadataStore, named: dict[str, str]) -> None:
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        if not statement.lstrip().upper().startswith("PRAGMA"):
            statements.append(statement)

    event.listen(metadata.engine, "before_cursor_execute", record)
    try:
        found = search_runs(metadata, "metrics.auc > 0", ["metrics.auc DESC"])
    finally:
        event.remove(metadata.engine, "before_cursor_execute", record)
    assert len(found) == 5
    assert len(statements) == 5  # matching ids, runs, params, latest metrics, tags


@pytest.mark.parametrize(
    ("filter", "position", "message"),
    [
        ("metrics.auc >> 0.8", 13, "expected a number|compares with a number"),
        ("metrics.auc > 0.8 or params.model = 'gbm'", 18, "OR is not supported"),
        ("metrics.auc > 0.8 params.model = 'gbm'", 18, "expected AND or the end"),
        ("metric.auc > 'high'", 13, "compares with a number"),
        ("params.model = gbm", 15, "quoted string"),
        ("params.model > 'gbm'", 13, "takes =, !=, LIKE, ILIKE, IN, NOT IN"),
        ("colour = 'red'", 0, "expected metrics.NAME"),
        ("attributes.colour = 'red'", 11, "unknown attribute 'colour'"),
        ("params.model = 'gbm", 15, "unterminated string"),
        ("params.model IN 'gbm'", 16, r"expected '\(' and a list"),
        ("params.model IN ('a' 'b')", 21, "expected ',' or '\\)'"),
        ("attributes.started_at > 'yesterday'", 24, "ISO time"),
        ("metrics.auc > 0.8 and", 21, "expected metrics.NAME"),
        ("metrics.auc ~ 1", 12, "unexpected character '~'"),
        ("metrics. > 1", 9, "expected a name after 'metrics.'"),
    ],
)
def test_bad_filters_are_explained_with_a_position(filter: str, position: int, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        parse_filter(filter)
    text_ = str(caught.value)
    assert f"at position {position}:" in text_
    assert text_.splitlines()[-1] == "  " + " " * position + "^"


def test_bad_order_by_is_explained(metadata: MetadataStore) -> None:
    with pytest.raises(ValidationError, match="order_by item at position 12: expected ASC, DESC"):
        search_runs(metadata, "", ["metrics.auc DOWN"])


def test_user_values_are_bound_never_spliced_into_the_sql() -> None:
    query = build_search_query("params.model = 'x'' OR 1=1 --' and metrics.`a'b` > 1", ["tags.`t;DROP` DESC"])
    sql = str(query.compile())
    assert "OR 1=1" not in sql and "DROP" not in sql and "a'b" not in sql


def test_the_search_uses_the_key_value_indexes(metadata: MetadataStore, named: dict[str, str]) -> None:
    filter = "metrics.auc > 0.8 and params.model = 'gbm' and tags.team = 'risk'"
    if metadata.engine.dialect.name == "sqlite":
        # The condition with the fewest candidates (the param: 2 runs) is read first, through its index;
        # every other table is then reached by primary key.
        with metadata.begin() as conn:
            assert _smallest_condition(conn, parse_filter(filter), "sqlite") == 1
        plan = search_plan(metadata, filter, ["metrics.auc DESC"])
        assert plan[:2] == [
            "MATERIALIZE driver",
            "SEARCH run_params USING INDEX ix_run_params_key_value (key=? AND value=?)",
        ], plan
        assert [step for step in plan if step.startswith("SCAN")] == ["SCAN driver"], plan
        return
    with metadata.engine.connect() as conn:  # a handful of rows: ask whether the indexes can serve the search
        conn.execute(text("SET enable_seqscan = off"))
        compiled = build_search_query(filter, ["metrics.auc DESC"], limit=101, dialect="postgresql").compile(
            metadata.engine, compile_kwargs={"literal_binds": True}
        )
        plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}")]
    used = {
        i
        for i in ("ix_run_params_key_value", "ix_run_latest_metrics_key_value", "ix_run_tags_key_value")
        if i in " ".join(plan)
    }
    assert used, plan
    assert search_plan(metadata, filter, ["metrics.auc DESC"])  # EXPLAIN through the public helper works too


def test_run_ids_resolve_from_a_unique_prefix(metadata: MetadataStore, named: dict[str, str]) -> None:
    run_id = named["gbm-a"]
    assert resolve_run_id(metadata, run_id) == run_id
    assert resolve_run_id(metadata, run_id[:8]) == run_id
    with pytest.raises(NotFoundError, match="No run with id 'abc'"):
        resolve_run_id(metadata, "abc")
    with pytest.raises(NotFoundError, match="nor one starting with it"):
        resolve_run_id(metadata, "zzzzzzzz")
