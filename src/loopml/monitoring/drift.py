"""Per-feature drift between a reference sample and a current window, and the share of drifted features.

Numeric features use the KS test and categorical ones the chi-squared test; a feature drifts when its p-value
falls below the threshold. Missing values are left out of the tests (their rate is a data-quality concern),
and a feature with no values on one side is reported as `no_data`, not as drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from loopml.errors import ValidationError
from loopml.monitoring.stats import chi_squared_test, ks_test

DRIFT, OK, NO_DATA = "drift", "ok", "no_data"


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str
    method: str
    statistic: float | None
    p_value: float | None
    threshold: float
    n_reference: int
    n_current: int
    status: str

    @property
    def drifted(self) -> bool:
        return self.status == DRIFT


@dataclass(frozen=True)
class DriftReport:
    features: list[FeatureDrift]

    @property
    def evaluated(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.status != NO_DATA]

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def share(self) -> float:
        """Share of evaluated features that drifted (0 when nothing could be evaluated)."""
        evaluated = self.evaluated
        return len(self.drifted_features) / len(evaluated) if evaluated else 0.0

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{**asdict(f), "drifted": f.drifted} for f in self.features])

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "drifted_features": self.drifted_features,
            "features": [{**asdict(f), "drifted": f.drifted} for f in self.features],
        }


def compare(
    reference_df: pd.DataFrame,
    current_df: pd.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    threshold: float = 0.05,
    categorical: Sequence[str] = (),
) -> DriftReport:
    """Test every column (or `columns`) for drift from `reference_df` to `current_df`."""
    if not 0 < threshold < 1:
        raise ValidationError(f"threshold is a p-value and must be between 0 and 1, got {threshold}.")
    names = (
        list(columns) if columns is not None else [c for c in reference_df.columns if c in current_df.columns]
    )
    absent = [c for c in names if c not in reference_df.columns or c not in current_df.columns]
    if absent:
        raise ValidationError(f"Column(s) {absent} are missing from the reference or the current data.")
    return DriftReport(
        [_feature_drift(reference_df[c], current_df[c], c, threshold, c in categorical) for c in names]
    )


def _feature_drift(
    reference: pd.Series, current: pd.Series, name: str, threshold: float, categorical: bool
) -> FeatureDrift:
    ref, cur = reference.dropna(), current.dropna()
    numeric = not categorical and _is_numeric(ref) and _is_numeric(cur)
    kind, method = ("numeric", "ks") if numeric else ("categorical", "chi_squared")
    if len(ref) == 0 or len(cur) == 0:
        return FeatureDrift(name, kind, method, None, None, threshold, len(ref), len(cur), NO_DATA)
    result = ks_test(ref.astype(float), cur.astype(float)) if numeric else chi_squared_test(ref, cur)
    status = DRIFT if result.p_value < threshold else OK
    return FeatureDrift(
        name, kind, method, result.statistic, result.p_value, threshold, len(ref), len(cur), status
    )


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
