"""Which endpoints the repository API has unloaded, for the whole server.

One `loopml serve` process keeps the set in memory. With `--workers N` the worker processes share it through a
small JSON file in the server's state directory: the worker that answers a load or unload writes it (under a
file lock, atomically) and the others read it on their next route refresh, so an unload reaches every worker
within a refresh interval and the server behaves as one.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_NAME = "unloaded.json"


class UnloadedEndpoints:
    """A set of endpoint names, in memory or shared through `directory` by the processes of one server."""

    def __init__(self, directory: Path | None = None) -> None:
        self._path = directory / FILE_NAME if directory is not None else None
        self._names: frozenset[str] = frozenset()

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def changed(self) -> bool:
        """Whether another process changed the set since this one last read it (taking the change if so).

        The file is a few bytes, read on every route refresh tick: cheaper than trusting modification times,
        which a coarse file-system clock can leave unchanged across two quick writes.
        """
        if self._path is None:
            return False
        names = self._read()
        if names == self._names:
            return False
        self._names = names
        return True

    @property
    def names(self) -> frozenset[str]:
        return self._names

    def replace(self, names: Iterable[str]) -> None:
        self._update(lambda _: frozenset(names))

    def add(self, name: str) -> None:
        self._update(lambda names: names | {name})

    def discard(self, name: str) -> None:
        self._update(lambda names: names - {name})

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget endpoints that no longer exist (a deleted endpoint deployed again starts loaded)."""
        kept = frozenset(names)
        if not self._names - kept:
            return
        self._update(lambda current: current & kept)

    def _update(self, change: Callable[[frozenset[str]], frozenset[str]]) -> None:
        if self._path is None:
            self._names = change(self._names)
            return
        with self._locked():
            names = change(self._read())
            temporary = self._path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(sorted(names)))
            os.replace(temporary, self._path)
            self._names = names

    @contextmanager
    def _locked(self) -> Iterator[None]:
        assert self._path is not None
        with self._path.with_name(f"{FILE_NAME}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> frozenset[str]:
        assert self._path is not None
        try:
            return frozenset(json.loads(self._path.read_text()))
        except FileNotFoundError:
            return frozenset()
