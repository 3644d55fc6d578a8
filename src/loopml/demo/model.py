"""The demo's estimator: gradient-boosted trees with native categories behind a small encoder.

The encoder is deliberately lean: single-row predictions are the serving hot path, and scikit-learn's
ColumnTransformer costs milliseconds per call there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline

CATEGORICAL = ("merchant_category",)


class CategoryCodes(TransformerMixin, BaseEstimator):
    """Categorical columns first as integer codes (unseen or missing → NaN), then numeric columns as floats."""

    def __init__(self, categorical: Sequence[str] = CATEGORICAL) -> None:
        self.categorical = categorical

    def fit(self, X: pd.DataFrame, y: object = None) -> CategoryCodes:
        self.numeric_ = [c for c in X.columns if c not in self.categorical]
        self.codes_ = {
            c: {v: float(i) for i, v in enumerate(sorted(X[c].dropna().unique()))} for c in self.categorical
        }
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        columns = [np.array([self.codes_[c].get(v, np.nan) for v in X[c]]) for c in self.categorical]
        columns += [X[c].to_numpy(dtype=float, na_value=np.nan) for c in self.numeric_]
        return np.column_stack(columns)


def make_estimator(
    max_iter: int = 60,
    learning_rate: float = 0.1,
    max_leaf_nodes: int = 15,
    categorical: Sequence[str] = CATEGORICAL,
) -> Pipeline:
    """A fresh, unfitted fraud classifier; a category never seen in training reads as missing.

    Category codes are split on like numbers: native categorical support costs ~2 ms per single-row call.
    """
    trees = HistGradientBoostingClassifier(
        max_iter=max_iter,
        learning_rate=learning_rate,
        max_leaf_nodes=max_leaf_nodes,
        random_state=0,
    )
    return Pipeline([("encode", CategoryCodes(tuple(categorical))), ("trees", trees)])
