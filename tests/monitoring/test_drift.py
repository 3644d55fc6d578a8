"""Drift detection: methods by kind and size, tiers, corrections, rules, output drift and every edge case."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from loopml.data.profiles import profile_frame
from loopml.errors import ValidationError
from loopml.monitoring import DriftSettings, Rule, compare, compare_profiles
from loopml.monitoring.drift import CRITICAL, NO_DATA, OK, WARNING


def world(rng: np.random.Generator, n: int, shift: float = 0.0, new_category: bool = False) -> pd.DataFrame:
    channels = ["web", "app", "store"] + (["kiosk"] if new_category else [])
    weights = [0.5, 0.3, 0.2] if not new_category else [0.4, 0.2, 0.1, 0.3]
    return pd.DataFrame(
        {
            "amount": rng.normal(shift, 1.0, n),
            "age": rng.normal(40, 10, n),
            "channel": rng.choice(channels, n, p=weights),
            "member": rng.choice(["yes", "no"], n),
        }
    )


def test_small_samples_use_p_value_tests_and_large_ones_distances() -> None:
    rng = np.random.default_rng(1)
    small = compare(world(rng, 800), world(rng, 500)).to_frame().set_index("feature").method.to_dict()
    assert small == {"amount": "ks", "age": "ks", "channel": "chi_squared", "member": "z"}
    large = compare(world(rng, 50_000), world(rng, 20_000)).to_frame().set_index("feature").method.to_dict()
    assert large == {
        "amount": "wasserstein",
        "age": "wasserstein",
        "channel": "jensen_shannon",
        "member": "jensen_shannon",
    }


def test_shifts_are_graded_warning_and_critical() -> None:
    rng = np.random.default_rng(2)
    reference = world(rng, 50_000)
    current = world(rng, 50_000)
    current["amount"] += 0.15  # normalised Wasserstein ~0.15: warning
    current["age"] += 4.0  # 0.4 reference standard deviations: critical
    report = compare(reference, current, ["amount", "age", "member"])
    severities = {f.feature: f.severity for f in report.features}
    assert severities == {"amount": WARNING, "age": CRITICAL, "member": OK}
    assert report.drifted_features == ["amount", "age"] and report.share == pytest.approx(2 / 3)
    assert report.dataset_drift and report.severity == CRITICAL
    amount = report.features[0]
    assert amount.statistic == pytest.approx(0.15, abs=0.02) and (amount.warning, amount.critical) == (
        0.1,
        0.2,
    )


def test_rules_override_method_and_thresholds_per_feature() -> None:
    rng = np.random.default_rng(3)
    reference, current = world(rng, 5_000), world(rng, 5_000, shift=0.3)
    settings = DriftSettings(
        rules={"amount": Rule(method="psi", warning=0.01, critical=0.5), "channel": Rule(method="hellinger")}
    )
    rows = {f.feature: f for f in compare(reference, current, settings=settings).features}
    assert rows["amount"].method == "psi" and rows["amount"].severity == WARNING
    assert (rows["amount"].warning, rows["amount"].critical) == (0.01, 0.5)
    assert rows["channel"].method == "hellinger" and rows["channel"].severity == OK
    with pytest.raises(ValidationError, match="unknown drift method 'magic'"):
        DriftSettings(rules={"amount": Rule(method="magic")})
    with pytest.raises(ValidationError, match="'channel' is categorical; method 'ks'"):
        compare(reference, current, settings=DriftSettings(rules={"channel": Rule(method="ks")}))
    with pytest.raises(ValidationError, match="critical <= warning"):
        DriftSettings(p_value_warning=0.01, p_value_critical=0.05)


def test_corrections_adjust_p_values_across_features() -> None:
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({f"x{i}": rng.normal(size=300) for i in range(5)})
    current = pd.DataFrame({f"x{i}": rng.normal(0.25 if i == 0 else 0.0, size=300) for i in range(5)})
    plain = compare(reference, current)
    p = np.array([f.p_value for f in plain.features])
    bonferroni = compare(reference, current, settings=DriftSettings(correction="bonferroni"))
    assert [f.p_adjusted for f in bonferroni.features] == pytest.approx(np.minimum(p * 5, 1.0).tolist())
    bh = compare(reference, current, settings=DriftSettings(correction="benjamini-hochberg"))
    order = np.argsort(p)
    ranked = p[order] * 5 / np.arange(1, 6)
    expected = np.empty(5)
    expected[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    assert [f.p_adjusted for f in bh.features] == pytest.approx(expected.tolist())
    assert all(f.p_adjusted >= f.p_value for f in bh.features)
    assert all("bonferroni over 5 tests" in f.reason for f in bonferroni.features)
    with pytest.raises(ValidationError, match="Unknown correction"):
        DriftSettings(correction="holm-ish")


def test_prediction_drift_is_reported_apart_from_the_features() -> None:
    rng = np.random.default_rng(5)
    reference, current = world(rng, 2_000), world(rng, 2_000)
    reference["score"], current["score"] = rng.beta(2, 5, 2_000), rng.beta(5, 2, 2_000)
    report = compare(reference, current, ["amount", "age"], prediction="score")
    assert report.prediction is not None and report.prediction.feature == "score"
    assert report.prediction.severity == CRITICAL and report.share == 0.0
    assert "score" in set(report.to_frame().feature)


def test_profiles_give_the_same_verdicts_without_raw_data() -> None:
    rng = np.random.default_rng(6)
    reference, current = world(rng, 40_000), world(rng, 40_000, shift=0.3, new_category=True)
    from_frames = compare(reference, current)
    ref_profile = profile_frame(reference)
    window = profile_frame(current.iloc[:15_000], reference=ref_profile).merge(
        profile_frame(current.iloc[15_000:], reference=ref_profile)
    )
    from_profiles = compare_profiles(ref_profile, window)
    for a, b in zip(from_frames.features, from_profiles.features, strict=True):
        assert (a.feature, a.method, a.severity) == (b.feature, b.method, b.severity)
        assert a.statistic == pytest.approx(b.statistic, abs=1e-3)  # raw Wasserstein vs its bins
    channel = next(f for f in from_profiles.features if f.feature == "channel")
    assert "not in the reference: 'kiosk'" in channel.reason


def test_the_report_is_a_table_and_json() -> None:
    rng = np.random.default_rng(7)
    report = compare(world(rng, 500), world(rng, 500, shift=1.0))
    table = report.to_frame()
    assert {"feature", "method", "statistic", "p_value", "warning", "critical", "severity", "reason"} <= set(
        table
    )
    data = json.loads(report.to_json())
    assert data["features"][0]["feature"] == "amount" and data["features"][0]["severity"] == CRITICAL
    assert data["settings"]["p_value_warning"] == 0.05


def test_identical_distributions_alert_at_the_configured_false_positive_rate() -> None:
    rng = np.random.default_rng(8)
    trials = 400
    alerts = sum(
        compare(pd.DataFrame({"x": rng.normal(size=200)}), pd.DataFrame({"x": rng.normal(size=200)}))
        .features[0]
        .drifted
        for _ in range(trials)
    )
    # KS at 0.05: the expected count is 20; four standard deviations above it would be a broken test.
    assert alerts / trials <= 0.05 + 4 * np.sqrt(0.05 * 0.95 / trials)
    large = [compare(world(rng, 30_000), world(rng, 30_000)) for _ in range(5)]
    assert all(report.severity == OK for report in large)  # distances do not flag sampling noise


def test_shifted_distributions_are_caught() -> None:
    rng = np.random.default_rng(9)
    caught = sum(
        compare(pd.DataFrame({"x": rng.normal(size=300)}), pd.DataFrame({"x": rng.normal(0.5, size=300)}))
        .features[0]
        .drifted
        for _ in range(50)
    )
    assert caught >= 48
    report = compare(world(rng, 30_000), world(rng, 30_000, shift=0.5, new_category=True))
    severities = {f.feature: f.severity for f in report.features}
    assert severities["amount"] == CRITICAL and severities["channel"] != OK


@pytest.mark.parametrize(
    ("reference", "current", "severity", "reason"),
    [
        ([1.0, 2.0, np.nan] * 20, [np.nan] * 10, NO_DATA, "every value in the current window is missing"),
        ([1.0, 2.0, 3.0] * 20, [], NO_DATA, "the current window has no rows"),
        ([None] * 10, [1.0, 2.0], NO_DATA, "every value in the reference is missing"),
        ([1.0, 2.0, 3.0] * 20, [2.0], OK, ""),
        ([3.0] * 50, [3.0] * 20, OK, "the reference is constant (3)"),
        ([3.0] * 50, [4.0] * 20, CRITICAL, "the reference is constant (3)"),
        (["a"] * 50, ["a"] * 20, OK, "one category on both sides"),
        ([1, "1", "b", 2.5] * 10, ["1", 1, 2.5, "b"] * 5, OK, "numbers and text in one column"),
        (
            [1.0, 2.0, 3.0] * 20,
            [1.0, "x", None, 2.0] * 5,
            OK,
            "5 current value(s) of the wrong type left out",
        ),
    ],
    ids=[
        "nan",
        "empty",
        "all-null",
        "single-row",
        "constant",
        "constant-moved",
        "one-category",
        "mixed",
        "types",
    ],
)
def test_edge_cases_give_a_defined_result_with_a_reason(
    reference: list[object], current: list[object], severity: str, reason: str
) -> None:
    report = compare(
        pd.DataFrame({"v": pd.Series(reference, dtype=object)}),
        pd.DataFrame({"v": pd.Series(current, dtype=object)}),
    )
    (feature,) = report.features
    assert feature.severity == severity
    assert reason in feature.reason
    json.loads(report.to_json())  # always serialisable, infinite distances included


def test_an_all_null_column_in_a_large_window_does_not_count_towards_the_share() -> None:
    rng = np.random.default_rng(10)
    reference, current = world(rng, 5_000), world(rng, 5_000)
    current["age"] = np.nan
    report = compare(reference, current)
    assert [f.feature for f in report.evaluated] == ["amount", "channel", "member"]
    assert report.share == 0.0 and report.severity == OK


def test_compare_names_missing_columns() -> None:
    frame = pd.DataFrame({"x": [1.0]})
    with pytest.raises(ValidationError, match=r"\['nope'\] are missing"):
        compare(frame, frame, ["nope"])
