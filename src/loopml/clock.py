"""Injected time: every component asks a Clock, never `datetime.now()`.

A simulated clock lets tests and the demo run weeks of traffic in seconds.
"""

from __future__ import annotations

import mmap
import struct
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    """Source of the current time as a timezone-aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SimulatedClock:
    """A clock that only moves when told to; safe to share between threads."""

    def __init__(self, start: datetime) -> None:
        self._now = as_utc(start)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = as_utc(moment)

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now


def as_utc(moment: datetime) -> datetime:
    """Return `moment` as an aware UTC datetime; naive datetimes are taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class FileClock:
    """A simulated clock shared between processes through an 8-byte memory-mapped file.

    The demo sets the time; a `loopml serve --clock-file` process reads it, so both sides agree on "now"
    while weeks of traffic run in minutes.
    """

    def __init__(self, path: Path | str, start: datetime | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(bytes(8))
        self._file = self.path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), 8)
        if start is not None:
            self.set(start)

    def now(self) -> datetime:
        return _EPOCH + timedelta(microseconds=struct.unpack_from("<q", self._map, 0)[0])

    def set(self, moment: datetime) -> None:
        delta = as_utc(moment) - _EPOCH
        struct.pack_into("<q", self._map, 0, delta // timedelta(microseconds=1))

    def advance(self, delta: timedelta) -> datetime:
        self.set(self.now() + delta)
        return self.now()

    def close(self) -> None:
        self._map.close()
        self._file.close()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
