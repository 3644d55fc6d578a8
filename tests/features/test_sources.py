"""Feature view sources: the same data through Parquet, CSV, a DuckDB query and a DataFrame reads the same."""

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from loopml.errors import ArtifactCorruptedError, NotFoundError, ValidationError
from loopml.features import (
    Aggregation,
    CsvSource,
    DataFrameSource,
    FeatureView,
    Field,
    ParquetSource,
    SqlSource,
)
from loopml.features import registry as feature_registry
from loopml.features.skew import STALE, skew_report
from loopml.project import Project
from loopml.serving.app import create_app
from tests.features.conftest import USER, ts, write_source

ROWS = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 1, 2],
        "event_timestamp": [
            ts("2026-01-01 00:00"),
            ts("2026-01-02 00:00"),
            ts("2026-01-02 00:00"),
            ts("2026-01-03 00:00"),
            ts("2026-01-01 12:00:00.250"),
        ],
        "created_timestamp": [
            ts("2026-01-01 00:00"),
            ts("2026-01-02 00:00"),
            ts("2026-01-02 06:00"),  # a correction of the row before
            ts("2026-01-05 00:00"),  # a late backfill
            ts("2026-01-01 12:00:00.250"),
        ],
        "score": [1.0, 2.0, 2.5, 3.0, 10.0],
        "label": ["007", "b", "c", "d", "z"],  # "007" stays a string, not the number 7
        "visits": [1, 2, 3, 4, 5],
        "active": [True, False, True, True, False],
    }
)
SCHEMA = [Field("score"), Field("label", "string"), Field("visits", "int64"), Field("active", "bool")]
AGGREGATIONS = [
    Aggregation("score", "sum", "2d", name="score_2d"),
    Aggregation(None, "count", "2d", name="n_2d"),
]
ENTITIES = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 1, 1, 2, 2, 3],
        "event_timestamp": [
            ts(t)
            for t in (
                "2026-01-01 23:59",
                "2026-01-02 00:00",
                "2026-01-02 12:00",
                "2026-01-03 00:00",
                "2026-01-05 12:00",
                "2026-01-01 12:00",
                "2026-01-02 12:00",
                "2026-01-02 00:00",
            )
        ],
    }
)


def make_source(project: Project, kind: str, name: str, rows: pd.DataFrame = ROWS):
    """`rows` behind a source of `kind`, with paths relative to the project directory."""
    times = ("event_timestamp", "created_timestamp")
    if kind == "parquet":
        return ParquetSource(write_source(project, name, rows), *times)
    if kind == "csv":
        directory = Path(project.path) / "data" / name
        directory.mkdir(parents=True, exist_ok=True)
        rows.to_csv(directory / "part-0.csv", sep=";", index=False)
        return CsvSource(f"data/{name}/*.csv", *times, delimiter=";")
    if kind == "sql":
        write_source(project, name, rows)
        query = f"WITH raw AS (FROM 'data/{name}/part-0.parquet') SELECT * FROM raw WHERE user_id IS NOT NULL"
        return SqlSource(query, *times)
    return DataFrameSource(rows, *times)


def apply_views(project: Project, kind: str) -> tuple[FeatureView, FeatureView]:
    """A plain view and an aggregation view of ROWS through a source of `kind`."""
    plain = FeatureView(f"plain_{kind}", [USER], make_source(project, kind, f"p_{kind}"), SCHEMA)
    aggregated = FeatureView(
        f"agg_{kind}", [USER], make_source(project, kind, f"a_{kind}"), aggregations=AGGREGATIONS
    )
    project.apply([USER, plain, aggregated])
    return plain, aggregated


def features(view: FeatureView) -> list[str]:
    return [f"{view.name}:{name}" for name in view.feature_names]


