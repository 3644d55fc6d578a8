"""Column profiles: reference bins, windows binned against them, merging, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from loopml.data import profiles
from loopml.data.profiles import CATEGORICAL, NUMERIC, Profile, profile_frame, profile_parquet
from loopml.errors import ValidationError


def frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    amount = rng.normal(shift, 1.0, n)
    amount[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "amount": amount,
            "count": rng.integers(0, 10, n),
            "channel": rng.choice(["web", "app", "store"], n),
            "flag": rng.random(n) < 0.3,
        }
    )


def test_a_reference_profile_has_quantile_bins_and_categories() -> None:
    data = frame(np.random.default_rng(1), 20_000)
    reference = profile_frame(data, bins=50)
    amount = reference["amount"]
    assert amount.kind == NUMERIC and len(amount.edges) == 51
    assert amount.count == data.amount.notna().sum() and amount.missing == data.amount.isna().sum()
    assert amount.counts.sum() == amount.count and amount.counts[-1] == 0  # nothing above the maximum
    assert amount.quantile(0.5) == pytest.approx(data.amount.median(), abs=1e-9)
    assert amount.std == pytest.approx(data.amount.std(ddof=0), rel=1e-9)
    assert reference["channel"].kind == CATEGORICAL
    assert reference["channel"].categories == data.channel.value_counts().to_dict()
    assert reference["flag"].kind == CATEGORICAL and set(reference["flag"].categories) == {"True", "False"}
    assert reference["count"].kind == NUMERIC and len(reference["count"].edges) == 10  # ties collapse


def test_windows_merge_into_the_profile_of_all_their_rows() -> None:
    rng = np.random.default_rng(2)
    reference = profile_frame(frame(rng, 10_000))
    parts = [frame(rng, n, shift=0.5) for n in (3_000, 1, 4_500)]
    merged = profile_frame(parts[0], reference=reference)
    for part in parts[1:]:
        merged = merged.merge(profile_frame(part, reference=reference))
    whole = profile_frame(pd.concat(parts, ignore_index=True), reference=reference)
    assert merged.rows == whole.rows == 7_501
    for name in whole.columns:
        a, b = merged[name], whole[name]
        assert (a.rows, a.missing, a.invalid, a.categories) == (b.rows, b.missing, b.invalid, b.categories)
        if a.kind == NUMERIC:
            assert np.array_equal(a.counts, b.counts) and np.allclose(a.sums, b.sums)
            assert (a.minimum, a.maximum) == (b.minimum, b.maximum)
            assert a.mean == pytest.approx(b.mean) and a.m2 == pytest.approx(b.m2)


def test_windows_of_different_references_do_not_merge() -> None:
    rng = np.random.default_rng(3)
    one, two = profile_frame(frame(rng, 1_000)), profile_frame(frame(rng, 1_000))
    with pytest.raises(ValidationError, match="different edges"):
        one.merge(two)


def test_a_profile_survives_json() -> None:
    rng = np.random.default_rng(4)
    reference = profile_frame(frame(rng, 2_000))
    again = Profile.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert again.rows == reference.rows
    for name, column in reference.columns.items():
        restored = again[name]
        assert restored.to_dict() == column.to_dict()


def test_a_window_counts_wrong_types_and_absent_columns() -> None:
    reference = profile_frame(pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]}))
    window = profile_frame(pd.DataFrame({"x": [1.5, "oops", None, np.inf]}), reference=reference)
    assert (window["x"].count, window["x"].invalid, window["x"].missing) == (1, 2, 1)
    assert window["c"].missing == window["c"].rows == 4  # absent from the window: all missing


def test_numbers_and_text_in_one_column_are_categories_marked_mixed() -> None:
    reference = profile_frame(pd.DataFrame({"v": [1, "1", "two", 3.5, None]}))
    column = reference["v"]
    assert column.kind == CATEGORICAL and column.mixed
    assert column.categories == {"1": 2, "two": 1, "3.5": 1}


def test_too_many_categories_pool_the_rarest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiles, "MAX_CATEGORIES", 3)
    reference = profile_frame(pd.DataFrame({"c": list("aaaabbbccd")}))
    assert reference["c"].categories == {"a": 4, "b": 3, profiles.OTHER: 3}


def test_bad_arguments_say_what_to_do() -> None:
    data = pd.DataFrame({"x": [1.0]})
    with pytest.raises(ValidationError, match="bins must be at least 1"):
        profile_frame(data, bins=0)
    with pytest.raises(ValidationError, match=r"Column\(s\) \['y'\]"):
        profile_frame(data, columns=["y"])
    with pytest.raises(ValidationError, match="no column 'y'"):
        profile_frame(data)["y"]


def test_a_parquet_window_is_profiled_batch_by_batch_as_one(tmp_path) -> None:
    rng = np.random.default_rng(5)
    reference = profile_frame(frame(rng, 5_000))
    window = frame(rng, 7_777, shift=0.2)
    window.to_parquet(tmp_path / "window.parquet", row_group_size=1_000)
    streamed = profile_parquet(tmp_path / "window.parquet", reference=reference, batch_rows=500)
    whole = profile_frame(window, reference=reference)
    assert streamed.rows == 7_777
    for name, column in whole.columns.items():
        part = streamed[name]
        assert (part.rows, part.missing, part.invalid, part.categories) == (
            column.rows,
            column.missing,
            column.invalid,
            column.categories,
        )
        if column.kind == NUMERIC:
            assert np.array_equal(part.counts, column.counts) and part.mean == pytest.approx(column.mean)
    window.drop(columns="channel").to_parquet(tmp_path / "without.parquet")
    without = profile_parquet(tmp_path / "without.parquet", reference=reference)
    assert without["channel"].missing == without["channel"].rows == 7_777  # absent: every value missing
