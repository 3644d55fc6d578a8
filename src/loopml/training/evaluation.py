"""Model metrics on labelled data, the same code for training runs, gates and reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score


def classification_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC AUC, average precision and log loss of scores for a binary label; NaN where undefined."""
    y = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(scores, dtype=float), 1e-7, 1 - 1e-7)
    metrics = {"n_rows": float(len(y)), "positive_rate": float(y.mean()) if len(y) else float("nan")}
    if len(np.unique(y)) < 2:
        return {
            **metrics,
            "roc_auc": float("nan"),
            "average_precision": float("nan"),
            "log_loss": float("nan"),
        }
    return {
        **metrics,
        "roc_auc": float(roc_auc_score(y, p)),
        "average_precision": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0.0, 1.0])),
    }


def predict_scores(estimator: object, inputs: pd.DataFrame) -> np.ndarray:
    """The positive-class probability of a classifier, or the prediction of a regressor."""
    if hasattr(estimator, "predict_proba"):
        return np.asarray(estimator.predict_proba(inputs))[:, 1]
    return np.asarray(estimator.predict(inputs), dtype=float)
