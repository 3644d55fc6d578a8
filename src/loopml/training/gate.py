"""The evaluation gate: a candidate must beat the champion on the same labelled data before promotion."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from loopml.training.evaluation import classification_metrics

LOWER_IS_BETTER = {"log_loss"}


@dataclass(frozen=True)
class GateResult:
    """The verdict with every number behind it."""

    passed: bool
    metric: str
    candidate: float
    champion: float | None
    min_delta: float
    n_rows: int
    n_positive: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_gate(
    y_true: np.ndarray,
    candidate_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    *,
    metric: str = "roc_auc",
    min_delta: float = 0.0,
    min_rows: int = 200,
    min_positive: int = 10,
) -> GateResult:
    """Pass when the candidate's metric beats the champion's by more than `min_delta` on enough data."""
    y = np.asarray(y_true, dtype=float)
    n_rows, n_positive = len(y), int(y.sum())
    candidate = classification_metrics(y, candidate_scores)[metric]
    champion = None if champion_scores is None else classification_metrics(y, champion_scores)[metric]

    def verdict(passed: bool, reason: str) -> GateResult:
        return GateResult(passed, metric, candidate, champion, min_delta, n_rows, n_positive, reason)

    if n_rows < min_rows or n_positive < min_positive:
        return verdict(
            False,
            f"not enough labelled data: {n_rows} rows with {n_positive} positives "
            f"(need {min_rows} and {min_positive})",
        )
    if math.isnan(candidate):
        return verdict(False, f"candidate {metric} is undefined on the evaluation data")
    if champion is None:
        return verdict(True, f"no champion to beat; candidate {metric}={candidate:.4f}")
    delta = champion - candidate if metric in LOWER_IS_BETTER else candidate - champion
    if delta > min_delta:
        return verdict(
            True, f"candidate {metric}={candidate:.4f} beats champion {champion:.4f} by {delta:+.4f}"
        )
    return verdict(
        False,
        f"candidate {metric}={candidate:.4f} does not beat champion {champion:.4f} "
        f"by more than {min_delta} (delta {delta:+.4f})",
    )
