"""The statistics module against scipy and against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.spatial import distance

from loopml.monitoring import stats


@pytest.mark.parametrize(
    ("n", "m", "shift"),
    [(700, 900, 0.1), (30, 45, 0.5), (20_000, 15_000, 0.02), (12_000, 40, 0.3), (50_000, 50_000, 0.0)],
)
def test_ks_p_values_equal_scipy_exact_and_asymptotic(n: int, m: int, shift: float) -> None:
    rng = np.random.default_rng(n + m)
    a, b = rng.normal(size=n), rng.normal(shift, size=m)
    expected = scipy_stats.ks_2samp(a, b)
    result = stats.ks_test(a, b)
    assert result.statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, abs=1e-9)


def test_ks_with_ties_equals_scipy() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, size=30_000), rng.integers(0, 6, size=25_000)
    expected = scipy_stats.ks_2samp(a, b)
    result = stats.ks_test(a, b)
    assert result.statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, abs=1e-9)


def test_binned_ks_is_the_gap_at_the_edges() -> None:
    result = stats.ks_binned(np.array([50, 50, 0]), np.array([20, 50, 30]))
    assert result.statistic == pytest.approx(0.3)  # CDFs at the edges: (0.5, 1, 1) vs (0.2, 0.7, 1)
    effective = round(100 * 100 / 200)
    assert result.p_value == pytest.approx(scipy_stats.kstwo.sf(0.3, effective), abs=1e-12)


def test_chi_squared_equals_scipy_and_counts_unseen_categories() -> None:
    reference, current = [500, 500, 0], [450, 450, 100]
    result = stats.chi_squared_test(reference, current)
    statistic, p_value, _, _ = scipy_stats.chi2_contingency(np.array([reference, current]), correction=False)
    assert result.statistic == pytest.approx(statistic, rel=1e-12)
    assert result.p_value == pytest.approx(p_value, abs=1e-9)
    assert result.p_value < 1e-10
    assert stats.chi_squared_test([10, 0], [5, 0]) == stats.TestResult(0.0, 1.0)  # one category on both sides


def test_two_proportion_z_by_hand_and_as_the_square_root_of_chi_squared() -> None:
    result = stats.z_test_proportions(50, 100, 70, 100)
    pooled = 120 / 200
    z = (0.7 - 0.5) / math.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 100))
    assert result.statistic == pytest.approx(z, rel=1e-12)
    chi2 = scipy_stats.chi2_contingency(np.array([[50, 50], [70, 30]]), correction=False)
    assert result.p_value == pytest.approx(chi2.pvalue, abs=1e-12)
    assert stats.z_test_proportions(0, 10, 0, 20) == stats.TestResult(0.0, 1.0)


def test_psi_and_kl_by_hand_with_the_epsilon_for_empty_bins() -> None:
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert stats.psi([50, 50], [25, 75]) == pytest.approx(expected, rel=1e-12)
    eps = 1e-4
    with_empty = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - eps) * math.log(0.5 / eps)
    assert stats.psi([100, 0], [50, 50]) == pytest.approx(with_empty, rel=1e-12)
    assert stats.psi([100, 0], [50, 50], epsilon=1e-3) < stats.psi([100, 0], [50, 50])
    assert stats.psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-15)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert stats.kl_divergence([50, 50], [25, 75]) == pytest.approx(kl, rel=1e-12)


def test_jensen_shannon_by_hand_and_against_scipy() -> None:
    kl_ref = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_cur = 1.0 * math.log2(1.0 / 0.75)
    assert stats.jensen_shannon([1, 1], [1, 0]) == pytest.approx(math.sqrt((kl_ref + kl_cur) / 2), rel=1e-12)
    assert stats.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert stats.jensen_shannon([3, 3, 4], [3, 3, 4]) == pytest.approx(0.0, abs=1e-12)
    p, q = np.array([5.0, 1, 7, 0]), np.array([2.0, 2, 2, 9])
    assert stats.jensen_shannon(p, q) == pytest.approx(distance.jensenshannon(p, q, base=2), rel=1e-9)


def test_hellinger_by_hand() -> None:
    assert stats.hellinger([1, 0], [0, 1]) == pytest.approx(1.0)
    assert stats.hellinger([1, 1], [1, 1]) == pytest.approx(0.0, abs=1e-12)
    expected = math.sqrt(1 - (math.sqrt(0.5 * 0.25) + math.sqrt(0.5 * 0.75)))
    assert stats.hellinger([1, 1], [1, 3]) == pytest.approx(expected, rel=1e-12)


def test_wasserstein_by_hand_raw_and_binned() -> None:
    scale = float(np.std([0, 1, 2, 3]))
    assert stats.wasserstein([0, 1, 2, 3], [1, 2, 3, 4], scale) == pytest.approx(1 / scale, rel=1e-12)
    # {0.5, 1.5} against {1.5, 1.5}: half the mass moves by 1. Bins [0, 1] and [1, 2] with counts and sums.
    edges = np.array([0.0, 1.0, 2.0])
    binned = stats.wasserstein_binned(edges, [1, 1], [0, 2], [0.5, 1.5], [0.0, 3.0], 1.0)
    assert binned == pytest.approx(0.5)
    # The CDFs cross inside the one bin [0, 1] ({0.2, 0.8} against {0.5, 0.5}): a lower bound, here 0.
    assert stats.wasserstein_binned(np.array([0.0, 1.0]), [2], [2], [1.0], [1.0], 1.0) == pytest.approx(0.0)
    assert stats.wasserstein([5, 5], [5, 5], 0.0) == 0.0
    assert stats.wasserstein([5, 5], [6, 6], 0.0) == math.inf


def test_binned_wasserstein_approaches_the_raw_one_on_quantile_bins() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=200_000), rng.normal(0.3, 1.2, size=200_000)
    edges = np.quantile(a, np.linspace(0, 1, 101))
    low, high = min(a.min(), b.min()), max(a.max(), b.max())
    outer = np.concatenate([[low], edges, [high]])
    bin_a, bin_b = np.searchsorted(edges, a, side="left"), np.searchsorted(edges, b, side="left")
    size = len(edges) + 1
    binned = stats.wasserstein_binned(
        outer,
        np.bincount(bin_a, minlength=size),
        np.bincount(bin_b, minlength=size),
        np.bincount(bin_a, weights=a, minlength=size),
        np.bincount(bin_b, weights=b, minlength=size),
        float(a.std()),
    )
    raw = stats.wasserstein(a, b, float(a.std()))
    assert binned == pytest.approx(raw, rel=2e-3)


def test_bad_counts_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        stats.psi([1, -1], [1, 1])
    with pytest.raises(ValueError, match="both samples need values"):
        stats.ks_test([], [1.0])
    with pytest.raises(ValueError, match="add up to zero"):
        stats.jensen_shannon([0, 0], [1, 1])
