"""Upgrading a database written at the first schema (0001) to head keeps its data and fills the new tables.

Rows are written with plain SQL in their 0001 shapes (JSON as text, naive UTC times), as loopml 0.1 wrote
them; the upgrade must carry runs, metrics, versions and alias moves into run_latest_metrics, model files,
artifact manifests and alias periods.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import orjson
import pytest
import sklearn
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sklearn.linear_model import LogisticRegression

from loopml.clock import SimulatedClock
from loopml.schema import register_all_tables
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore, run_migrations
from tests.conftest import START

T0 = datetime(2026, 1, 5, 9, 0)  # naive UTC, as 0001 stored times
FIRST_MOVE = T0 + timedelta(hours=1)
SECOND_MOVE = T0 + timedelta(days=2)
RUN_ID = str(uuid.UUID(int=1))
DATASET_ID = str(uuid.UUID(int=2))
INPUTS = ["risk", "amount"]
DATETIMES = {name: sa.DateTime() for name in ("created_at", "valid_from", "valid_to")}


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        # the engine loopml itself opens: WAL and foreign keys on, as in every project
        engine = MetadataStore(f"sqlite:///{tmp_path / 'legacy.db'}", SimulatedClock(START)).engine
    else:
        url, connect_args = request.getfixturevalue("postgres_schema")
        engine = sa.create_engine(url, connect_args=connect_args)
    yield engine
    engine.dispose()


def alembic(engine: sa.Engine, action: str, revision: str) -> None:
    """Run an Alembic command on the engine exactly as MetadataStore.migrate() does."""
    run_migrations(engine, action, revision)


def fitted_model(c: float) -> bytes:
    rng = np.random.default_rng(0)
    x = rng.random((200, len(INPUTS)))
    y = (x[:, 0] + rng.normal(0, 0.2, 200) > 0.5).astype(int)
    buffer = io.BytesIO()
    joblib.dump(LogisticRegression(C=c).fit(x, y), buffer)
    return buffer.getvalue()


def text(value: object) -> str:
    return orjson.dumps(value).decode()


def write_first_schema_rows(conn: sa.Connection, digests: dict[int, str]) -> None:
    """A dataset, a run with params and a metric at two steps, a model with two versions, alias moves."""

    def insert(table: str, **values: object) -> None:
        # typed as loopml 0.1's tables typed them, so SQLite gets SQLAlchemy's own datetime text
        columns = [
            sa.column(k, sa.DateTime() if isinstance(v, datetime) else None) for k, v in values.items()
        ]
        conn.execute(sa.insert(sa.table(table, *columns)).values(**values))

    insert(
        "datasets",
        id=DATASET_ID,
        name="toy-train",
        content_hash="c" * 64,
        file_sha256="f" * 64,
        path="datasets/toy-train.parquet",
        n_rows=600,
        columns=text({"risk": "float64", "amount": "float64", "is_bad": "int64"}),
        time_start=T0 - timedelta(days=10),
        time_end=T0,
        spec=text({"features": ["users:risk"], "label": "is_bad"}),
        created_at=T0,
    )
    insert(
        "runs",
        id=RUN_ID,
        pipeline="toy",
        status="finished",
        code_version="git:1234abc",
        dataset_id=DATASET_ID,
        started_at=T0,
        ended_at=T0 + timedelta(minutes=3),
        error=None,
    )
    for key, value in {"max_iter": "20", "C": "1.0"}.items():
        insert("run_params", run_id=RUN_ID, key=key, value=value)
    insert("run_metrics", run_id=RUN_ID, key="val_roc_auc", step=0, value=0.71, ts=T0 + timedelta(minutes=1))
    insert("run_metrics", run_id=RUN_ID, key="val_roc_auc", step=1, value=0.78, ts=T0 + timedelta(minutes=2))
    insert(
        "registered_models",
        name="toy",
        description="",
        training_spec=text({"model_name": "toy", "label": "is_bad"}),
        created_at=T0,
    )
    first_gate = {"passed": True, "metric": "roc_auc", "candidate": 0.8, "champion": 0.78, "min_delta": 0.0}
    gates = {1: None, 2: text({**first_gate, "n_rows": 900, "n_positive": 60, "reason": "beats v1"})}
    for version, digest in digests.items():
        insert(
            "model_versions",
            model_name="toy",
            version=version,
            run_id=RUN_ID,
            dataset_id=DATASET_ID,
            artifact_digest=digest,
            flavor="sklearn",
            inputs=text(INPUTS),
            features=text(["users:risk"]),
            code_version="git:1234abc",
            library_versions=text({"python": "3.11.7", "scikit-learn": sklearn.__version__}),
            metrics=text({"val_roc_auc": 0.78}),
            gate=gates[version],
            created_at=T0 + timedelta(minutes=5 * version),
        )
    insert("model_aliases", model_name="toy", alias="champion", version=2, updated_at=SECOND_MOVE)
    insert("endpoints", name="scoring", model_name="toy", alias="champion", created_at=T0, updated_at=T0)
    for moment, before, after in ((FIRST_MOVE, None, 1), (SECOND_MOVE, 1, 2)):
        insert(
            "events",
            ts=moment,
            actor="ci",
            kind="alias.moved",
            subject="model:toy@champion",
            reason=f"promote v{after}",
            data=text({"alias": "champion", "from_version": before, "to_version": after}),
        )


def assert_matches_declared_tables(conn: sa.Connection) -> None:
    declared = register_all_tables()
    assert set(declared.tables) <= set(sa.inspect(conn).get_table_names())
    diff = compare_metadata(MigrationContext.configure(conn), declared)
    assert diff == [], f"tables and migrations disagree: {diff}"


def first_schema_database(engine: sa.Engine, artifacts: ArtifactStore) -> dict[int, str]:
    """Create the database at 0001 with its rows; the versions' joblib blobs go to `artifacts`."""
    blobs = {1: fitted_model(1.0), 2: fitted_model(0.1)}
    digests = {version: artifacts.put(blob) for version, blob in blobs.items()}
    assert digests[1] == hashlib.sha256(blobs[1]).hexdigest() != digests[2]
    alembic(engine, "upgrade", "0001")
    with engine.begin() as conn:
        write_first_schema_rows(conn, digests)
    return digests


