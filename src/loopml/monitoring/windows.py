"""Windows over the prediction log: by time (tumbling or rolling) or by count, per endpoint and model version.

Time windows are half-open, [start, end), aligned on the range asked for; a time window with no predictions is
still a window (its results say it is empty). Count windows take consecutive predictions of one version in
time order, `rows` at a time; the newest predictions that do not yet fill one wait for more.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from loopml.errors import ValidationError

TUMBLING, ROLLING, COUNT = "tumbling", "rolling", "count"
MAX_WINDOWS = 100_000  # per version: a range this long in windows this short is a mistake


@dataclass(frozen=True)
class WindowSpec:
    """How to cut the log: `tumbling(size)`, `rolling(size, step)` or `count(rows)`."""

    kind: str
    size: timedelta | None = None
    step: timedelta | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in (TUMBLING, ROLLING, COUNT):
            raise ValidationError(f"Unknown window kind {self.kind!r}; use {TUMBLING}, {ROLLING} or {COUNT}.")
        if self.kind == COUNT:
            if self.rows is None or self.rows < 1:
                raise ValidationError(f"A count window needs rows >= 1, got {self.rows!r}.")
            return
        if self.size is None or self.size <= timedelta(0):
            raise ValidationError(f"A {self.kind} window needs a positive size, got {self.size!r}.")
        if self.kind == ROLLING and (self.step is None or self.step <= timedelta(0)):
            raise ValidationError(f"A rolling window needs a positive step, got {self.step!r}.")

    @classmethod
    def tumbling(cls, size: timedelta) -> WindowSpec:
        return cls(TUMBLING, size=size)

    @classmethod
    def rolling(cls, size: timedelta, step: timedelta) -> WindowSpec:
        return cls(ROLLING, size=size, step=step)

    @classmethod
    def count(cls, rows: int) -> WindowSpec:
        return cls(COUNT, rows=rows)

    def describe(self) -> str:
        if self.kind == COUNT:
            return f"every {self.rows} predictions"
        if self.kind == TUMBLING:
            return f"tumbling {self.size}"
        return f"rolling {self.size} every {self.step}"


@dataclass(frozen=True)
class Window:
    """One window of one version's predictions (and their labels, when read with them)."""

    endpoint: str
    model_name: str
    version: int
    start: datetime
    end: datetime
    rows: pd.DataFrame

    @property
    def size(self) -> int:
        return len(self.rows)


def cut(
    log: pd.DataFrame,
    spec: WindowSpec,
    endpoint: str,
    start: datetime,
    end: datetime,
    versions: list[tuple[str, int]] | None = None,
) -> list[Window]:
    """The windows of each version in `log` (or of `versions`, so one that logged nothing gets empty time
    windows), oldest first per version."""
    if end <= start:
        raise ValidationError(f"The window range must end after it starts (start {start}, end {end}).")
    keys = versions if versions is not None else _versions(log)
    windows = []
    for model_name, version in keys:
        rows = log[(log.model_name == model_name) & (log.model_version == version)] if len(log) else log
        for window_start, window_end, part in _split(rows, spec, start, end):
            windows.append(Window(endpoint, model_name, version, window_start, window_end, part))
    return windows


def _versions(log: pd.DataFrame) -> list[tuple[str, int]]:
    if not len(log):
        return []
    pairs = log[["model_name", "model_version"]].drop_duplicates().itertuples(index=False)
    return sorted((str(name), int(version)) for name, version in pairs)


def _split(
    rows: pd.DataFrame, spec: WindowSpec, start: datetime, end: datetime
) -> Iterator[tuple[datetime, datetime, pd.DataFrame]]:
    if spec.kind == COUNT:
        assert spec.rows is not None
        ordered = rows.sort_values("ts", kind="stable") if len(rows) else rows
        for first in range(0, len(ordered) - spec.rows + 1, spec.rows):
            part = ordered.iloc[first : first + spec.rows]
            yield part.ts.iloc[0].to_pydatetime(), part.ts.iloc[-1].to_pydatetime(), part
        return
    assert spec.size is not None
    step = spec.size if spec.kind == TUMBLING else spec.step
    assert step is not None
    if (end - start) / step > MAX_WINDOWS:
        raise ValidationError(
            f"{spec.describe()} over {end - start} makes more than {MAX_WINDOWS:,} windows; widen the windows or "
            "narrow the range."
        )
    times = pd.to_datetime(rows.ts, utc=True) if len(rows) else None
    window_start = start
    while window_start < end:
        window_end = window_start + spec.size
        if spec.kind == ROLLING and window_end > end:
            return  # only whole rolling windows
        window_end = min(window_end, end)
        if times is None:
            part = rows
        else:
            part = rows[(times >= pd.Timestamp(window_start)) & (times < pd.Timestamp(window_end))]
        yield window_start, window_end, part
        window_start += step
