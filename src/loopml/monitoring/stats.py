"""Two-sample tests used for drift.

- Kolmogorov–Smirnov: D = sup_x |F_ref(x) − F_cur(x)|, the largest gap between the two empirical CDFs; the
  p-value is scipy's (exact for small samples, asymptotic otherwise).
- Chi-squared test of homogeneity on the 2 × k table of category counts (reference row, current row):
  X² = Σ (observed − expected)² / expected with expected = row total × column total / grand total and k − 1
  degrees of freedom. A category seen in only one sample is a column with a zero in the other row, so new
  categories count as evidence of drift instead of being dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


def ks_test(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray) -> TestResult:
    result = stats.ks_2samp(np.asarray(reference, dtype=float), np.asarray(current, dtype=float))
    return TestResult(float(result.statistic), float(result.pvalue))


def chi_squared_test(
    reference: Sequence[object] | pd.Series, current: Sequence[object] | pd.Series
) -> TestResult:
    ref_counts = pd.Series(reference).astype(str).value_counts()
    cur_counts = pd.Series(current).astype(str).value_counts()
    categories = sorted(set(ref_counts.index) | set(cur_counts.index))
    if len(categories) < 2:
        return TestResult(0.0, 1.0)
    table = np.array(
        [[ref_counts.get(c, 0) for c in categories], [cur_counts.get(c, 0) for c in categories]], dtype=float
    )
    statistic, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    return TestResult(float(statistic), float(p_value))
