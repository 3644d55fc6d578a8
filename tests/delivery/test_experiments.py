"""A/B tests decide right on data with a known effect, and decide nothing on data with none."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from loopml.delivery.experiments import (
    CONTINUE,
    CONTROL,
    NO_DIFFERENCE,
    TREATMENT,
    ExperimentSettings,
    ab_test,
)
from loopml.errors import ValidationError

SETTINGS = ExperimentSettings(alpha=0.05, power=0.8, min_effect=0.02, baseline_rate=0.10)


def conversions(rng: np.random.Generator, n: int, rate: float) -> pd.Series:
    return pd.Series((rng.random(n) < rate).astype(float))


def test_the_planned_sample_follows_the_standard_formula() -> None:
    result = ab_test(pd.Series([1.0, 0.0] * 5), pd.Series([0.0, 1.0] * 5), SETTINGS)
    p1, p2 = 0.10, 0.12
    z_a, z_b = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    expected = (z_a * np.sqrt(2 * 0.11 * 0.89) + z_b * np.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / 0.02**2
    assert result.required_n == int(np.ceil(expected)) and result.decision == CONTINUE


def test_a_known_effect_is_found_with_the_stated_power() -> None:
    rng = np.random.default_rng(1)
    n = ab_test(pd.Series([0.0, 1.0]), pd.Series([0.0, 1.0]), SETTINGS).required_n
    decisions = [
        ab_test(conversions(rng, n, 0.10), conversions(rng, n, 0.12), SETTINGS).decision for _ in range(200)
    ]
    found = decisions.count(TREATMENT) / len(decisions)
    assert found >= 0.8 - 3 * np.sqrt(0.8 * 0.2 / 200)  # power 0.8, within sampling error
    assert CONTROL not in decisions  # never the wrong winner
    result = ab_test(conversions(rng, n, 0.10), conversions(rng, n, 0.14), SETTINGS)
    assert (
        result.decision == TREATMENT and result.ci_low > 0 and result.ci_low < result.effect < result.ci_high
    )


def test_no_effect_gives_no_winner_beyond_the_significance_level() -> None:
    rng = np.random.default_rng(2)
    n = ab_test(pd.Series([0.0, 1.0]), pd.Series([0.0, 1.0]), SETTINGS).required_n
    decisions = [
        ab_test(conversions(rng, n, 0.10), conversions(rng, n, 0.10), SETTINGS).decision for _ in range(200)
    ]
    winners = sum(d in (TREATMENT, CONTROL) for d in decisions) / len(decisions)
    assert winners <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 200)
    assert decisions.count(NO_DIFFERENCE) / len(decisions) >= 0.85


def test_it_waits_for_the_plan_whatever_the_early_p_value() -> None:
    rng = np.random.default_rng(3)
    early = ab_test(conversions(rng, 300, 0.05), conversions(rng, 300, 0.20), SETTINGS)
    assert early.p_value < 0.001 and early.decision == CONTINUE and "the plan needs" in early.reason


def test_continuous_outcomes_use_welch() -> None:
    rng = np.random.default_rng(4)
    settings = ExperimentSettings(min_effect=0.5)
    a, b = pd.Series(rng.normal(10, 2, 900)), pd.Series(rng.normal(11, 3, 900))
    result = ab_test(a, b, settings)
    welch = stats.ttest_ind(b, a, equal_var=False)
    assert not result.binary and result.p_value == pytest.approx(welch.pvalue)
    assert result.decision == TREATMENT and result.ci_low < 1.0 < result.ci_high


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="alpha and power"):
        ExperimentSettings(alpha=1.5)
    with pytest.raises(ValidationError, match="min_effect must be positive"):
        ExperimentSettings(min_effect=0)
