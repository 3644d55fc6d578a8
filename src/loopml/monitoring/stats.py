"""Two-sample statistics for drift, each with the formula it computes.

Notation: a reference sample of n values and a current sample of m values; over k bins (or categories)
reference proportions r_i and current proportions c_i.

- Kolmogorov–Smirnov: D = sup_x |F_r(x) − F_c(x)|, the largest gap between the two empirical CDFs. The
  p-value is scipy's: exact when max(n, m) ≤ 10,000, else the Kolmogorov distribution `kstwo` at
  round(n·m / (n + m)). `ks_binned` takes the CDFs at bin edges instead of raw values: D is then the largest
  gap at the edges (a lower bound of the raw D, within one bin's mass of it).
- Chi-squared test of homogeneity on the 2 × k table of counts: X² = Σ (O − E)² / E with
  E = row total × column total / grand total and k − 1 degrees of freedom; p = P(χ²_{k−1} ≥ X²). A category
  seen in only one sample is a column with a zero in the other row: unseen categories count as evidence.
- Two-proportion Z test: z = (c − r) / √(p̂ (1 − p̂) (1/n + 1/m)) with the pooled share p̂, two-sided
  p = 2 Φ(−|z|).
- Population Stability Index: PSI = Σ (c_i − r_i) ln(c_i / r_i), with an empty bin's proportion replaced by
  `epsilon` (1e-4 unless given) so that it stays finite. Usual reading: < 0.1 stable, 0.1–0.25 moderate,
  > 0.25 major shift.
- Kullback–Leibler: KL(c ‖ r) = Σ c_i ln(c_i / r_i), empty bins replaced by `epsilon` as for PSI.
- Jensen–Shannon distance: √JSD with JSD = ½ KL₂(r ‖ m) + ½ KL₂(c ‖ m), m = (r + c) / 2, in base 2, so it lies
  in [0, 1]; needs no epsilon (0 · log 0 = 0).
- Hellinger distance: H = √(1 − Σ √(r_i c_i)), in [0, 1].
- Normalised Wasserstein: W₁ / σ_r, where W₁ = ∫ |F_r(x) − F_c(x)| dx (the earth mover's distance) and σ_r is
  the reference's standard deviation: shifting every value by one reference standard deviation gives 1.
  `wasserstein_binned` works from each bin's count and sum of values: exact unless the CDFs cross inside a bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

EPSILON = 1e-4  # proportion given to an empty bin in PSI and KL
EXACT_KS_MAX_N = 10_000  # scipy's 'auto' is exact up to this sample size

ArrayLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class TestResult:
    """A test's statistic and p-value."""

    statistic: float
    p_value: float


def ks_test(reference: ArrayLike, current: ArrayLike) -> TestResult:
    """Two-sample Kolmogorov–Smirnov test on raw values (the p-value equals scipy's `ks_2samp`)."""
    ref = np.sort(np.asarray(reference, dtype=float))
    cur = np.sort(np.asarray(current, dtype=float))
    _require_values(len(ref), len(cur))
    if max(len(ref), len(cur)) <= EXACT_KS_MAX_N:
        result = stats.ks_2samp(ref, cur, method="auto")
        return TestResult(float(result.statistic), float(result.pvalue))
    statistic = ks_statistic_sorted(ref, cur)
    return TestResult(statistic, _ks_asymptotic(statistic, len(ref), len(cur)))


def ks_statistic_sorted(reference: np.ndarray, current: np.ndarray) -> float:
    """D of two sorted samples, from both CDFs at every value of either."""
    values = np.concatenate([reference, current])
    gaps = np.searchsorted(reference, values, side="right") / len(reference) - np.searchsorted(
        current, values, side="right"
    ) / len(current)
    return float(max(np.clip(-gaps.min(), 0, 1), gaps.max()))


def ks_binned(reference_counts: np.ndarray, current_counts: np.ndarray) -> TestResult:
    """Kolmogorov–Smirnov from counts in the same ordered bins (D at the bin edges; asymptotic p-value)."""
    ref, cur = _counts(reference_counts), _counts(current_counts)
    n, m = ref.sum(), cur.sum()
    _require_values(n, m)
    statistic = float(np.abs(np.cumsum(ref) / n - np.cumsum(cur) / m).max())
    return TestResult(statistic, _ks_asymptotic(statistic, int(n), int(m)))


def _ks_asymptotic(statistic: float, n: int, m: int) -> float:
    larger, smaller = max(float(n), float(m)), min(float(n), float(m))
    effective = np.round(larger * smaller / (larger + smaller))
    return float(np.clip(stats.kstwo.sf(statistic, effective), 0, 1))


def chi_squared_test(reference_counts: ArrayLike, current_counts: ArrayLike) -> TestResult:
    """Chi-squared test of homogeneity of two count vectors over the same categories (scipy's p-value)."""
    table = np.vstack([_counts(reference_counts), _counts(current_counts)])
    _require_values(table[0].sum(), table[1].sum())
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return TestResult(0.0, 1.0)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return TestResult(statistic, float(stats.chi2.sf(statistic, table.shape[1] - 1)))