@pytest.mark.parametrize("kind", ["csv", "sql", "dataframe"])
def test_every_source_gives_the_same_training_set_and_online_values(
    project: Project, clock, kind: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # relative paths start at the project, not here
    expected_views, views = apply_views(project, "parquet"), apply_views(project, kind)

    for expected_view, view in zip(expected_views, views, strict=True):
        expected = project.get_historical_features(ENTITIES, features(expected_view))
        result = project.get_historical_features(ENTITIES, features(view))
        pd.testing.assert_frame_equal(result, expected)
    plain = project.get_historical_features(ENTITIES, features(expected_views[0]))
    assert plain.score.fillna(-1).tolist() == [1.0, 2.0, 2.5, 2.5, -1, -1, 10.0, -1]
    assert plain.label[0] == "007"

    end = ts("2026-01-03 06:00")
    project.materialize(end=end)
    clock.set(end)
    for expected_view, view in zip(expected_views, views, strict=True):
        expected = project.get_online_features({"user_id": [1, 2, 3]}, features(expected_view))
        online = project.get_online_features({"user_id": [1, 2, 3]}, features(view))
        assert (online.values, online.statuses, online.event_timestamps) == (
            expected.values,
            expected.statuses,
            expected.event_timestamps,
        )
    online = project.get_online_features({"user_id": [1]}, features(views[0]))
    assert online.values == {"score": [3.0], "label": ["d"], "visits": [4], "active": [True]}


def test_specs_round_trip_with_a_type_for_every_source(project: Project) -> None:
    sources = {kind: make_source(project, kind, kind) for kind in ("parquet", "csv", "sql")}
    for kind, source in sources.items():
        view = FeatureView(f"v_{kind}", [USER], source, SCHEMA)
        assert FeatureView.from_spec(view.spec()) == view
        assert view.spec()["source"].get("type") == (None if kind == "parquet" else kind)

    project.apply([USER, FeatureView("v_frame", [USER], make_source(project, "dataframe", "f"), SCHEMA)])
    stored = feature_registry.get_feature_view(project.metadata, "v_frame")
    source = stored.spec()["source"]
    assert (source["type"], source["rows"], source["timestamp_field"]) == ("dataframe", 5, "event_timestamp")
    assert source["path"] == f".loopml/offline/feature_sources/{source['sha256']}.parquet"
    assert FeatureView.from_spec(stored.spec()) == stored


def test_a_stored_spec_without_a_type_is_parquet_and_keeps_its_hash() -> None:
    old = {"path": "data/x/*.parquet", "timestamp_field": "ts", "created_timestamp_field": None}
    view = FeatureView.from_spec(
        {
            "name": "old",
            "entities": [USER.spec()],
            "source": old,
            "schema": [{"name": "score", "dtype": "float64"}],
            "ttl_seconds": 86400.0,
            "description": "",
            "tags": {},
        }
    )
    assert view.source == ParquetSource("data/x/*.parquet", "ts")
    assert view.spec()["source"] == old  # no "type" added: applying it again changes nothing


def test_reapplying_the_same_frame_is_unchanged_and_a_changed_frame_is_a_new_version(
    project: Project,
) -> None:
    def apply(rows: pd.DataFrame) -> str:
        view = FeatureView(
            "frame", [USER], DataFrameSource(rows, "event_timestamp", "created_timestamp"), SCHEMA
        )
        return project.apply([USER, view])[1].action

    assert project.plan([USER, FeatureView("frame", [USER], DataFrameSource(ROWS.copy()), SCHEMA)])[
        1
    ].action == ("create")
    assert not (Path(project.path) / ".loopml/offline/feature_sources").exists()  # planning writes nothing

    assert apply(ROWS) == "create"
    assert apply(ROWS.copy()) == "unchanged"
    changed = ROWS.assign(score=ROWS.score * 10)
    assert apply(changed) == "update"
    versions = feature_registry.definition_versions(project.metadata, "feature_view", "frame")
    assert [v.version for v in versions] == [1, 2]
    files = sorted(p.name for p in (Path(project.path) / ".loopml/offline/feature_sources").iterdir())
    assert files == sorted(f"{v.spec['source']['sha256']}.parquet" for v in versions)

    result = project.get_historical_features(ENTITIES.head(1), ["frame:score"])
    assert result.score.tolist() == [10.0]  # the new version reads the new frame


def test_a_tampered_or_missing_frame_file_is_refused(project: Project) -> None:
    view = FeatureView("frame", [USER], DataFrameSource(ROWS, "event_timestamp", "created_timestamp"), SCHEMA)
    project.apply([USER, view])
    stored = feature_registry.get_feature_view(project.metadata, "frame")
    path = Path(project.path) / stored.source.path
    assert project.get_historical_features(ENTITIES.head(1), ["frame:score"]).score.tolist() == [1.0]

    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ArtifactCorruptedError, match="modified after it was applied"):
        project.get_historical_features(ENTITIES.head(1), ["frame:score"])
    path.unlink()
    with pytest.raises(NotFoundError, match="is missing from the offline store"):
        project.get_historical_features(ENTITIES.head(1), ["frame:score"])

    assert project.apply([USER, view])[1].action == "unchanged"  # re-applying restores the file
    assert project.get_historical_features(ENTITIES.head(1), ["frame:score"]).score.tolist() == [1.0]


