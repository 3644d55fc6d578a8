"""Windows over the prediction log: tumbling, rolling and count, per version."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from loopml.errors import ValidationError
from loopml.monitoring.windows import WindowSpec, cut
from tests.conftest import START


def log(hours: list[float], version: int = 1) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prediction_id": [f"v{version}-{i}" for i in range(len(hours))],
            "ts": [pd.Timestamp(START) + pd.Timedelta(hours=h) for h in hours],
            "model_name": "m",
            "model_version": version,
        }
    )


def test_tumbling_windows_cover_the_range_per_version_and_keep_empty_ones() -> None:
    rows = pd.concat([log([1, 2, 30, 50]), log([5, 6], version=2)], ignore_index=True)
    windows = cut(rows, WindowSpec.tumbling(timedelta(days=1)), "e", START, START + timedelta(days=3))
    assert [(w.version, w.start - START, w.size) for w in windows] == [
        (1, timedelta(0), 2),
        (1, timedelta(days=1), 1),
        (1, timedelta(days=2), 1),
        (2, timedelta(0), 2),
        (2, timedelta(days=1), 0),
        (2, timedelta(days=2), 0),
    ]
    assert all(w.end - w.start == timedelta(days=1) for w in windows)
    named = cut(
        log([]), WindowSpec.tumbling(timedelta(days=1)), "e", START, START + timedelta(days=2), [("m", 3)]
    )
    assert [(w.version, w.size) for w in named] == [(3, 0), (3, 0)]  # a version that logged nothing


def test_rolling_windows_overlap_and_only_whole_ones_count() -> None:
    rows = log([1, 25, 49, 73])
    spec = WindowSpec.rolling(timedelta(days=2), timedelta(days=1))
    windows = cut(rows, spec, "e", START, START + timedelta(days=4, hours=12))
    assert [w.size for w in windows] == [2, 2, 2]
    assert [list(w.rows.prediction_id) for w in windows][1] == ["v1-1", "v1-2"]
    assert windows[-1].end == START + timedelta(days=4)


def test_count_windows_take_consecutive_predictions_and_leave_the_rest() -> None:
    rows = log([float(h) for h in range(250)][::-1])  # out of order on purpose
    windows = cut(rows, WindowSpec.count(100), "e", START, START + timedelta(days=30))
    assert [w.size for w in windows] == [100, 100]
    assert windows[0].start == START and windows[0].end == START + timedelta(hours=99)
    assert windows[1].start == START + timedelta(hours=100)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: WindowSpec("weekly"), "Unknown window kind"),
        (lambda: WindowSpec.tumbling(timedelta(0)), "positive size"),
        (lambda: WindowSpec.rolling(timedelta(days=1), timedelta(0)), "positive step"),
        (lambda: WindowSpec.count(0), "rows >= 1"),
    ],
)
def test_bad_window_specs_are_refused(make, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make()


def test_a_backwards_or_huge_range_is_refused() -> None:
    spec = WindowSpec.tumbling(timedelta(seconds=1))
    with pytest.raises(ValidationError, match="must end after it starts"):
        cut(log([1]), spec, "e", START, START)
    with pytest.raises(ValidationError, match="more than 100,000 windows"):
        cut(log([1]), spec, "e", START, START + timedelta(days=30))
