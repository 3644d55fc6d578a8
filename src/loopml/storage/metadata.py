"""MetadataStore: definitions, runs, models, aliases, endpoints, policies and events.

SQLAlchemy 2 Core over SQLite (WAL) by default or PostgreSQL by URL; the schema is owned by Alembic
migrations. Domain packages declare their tables on `METADATA` and query through `begin()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from loopml.clock import Clock
from loopml.errors import StoreUnavailableError
from loopml.storage.types import JSONText, UTCDateTime

METADATA = MetaData()

events_table = Table(
    "events",
    METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", UTCDateTime, nullable=False, index=True),
    Column("actor", String(200), nullable=False),
    Column("kind", String(100), nullable=False, index=True),
    Column("subject", String(300), nullable=False, index=True),
    Column("reason", Text, nullable=False),
    Column("data", JSONText, nullable=False),
)

change_counter_table = Table(
    "change_counter",
    METADATA,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)


@dataclass(frozen=True)
class Event:
    """One appended state change: who did what to which subject, when and why, with the evidence."""

    id: int
    ts: datetime
    actor: str
    kind: str
    subject: str
    reason: str
    data: dict[str, Any]


class MetadataStore:
    """The relational store behind every domain package."""

    def __init__(self, url: str, clock: Clock, *, connect_args: dict[str, Any] | None = None) -> None:
        self.url = url
        self.clock = clock
        self.engine = _make_engine(url, connect_args or {})
        self.local_changes = 0  # change counter bumps made through this store

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection inside one transaction, committed on success and rolled back on error."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            if "database is locked" in str(exc.orig):
                raise StoreUnavailableError(
                    f"Metadata store {self.url} is locked by another writer for over 30 s; retry, and check for a "
                    "stuck loopml process holding it."
                ) from exc
            raise StoreUnavailableError(
                f"Metadata store {self.engine.url.render_as_string(hide_password=True)} failed: {exc.orig}. "
                "Check that the database is running and the URL in loopml.yaml is right."
            ) from exc

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        run_migrations(self.engine, "upgrade", "head")

    def record_event(
        self,
        conn: Connection,
        *,
        kind: str,
        subject: str,
        reason: str,
        actor: str = "loopml",
        data: dict[str, Any] | None = None,
    ) -> None:
        """Append an event inside the caller's transaction, so the change and its record commit together."""
        conn.execute(
            insert(events_table).values(
                ts=self.clock.now(), actor=actor, kind=kind, subject=subject, reason=reason, data=data or {}
            )
        )

    def events(
        self,
        *,
        kind: str | None = None,
        subject_prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        last: int | None = None,
    ) -> list[Event]:
        """Events in the order they happened, optionally filtered; `last` keeps only the newest N."""
        query = select(events_table).order_by(events_table.c.id.desc() if last else events_table.c.id)
        if kind is not None:
            query = query.where(events_table.c.kind == kind)
        if subject_prefix is not None:
            query = query.where(events_table.c.subject.startswith(subject_prefix, autoescape=True))
        if since is not None:
            query = query.where(events_table.c.ts >= since)
        if until is not None:
            query = query.where(events_table.c.ts <= until)
        if last:
            query = query.limit(last)
        with self.begin() as conn:
            found = [Event(**row._mapping) for row in conn.execute(query)]
        return found[::-1] if last else found

    def bump_change_counter(self, conn: Connection) -> None:
        """Tell servers that routing-relevant state moved; they reload when the counter changes."""
        self.local_changes += 1  # readers in this process need not wait for their next poll
        updated = conn.execute(
            update(change_counter_table)
            .where(change_counter_table.c.id == 1)
            .values(value=change_counter_table.c.value + 1)
        )
        if updated.rowcount == 0:
            conn.execute(insert(change_counter_table).values(id=1, value=1))

    def change_counter(self) -> int:
        with self.begin() as conn:
            value = conn.execute(
                select(change_counter_table.c.value).where(change_counter_table.c.id == 1)
            ).scalar()
        return int(value or 0)

    def dispose(self) -> None:
        self.engine.dispose()


def run_migrations(engine: Engine, action: str, revision: str) -> None:
    """Run Alembic's `upgrade` or `downgrade` to `revision` in one transaction.

    On SQLite, foreign keys are off while it runs: a migration that rebuilds a table (SQLite's only way to
    alter one) drops it first, which would cascade to the rows referencing it. They are checked before commit.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                config.attributes["connection"] = conn
                getattr(command, action)(config, revision)
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all() if sqlite else []
                if broken:
                    raise StoreUnavailableError(
                        f"Migrating to {revision} would leave rows without their referenced row: {broken[:5]}; "
                        "nothing was changed. Report this with the database file."
                    )
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def _make_engine(url: str, connect_args: dict[str, Any]) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30, **connect_args}, poolclass=NullPool
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