def test_source_queries_resolve_relative_paths_in_the_project(
    project: Project, tmp_path_factory: pytest.TempPathFactory, monkeypatch
) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    decoy = ROWS.assign(score=-1.0)  # the same relative path under the working directory
    (elsewhere / "data").mkdir()
    decoy.to_parquet(elsewhere / "data" / "rows.parquet", index=False)
    decoy.to_csv(elsewhere / "data" / "rows.csv", index=False)
    (Path(project.path) / "data").mkdir()
    ROWS.to_parquet(Path(project.path) / "data" / "rows.parquet", index=False)
    ROWS.to_csv(Path(project.path) / "data" / "rows.csv", index=False)
    monkeypatch.chdir(elsewhere)
    queries = {
        "q_function": "SELECT * FROM read_parquet('data/rows.parquet');",
        "q_scan": "SELECT p.* FROM 'data/rows.parquet' AS p "
        'JOIN "data/rows.csv" AS c USING (user_id, score)',
        "q_csv": "SELECT * FROM read_csv(['data/rows.csv'], header = true) -- trailing comment",
    }
    views = [FeatureView(name, [USER], SqlSource(query), [Field("score")]) for name, query in queries.items()]
    project.apply([USER, *views])
    entity = ENTITIES.iloc[[0]]
    for name in queries:
        assert project.get_historical_features(entity, [f"{name}:score"]).score.tolist() == [1.0], name


@pytest.mark.parametrize(
    "query, message",
    [
        ("DELETE FROM users", "not a single DuckDB SELECT"),
        ("SELECT 1; SELECT 2", "holds 2 statements"),
        ("SELECT 1; DROP TABLE users", "not a single DuckDB SELECT"),
        ("SELEC * FROM users", "syntax error"),
        ("  ", "needs a DuckDB SELECT query"),
    ],
)
def test_a_source_query_must_be_one_select(query: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SqlSource(query)


def test_source_errors_name_the_view_and_what_is_wrong(project: Project) -> None:
    with pytest.raises(ValidationError, match=r"frame has no column\(s\) \['ts'\]"):
        DataFrameSource(ROWS, "ts")
    with pytest.raises(ValidationError, match=r"reads column\(s\) \['risk'\] that its DataFrameSource lacks"):
        FeatureView("frame", [USER], DataFrameSource(ROWS), [Field("risk")])
    with pytest.raises(ValidationError, match="use a ParquetSource, CsvSource"):
        FeatureView("bad", [USER], "data/x.parquet", [Field("risk")])

    views = [
        FeatureView("no_files", [USER], ParquetSource("data/none/*.parquet"), [Field("score")]),
        FeatureView("no_risk", [USER], make_source(project, "csv", "c"), [Field("risk")]),
        FeatureView("no_time", [USER], SqlSource("SELECT 1 AS user_id, 2.0 AS score"), [Field("score")]),
        FeatureView("bad_query", [USER], SqlSource("SELECT * FROM missing_table"), [Field("score")]),
    ]
    project.apply([USER, *views])
    entity = ENTITIES.iloc[[0]]
    with pytest.raises(
        NotFoundError, match=r"Feature view 'no_files' reads Parquet files 'data/none/.*matches no file"
    ):
        project.get_historical_features(entity, ["no_files:score"])
    with pytest.raises(ValidationError, match=r"'no_risk' reads column\(s\) \['risk'\] that CSV files"):
        project.get_historical_features(entity, ["no_risk:risk"])
    with pytest.raises(ValidationError, match=r"'no_time' reads column\(s\) \['event_timestamp'\]"):
        project.get_historical_features(entity, ["no_time:score"])
    with pytest.raises(ValidationError, match=r"'bad_query' cannot read SQL query .*missing_table"):
        project.get_historical_features(entity, ["bad_query:score"])


def test_skew_check_replays_a_csv_source(project: Project, clock) -> None:
    view = FeatureView("scores", [USER], make_source(project, "csv", "scores"), SCHEMA, ttl=timedelta(days=2))
    project.apply([USER, view])
    project.materialize(end=ts("2026-01-02 12:00"))
    newer = pd.DataFrame(ROWS.iloc[[0]]).assign(event_timestamp=ts("2026-01-02 13:00"), score=7.0, label="c")
    newer.assign(created_timestamp=ts("2026-01-02 13:00")).to_csv(
        Path(project.path) / "data" / "scores" / "part-1.csv", sep=";", index=False
    )
    clock.set(ts("2026-01-02 14:00"))
    with TestClient(create_app(project)) as client:
        body = {"entities": {"user_id": [1, 2]}, "features": ["scores:score", "scores:label"]}
        client.post("/v1/features/online", json=body).raise_for_status()
        client.post("/v1/predictions/flush").raise_for_status()

    report = skew_report(project, ts("2026-01-02"), ts("2026-01-03"))
    by_feature = {f.feature: f for f in report.features}
    assert (by_feature["scores:score"].compared, by_feature["scores:score"].reasons[STALE]) == (2, 1)
    assert by_feature["scores:label"].mismatches == 0  # the newer row keeps user 1's label, "c"
