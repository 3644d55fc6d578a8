"""Shared fixtures: a simulated clock, a fresh project, real PostgreSQL schemas, and a webhook receiver."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from loopml.clock import SimulatedClock
from loopml.config import write_config
from loopml.project import Project
from loopml.schema import register_all_tables
from loopml.storage.metadata import MetadataStore

POSTGRES_URL = os.environ.get("LOOPML_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
START = datetime(2026, 1, 1, tzinfo=UTC)


def unavailable(service: str, reason: object) -> None:
    """Skip a test whose service is down, except under CI, where a missing service is a failure."""
    message = f"{service} is not reachable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: services must be up)")
    pytest.skip(message)


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest.fixture
def project(tmp_path: Path, clock: SimulatedClock) -> Iterator[Project]:
    write_config(tmp_path, "test")
    project = Project(tmp_path, clock=clock)
    yield project
    project.close()


@pytest.fixture
def postgres_schema() -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh PostgreSQL schema for one test, dropped afterwards; yields (url, connect_args)."""
    import sqlalchemy as sa

    schema = f"loopml_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # the driver raises several kinds of connection error
        unavailable("PostgreSQL on 127.0.0.1:5432", exc)
    try:
        yield POSTGRES_URL, {"options": f"-csearch_path={schema}"}
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def metadata(
    request: pytest.FixtureRequest, tmp_path: Path, clock: SimulatedClock
) -> Iterator[MetadataStore]:
    """A migrated MetadataStore on SQLite and on real PostgreSQL."""
    register_all_tables()
    if request.param == "sqlite":
        store = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}", clock)
    else:
        url, connect_args = request.getfixturevalue("postgres_schema")
        store = MetadataStore(url, clock, connect_args=connect_args)
    store.migrate()
    yield store
    store.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_project(request: pytest.FixtureRequest, tmp_path: Path, clock: SimulatedClock) -> Iterator[Project]:
    """A fresh project whose metadata store is SQLite, then real PostgreSQL (a schema of its own)."""
    write_config(tmp_path, "test")
    environ = dict(os.environ)
    if request.param == "postgres":
        url, connect_args = request.getfixturevalue("postgres_schema")
        environ["LOOPML_METADATA__URL"] = f"{url}?options={quote(connect_args['options'])}"
    project = Project(tmp_path, clock=clock, environ=environ)
    yield project
    project.close()


REDIS_URL = os.environ.get("LOOPML_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of its own for one test on the real Redis, with its keys deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable("Redis on 127.0.0.1:6379", exc)
    prefix = f"loopml-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=["sqlite", "redis"])
def online_backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """loopml.yaml overrides that put the online store on SQLite or on the real Redis."""
    if request.param == "sqlite":
        return {"LOOPML_ONLINE__URL": f"sqlite:///{tmp_path / 'online-test.db'}"}
    prefix = request.getfixturevalue("redis_prefix")
    return {"LOOPML_ONLINE__URL": REDIS_URL, "LOOPML_ONLINE__KEY_PREFIX": prefix}


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
