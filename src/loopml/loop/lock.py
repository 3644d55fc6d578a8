"""One acting controller per metadata store.

On SQLite, an exclusive lock on a file beside the database; on PostgreSQL, a session-level advisory lock on a
connection held for as long as the controller runs. Either is released by the operating system or the server
when the process dies (kill -9 included), so a standby controller takes over at its next try.
"""

from __future__ import annotations

import contextlib
import fcntl
import zlib
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from loopml.storage.metadata import MetadataStore

LOCK_NAME = "loopml-controller"
ADVISORY_KEY = zlib.crc32(LOCK_NAME.encode())  # the same key for every controller of a database


class ControllerLock:
    """`acquire()` without waiting; True while this process is the controller."""

    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata
        self._file: IO[str] | None = None
        self._connection: Any = None

    @property
    def held(self) -> bool:
        return self._file is not None or self._connection is not None

    def acquire(self) -> bool:
        if self.held:
            return True
        if self.metadata.engine.dialect.name == "postgresql":
            return self._acquire_advisory()
        return self._acquire_file()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._connection is not None:
            with contextlib.suppress(Exception):  # a dropped connection has released it already
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
                self._connection.commit()
            self._connection.close()
            self._connection = None

    def __enter__(self) -> ControllerLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _acquire_file(self) -> bool:
        handle = self.path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def _acquire_advisory(self) -> bool:
        connection = self.metadata.engine.connect()
        got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}).scalar()
        connection.commit()
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    @property
    def path(self) -> Path:
        """The lock file of a SQLite store: beside its database file."""
        database = make_url(self.metadata.url).database
        if not database or database == ":memory:":
            raise RuntimeError(
                "An in-memory SQLite store has no file to lock; give the project a database file."
            )
        return Path(database).with_name(f"{Path(database).name}.{LOCK_NAME}.lock")