def test_a_first_schema_database_upgrades_to_head_with_its_data(engine: sa.Engine, tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    digests = first_schema_database(engine, artifacts)
    alembic(engine, "upgrade", "head")

    with engine.connect() as conn:
        assert_matches_declared_tables(conn)

        def q(sql: str) -> list[sa.Row]:
            return conn.execute(sa.text(sql).columns(**DATETIMES)).all()

        assert dict(q("SELECT key, value FROM run_params")) == {"max_iter": "20", "C": "1.0"}
        assert [tuple(r) for r in q("SELECT key, step, value FROM run_metrics ORDER BY step")] == [
            ("val_roc_auc", 0, 0.71),
            ("val_roc_auc", 1, 0.78),
        ]
        assert [tuple(r) for r in q("SELECT run_id, key, step, value FROM run_latest_metrics")] == [
            (RUN_ID, "val_roc_auc", 1, 0.78)
        ]
        [run] = q("SELECT pipeline, status, dataset_id, name, parent_run_id FROM runs")
        assert tuple(run) == ("toy", "finished", DATASET_ID, None, None)

        versions = q(
            "SELECT version, artifact_digest, flavor, inputs, gate, model_file, created_at "
            "FROM model_versions ORDER BY version"
        )
        assert [(v.version, v.artifact_digest, v.flavor) for v in versions] == [
            (1, digests[1], "sklearn"),
            (2, digests[2], "sklearn"),
        ]
        assert orjson.loads(versions[0].inputs) == INPUTS and versions[0].gate is None
        assert orjson.loads(versions[1].gate)["candidate"] == 0.8
        assert versions[0].created_at == T0 + timedelta(minutes=5)
        model_file = orjson.loads(versions[0].model_file)
        sklearn_flavor = model_file["flavors"]["sklearn"]
        assert (sklearn_flavor["path"], sklearn_flavor["serialization"]) == ("model.joblib", "joblib")
        assert sklearn_flavor["sklearn_version"] == sklearn.__version__
        assert [i["name"] for i in model_file["signature"]["inputs"]] == INPUTS
        assert model_file["features"] == ["users:risk"] and model_file["model_name"] == "toy"

        refs = q("SELECT owner, path, digest FROM artifact_refs ORDER BY owner")
        assert [tuple(r) for r in refs] == [
            ("model:toy/1", "model.joblib", digests[1]),
            ("model:toy/2", "model.joblib", digests[2]),
        ]
        restored = joblib.load(io.BytesIO(artifacts.get(refs[0].digest)))
        assert isinstance(restored, LogisticRegression) and restored.coef_.shape == (1, len(INPUTS))

        periods = q(
            "SELECT version, valid_from, valid_to, actor, reason FROM alias_history "
            "WHERE model_name = 'toy' AND alias = 'champion' ORDER BY valid_from"
        )
        assert [tuple(p) for p in periods] == [
            (1, FIRST_MOVE, SECOND_MOVE, "ci", "promote v1"),
            (2, SECOND_MOVE, None, "ci", "promote v2"),
        ]

        routes = q("SELECT endpoint, name, model_name, alias, version, mode, weight FROM endpoint_routes")
        assert [tuple(r) for r in routes] == [
            ("scoring", "primary", "toy", "champion", None, "primary", 100.0)
        ]
        assert [tuple(r) for r in q("SELECT name, salt, settings FROM endpoints")] == [
            ("scoring", "scoring", "{}")
        ]

    alembic(engine, "downgrade", "0003")
    with engine.connect() as conn:
        endpoints = conn.execute(sa.text("SELECT name, model_name, alias FROM endpoints")).all()
        assert [tuple(r) for r in endpoints] == [("scoring", "toy", "champion")]
        tables = set(sa.inspect(conn).get_table_names())
        assert "alias_history" not in tables and "artifact_refs" not in tables
        assert {c["name"] for c in sa.inspect(conn).get_columns("model_versions")} >= {
            "artifact_digest",
            "gate",
        }
    alembic(engine, "upgrade", "head")
    with engine.connect() as conn:
        assert_matches_declared_tables(conn)
        assert dict(conn.execute(sa.text("SELECT key, value FROM run_params")).all()) == {
            "max_iter": "20",
            "C": "1.0",
        }
        refs = conn.execute(sa.text("SELECT owner, digest FROM artifact_refs ORDER BY owner")).all()
        assert [tuple(r) for r in refs] == [("model:toy/1", digests[1]), ("model:toy/2", digests[2])]
        periods = conn.execute(
            sa.text("SELECT version, valid_to FROM alias_history ORDER BY valid_from").columns(**DATETIMES)
        ).all()
        assert [tuple(p) for p in periods] == [(1, SECOND_MOVE), (2, None)]


def test_a_downgrade_to_0003_keeps_the_metric_history(engine: sa.Engine, tmp_path: Path) -> None:
    first_schema_database(engine, ArtifactStore(str(tmp_path / "artifacts")))
    alembic(engine, "upgrade", "head")
    alembic(engine, "downgrade", "0003")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key, step, value FROM run_metrics ORDER BY step")).all()
    assert [tuple(r) for r in rows] == [("val_roc_auc", 0, 0.71), ("val_roc_auc", 1, 0.78)]
