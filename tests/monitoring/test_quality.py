"""Data quality rules derived from the training profile, checked per window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopml.data.profiles import profile_frame
from loopml.errors import ValidationError
from loopml.monitoring.quality import QualitySettings, check_quality


@pytest.fixture
def reference():
    rng = np.random.default_rng(1)
    n = 5_000
    amount = rng.uniform(0, 100, n)
    amount[rng.random(n) < 0.02] = np.nan
    return profile_frame(pd.DataFrame({"amount": amount, "channel": rng.choice(["web", "app", "store"], n)}))


def window_of(reference, **columns):
    return profile_frame(pd.DataFrame(columns), reference=reference)


def failures(reference, window, **kwargs) -> set[tuple[str, str]]:
    return {(c.feature, c.check) for c in check_quality(reference, window, **kwargs) if not c.passed}


def test_a_window_like_training_passes_every_check(reference) -> None:
    rng = np.random.default_rng(2)
    window = window_of(reference, amount=rng.uniform(0, 100, 500), channel=rng.choice(["web", "app"], 500))
    checks = check_quality(reference, window)
    assert {c.check for c in checks} == {"missing", "type", "range", "constant", "unseen"}
    assert all(c.passed for c in checks), [c.message for c in checks if not c.passed]


def test_each_rule_fails_on_what_it_guards(reference) -> None:
    n = 200
    missing = window_of(
        reference, amount=[np.nan] * 30 + [50.0] * (n - 30), channel=["web", "app"] * (n // 2)
    )
    assert failures(reference, missing) == {("amount", "missing"), ("amount", "constant")}
    outside = window_of(reference, amount=np.linspace(-50, 150, n), channel=["web", "kiosk"] * (n // 2))
    assert failures(reference, outside) == {("amount", "range"), ("channel", "unseen")}
    stuck = window_of(reference, amount=np.linspace(10, 20, n), channel=["web"] * n)
    assert failures(reference, stuck) == {("channel", "constant")}
    typed = window_of(reference, amount=["12.5", "oops"] * (n // 2), channel=["web", "app"] * (n // 2))
    assert ("amount", "type") in failures(reference, typed)
    null = window_of(reference, amount=[None] * n, channel=["web", "app"] * (n // 2))
    assert failures(reference, null) == {("amount", "missing"), ("amount", "all_null")}
    message = next(c for c in check_quality(reference, outside) if c.check == "range").message
    assert "outside the training range [" in message and "above the limit 1.00%" in message


def test_a_feature_the_records_lack_fails_the_schema_and_empty_windows_pass(reference) -> None:
    window = window_of(reference, amount=[1.0, 2.0])
    assert ("channel", "schema") in failures(reference, window, logged=["amount"])
    empty = window_of(reference, amount=[], channel=[])
    checks = check_quality(reference, empty)
    assert [c.check for c in checks] == ["rows", "rows"] and all(c.passed for c in checks)


def test_tolerances_are_shares() -> None:
    with pytest.raises(ValidationError, match="missing_tolerance is a share"):
        QualitySettings(missing_tolerance=5)
