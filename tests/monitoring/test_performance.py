"""Performance from delayed labels: coverage, the minimum before scoring, and scikit-learn's numbers."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from loopml.errors import ValidationError
from loopml.monitoring.performance import (
    EMPTY,
    LOW_COVERAGE,
    SCORED,
    PerformanceSettings,
    performance,
)
from loopml.serving.prediction_log import (
    LABEL_SCHEMA,
    LABELS,
    PREDICTION_SCHEMA,
    PREDICTIONS,
    append_by_day,
    read_labelled_predictions,
    record_table,
)
from tests.conftest import START


def window(n: int, labelled: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.3
    scores = np.clip(truth * 0.35 + rng.random(n) * 0.65, 0, 1)
    labels = np.where(rng.random(n) < labelled, truth.astype(float), np.nan)
    return pd.DataFrame({"output": scores, "label": labels})


def test_metrics_equal_scikit_learn_on_the_labelled_rows() -> None:
    rows = window(2_000, labelled=0.7)
    result = performance(rows)
    known = rows[rows.label.notna()]
    truth, scores = known.label.astype(int), known.output
    predicted = (scores >= 0.5).astype(int)
    assert result.status == SCORED and result.labelled == len(known) and result.predictions == 2_000
    assert result.coverage == pytest.approx(len(known) / 2_000)
    assert result.metrics == {
        "accuracy": pytest.approx(sk.accuracy_score(truth, predicted), abs=1e-12),
        "precision": pytest.approx(sk.precision_score(truth, predicted), abs=1e-12),
        "recall": pytest.approx(sk.recall_score(truth, predicted), abs=1e-12),
        "f1": pytest.approx(sk.f1_score(truth, predicted), abs=1e-12),
        "roc_auc": pytest.approx(sk.roc_auc_score(truth, scores), abs=1e-12),
        "log_loss": pytest.approx(sk.log_loss(truth, scores), abs=1e-12),
    }


def test_windows_short_of_labels_are_flagged_not_scored() -> None:
    sparse = performance(window(1_000, labelled=0.2), PerformanceSettings(min_coverage=0.5))
    assert sparse.status == LOW_COVERAGE and sparse.metrics == {} and "scoring needs 50%" in sparse.reason
    assert 0.15 < sparse.coverage < 0.25
    few = performance(window(40, labelled=1.0), PerformanceSettings(min_labels=50))
    assert few.status == LOW_COVERAGE and "at least 50" in few.reason
    empty = performance(window(0, labelled=1.0))
    assert empty.status == EMPTY and empty.coverage == 0.0


def test_one_class_windows_and_regression() -> None:
    rows = pd.DataFrame({"output": np.linspace(0.1, 0.9, 50), "label": [1.0] * 50})
    one_class = performance(rows)
    assert one_class.status == SCORED and one_class.metrics["roc_auc"] is None
    assert "ROC AUC undefined" in one_class.reason
    values = pd.DataFrame({"output": [1.0, 2.0, 4.0] * 20, "label": [1.5, 2.0, 3.0] * 20})
    regression = performance(values, PerformanceSettings(task="regression"))
    assert regression.metrics["rmse"] == pytest.approx(
        np.sqrt(sk.mean_squared_error(values.label, values.output))
    )
    assert regression.metrics["mae"] == pytest.approx(sk.mean_absolute_error(values.label, values.output))
    with pytest.raises(ValidationError, match="must be 0 or 1"):
        performance(values)
    with pytest.raises(ValidationError, match="Unknown task"):
        PerformanceSettings(task="ranking")


def test_labels_join_by_prediction_id_latest_wins_and_coverage_counts_the_unlabelled(project) -> None:
    predictions = [
        {
            "prediction_id": f"p{i}",
            "ts": START + timedelta(minutes=i),
            "endpoint": "e",
            "model_name": "m",
            "model_version": 1,
            "output": 0.8 if i % 2 else 0.2,
            "served": True,
        }
        for i in range(60)
    ]
    append_by_day(project.offline, PREDICTIONS, record_table(predictions, PREDICTION_SCHEMA))
    later = START + timedelta(days=2)
    labels = [{"prediction_id": f"p{i}", "label": float(i % 2), "ts": later} for i in range(45)]
    labels.append({"prediction_id": "p0", "label": 1.0, "ts": later + timedelta(hours=1)})  # a correction
    labels.append({"prediction_id": "p1", "label": 0.0, "ts": later + timedelta(days=5)})  # not arrived yet
    append_by_day(project.offline, LABELS, record_table(labels, LABEL_SCHEMA))
    joined = read_labelled_predictions(
        project.offline,
        "e",
        START,
        START + timedelta(days=1),
        labels_until=later + timedelta(days=1),
        keep_unlabelled=True,
    )
    assert len(joined) == 60 and joined.label.notna().sum() == 45
    assert (
        joined.set_index("prediction_id").label["p0"] == 1.0
        and joined.set_index("prediction_id").label["p1"] == 1.0
    )
    result = performance(joined)
    assert result.coverage == pytest.approx(0.75) and result.status == SCORED
    assert result.metrics["accuracy"] == pytest.approx(44 / 45)  # p0 relabelled 1 against a 0.2 score
