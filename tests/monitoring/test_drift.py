import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from loopml.errors import ValidationError
from loopml.monitoring import compare
from loopml.monitoring.stats import chi_squared_test, ks_test


def test_ks_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=700), rng.normal(0.1, size=900)
    expected = stats.ks_2samp(a, b)
    result = ks_test(a, b)
    assert result.statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, abs=1e-9)


def test_chi_squared_counts_unseen_categories_as_evidence() -> None:
    reference = ["a"] * 500 + ["b"] * 500
    current = ["a"] * 450 + ["b"] * 450 + ["new"] * 100
    result = chi_squared_test(reference, current)
    table = np.array([[500, 500, 0], [450, 450, 100]])
    statistic, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    assert result.statistic == pytest.approx(statistic) and result.p_value == pytest.approx(
        p_value, abs=1e-12
    )
    assert result.p_value < 1e-10
    assert chi_squared_test(["a"] * 10, ["a"] * 5).p_value == 1.0


def test_compare_flags_shifted_features_only() -> None:
    rng = np.random.default_rng(2)
    reference = pd.DataFrame(
        {"x": rng.normal(size=2000), "y": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000)}
    )
    current = pd.DataFrame(
        {"x": rng.normal(1.0, size=1000), "y": rng.normal(size=1000), "c": rng.choice(["a", "b", "z"], 1000)}
    )
    report = compare(reference, current, threshold=0.01)
    assert report.drifted_features == ["x", "c"]
    assert report.share == pytest.approx(2 / 3)
    rows = report.to_frame().set_index("feature")
    assert rows.loc["x", "method"] == "ks" and rows.loc["c", "method"] == "chi_squared"
    assert json.loads(json.dumps(report.to_dict()))["features"][1]["p_value"] > 0.01


def test_missing_values_empty_windows_and_constants_do_not_crash() -> None:
    reference = pd.DataFrame({"x": [1.0, 2.0, np.nan, 4.0] * 50, "k": [3.0] * 200, "e": [1.0] * 200})
    current = pd.DataFrame({"x": [np.nan] * 10, "k": [3.0] * 10, "e": [1.0] * 10})
    report = compare(reference, current)
    statuses = report.to_frame().set_index("feature").status.to_dict()
    assert statuses == {"x": "no_data", "k": "ok", "e": "ok"}
    assert report.share == 0.0
    empty = compare(reference, current.iloc[:0])
    assert {f.status for f in empty.features} == {"no_data"} and empty.share == 0.0


def test_compare_validates_its_input() -> None:
    frame = pd.DataFrame({"x": [1.0]})
    with pytest.raises(ValidationError, match="missing"):
        compare(frame, frame, ["nope"])
    with pytest.raises(ValidationError, match="p-value"):
        compare(frame, frame, threshold=5)
