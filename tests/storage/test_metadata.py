from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select

from loopml.errors import StoreUnavailableError
from loopml.schema import register_all_tables
from loopml.storage.metadata import MetadataStore, events_table
from loopml.training.tables import runs


def test_migrations_create_every_declared_table_and_match_it(metadata: MetadataStore) -> None:
    declared = register_all_tables()
    with metadata.engine.connect() as conn:
        existing = set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn), declared)
    assert set(declared.tables) <= existing
    assert diff == [], f"tables and migrations disagree: {diff}"


def test_migrate_is_idempotent(metadata: MetadataStore) -> None:
    metadata.migrate()
    with metadata.engine.connect() as conn:
        assert "events" in inspect(conn).get_table_names()


def test_events_record_who_when_what_why_and_filter(metadata: MetadataStore, clock) -> None:
    with metadata.begin() as conn:
        metadata.record_event(
            conn,
            kind="alias.moved",
            subject="model:a@champion",
            reason="better",
            actor="ci",
            data={"to_version": 2, "auc": 0.91},
        )
    clock.advance(timedelta(hours=1))
    with metadata.begin() as conn:
        metadata.record_event(conn, kind="model.registered", subject="model:b/1", reason="first")

    events = metadata.events()
    assert [e.kind for e in events] == ["alias.moved", "model.registered"]
    first = events[0]
    assert (first.actor, first.subject, first.reason, first.data) == (
        "ci",
        "model:a@champion",
        "better",
        {"to_version": 2, "auc": 0.91},
    )
    assert first.ts == clock.now() - timedelta(hours=1)
    assert first.ts.tzinfo is not None
    assert [e.subject for e in metadata.events(subject_prefix="model:a")] == ["model:a@champion"]
    assert [e.kind for e in metadata.events(since=clock.now())] == ["model.registered"]
    assert [e.kind for e in metadata.events(kind="alias.moved")] == ["alias.moved"]


def test_event_commits_with_the_change_or_not_at_all(metadata: MetadataStore, clock) -> None:
    with pytest.raises(RuntimeError), metadata.begin() as conn:
        metadata.record_event(conn, kind="x", subject="y", reason="z")
        raise RuntimeError("the change failed")
    assert metadata.events() == []


def test_subject_prefix_treats_wildcards_literally(metadata: MetadataStore) -> None:
    with metadata.begin() as conn:
        metadata.record_event(conn, kind="k", subject="model:a_b", reason="r")
        metadata.record_event(conn, kind="k", subject="model:axb", reason="r")
    assert [e.subject for e in metadata.events(subject_prefix="model:a_")] == ["model:a_b"]


def test_change_counter_moves_monotonically(metadata: MetadataStore) -> None:
    assert metadata.change_counter() == 0
    with metadata.begin() as conn:
        metadata.bump_change_counter(conn)
    with metadata.begin() as conn:
        metadata.bump_change_counter(conn)
    assert metadata.change_counter() == 2


def test_timestamps_and_json_round_trip(metadata: MetadataStore, clock) -> None:
    with metadata.begin() as conn:
        conn.execute(
            insert(runs).values(
                id="r1",
                pipeline="p",
                status="running",
                code_version={"git_commit": None, "n": [1, 2]},
                started_at=clock.now(),
            )
        )
        row = conn.execute(select(runs).where(runs.c.id == "r1")).one()
    assert row.started_at == clock.now()
    assert row.code_version == {"git_commit": None, "n": [1, 2]}


def test_unreachable_database_says_so(clock) -> None:
    store = MetadataStore(
        "postgresql+psycopg://postgres@127.0.0.1:1/none", clock, connect_args={"connect_timeout": 1}
    )
    with (
        pytest.raises(StoreUnavailableError, match="Check that the database is running"),
        store.begin() as conn,
    ):
        conn.execute(select(events_table))


def test_last_keeps_the_newest_events_in_order(metadata: MetadataStore) -> None:
    with metadata.begin() as conn:
        for i in range(5):
            metadata.record_event(conn, kind="k", subject=f"s{i}", reason="r")
    assert [e.subject for e in metadata.events(last=2)] == ["s3", "s4"]