def z_test_proportions(
    reference_hits: int, reference_n: int, current_hits: int, current_n: int
) -> TestResult:
    """Two-proportion Z test: is the share of hits the same in both samples?"""
    _require_values(reference_n, current_n)
    pooled = (reference_hits + current_hits) / (reference_n + current_n)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / reference_n + 1 / current_n))
    if spread == 0:  # all hits or none on both sides: nothing differs
        return TestResult(0.0, 1.0)
    z = (current_hits / current_n - reference_hits / reference_n) / spread
    return TestResult(z, float(2 * stats.norm.sf(abs(z))))


def psi(reference_counts: ArrayLike, current_counts: ArrayLike, epsilon: float = EPSILON) -> float:
    """Population Stability Index over the same bins."""
    ref, cur = _proportions(reference_counts, epsilon), _proportions(current_counts, epsilon)
    return float(((cur - ref) * np.log(cur / ref)).sum())


def kl_divergence(reference_counts: ArrayLike, current_counts: ArrayLike, epsilon: float = EPSILON) -> float:
    """Kullback–Leibler divergence of the current distribution from the reference, in nats."""
    ref, cur = _proportions(reference_counts, epsilon), _proportions(current_counts, epsilon)
    return float((cur * np.log(cur / ref)).sum())


def jensen_shannon(reference_counts: ArrayLike, current_counts: ArrayLike) -> float:
    """Jensen–Shannon distance (base 2, in [0, 1])."""
    ref, cur = _proportions(reference_counts), _proportions(current_counts)
    middle = (ref + cur) / 2
    divergence = (_kl2(ref, middle) + _kl2(cur, middle)) / 2
    return float(math.sqrt(max(divergence, 0.0)))


def hellinger(reference_counts: ArrayLike, current_counts: ArrayLike) -> float:
    """Hellinger distance (in [0, 1])."""
    ref, cur = _proportions(reference_counts), _proportions(current_counts)
    return float(math.sqrt(max(1.0 - np.sqrt(ref * cur).sum(), 0.0)))


def wasserstein(reference: ArrayLike, current: ArrayLike, scale: float) -> float:
    """W₁ between raw samples, divided by `scale` (the reference's standard deviation)."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    _require_values(len(ref), len(cur))
    return _normalised(float(stats.wasserstein_distance(ref, cur)), scale)


def wasserstein_binned(
    edges: np.ndarray,
    reference_counts: np.ndarray,
    current_counts: np.ndarray,
    reference_sums: np.ndarray,
    current_sums: np.ndarray,
    scale: float,
) -> float:
    """W₁ from the count and the sum of values in each bin between `edges` (len(edges) − 1 bins), / `scale`.

    Over a bin [a, b], ∫ F(x) dx = b F(b) − a F(a) − (sum of the bin's values) / n, so the signed area
    between the two CDFs is exact per bin; W₁ adds their absolute values, exact unless the CDFs cross inside
    a bin (then a lower bound).
    """
    ref, cur = _counts(reference_counts), _counts(current_counts)
    _require_values(ref.sum(), cur.sum())
    bounds = np.asarray(edges, dtype=float)
    signed = _area_under(bounds, ref, np.asarray(reference_sums, dtype=float)) - _area_under(
        bounds, cur, np.asarray(current_sums, dtype=float)
    )
    return _normalised(float(np.abs(signed).sum()), scale)


def _area_under(bounds: np.ndarray, counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """∫ F over each bin from its counts and sums."""
    total = counts.sum()
    cdf = np.concatenate([[0.0], np.cumsum(counts) / total])
    return bounds[1:] * cdf[1:] - bounds[:-1] * cdf[:-1] - sums / total


def _normalised(distance: float, scale: float) -> float:
    if scale > 0:
        return distance / scale
    return 0.0 if distance == 0 else math.inf


def _kl2(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float((p[mask] * np.log2(p[mask] / q[mask])).sum())


def _counts(values: ArrayLike) -> np.ndarray:
    counts = np.asarray(values, dtype=float)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(
            f"counts must be a one-dimensional array of non-negative numbers, got shape {counts.shape} "
            f"with minimum {counts.min() if counts.size else 'n/a'}; pass one count per bin or category"
        )
    return counts


def _proportions(counts: ArrayLike, epsilon: float = 0.0) -> np.ndarray:
    values = _counts(counts)
    total = values.sum()
    if total <= 0:
        raise ValueError(
            f"counts add up to zero ({len(values)} empty bins): nothing to compare; pass observed counts"
        )
    proportions = values / total
    return np.where(proportions > 0, proportions, epsilon) if epsilon > 0 else proportions


def _require_values(n: float, m: float) -> None:
    if n <= 0 or m <= 0:
        raise ValueError(
            f"both samples need values (reference has {n:g}, current {m:g}); leave out a feature with an empty side"
        )
