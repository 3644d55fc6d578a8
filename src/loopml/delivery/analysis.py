"""Analysis of a candidate version against its baseline over the same period of live traffic.

Four checks (five in the shadow phase), each `pass`, `fail`, `inconclusive` (too few requests to tell) or `skipped` (nothing to
measure, such as labels that have not arrived). A rollout analyses every interval, so a check that failed on
any significant difference would, over many looks, roll back healthy candidates; each check therefore fails
only on a difference that is both material (a threshold) and significant (a test at a strict level):

- error rate: failed requests / requests per version; fails when the candidate's exceeds the baseline's by
  more than `max_error_rate_increase` and a one-sided two-proportion Z test gives p < `p_value`;
- p99 latency: fails when the candidate's is above `max_p99_ratio` times the baseline's *and* more than
  `min_p99_increase_ms` above it (sub-millisecond differences are noise); not judged in the shadow phase,
  whose requests are scored at idle priority after the answers (the canary steps judge it);
- output drift: the candidate's scores against the baseline's on the same period; fails when the normalised
  Wasserstein distance reaches `max_output_drift` (half the baseline's score spread: a model retrained after
  drift should score differently, a broken one scores very differently) and the KS test gives p < `p_value`;
- paired outputs (shadow phase only): each mirrored request's score against the primary's answer to the very
  same request; fails when the decision at 0.5 flips on more than `max_flip_rate` of them;
- model metric (ROC AUC from labels, once both sides have `min_labels`): fails when the candidate's is more
  than `max_metric_drop` below the baseline's and more than 1.96 standard errors below it (Hanley and McNeil's
  standard error of each AUC).

The verdict is `fail` if any check fails, else `inconclusive` if any is, else `pass`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from loopml.errors import ValidationError
from loopml.monitoring import stats
from loopml.serving.endpoints import SHADOW
from loopml.serving.prediction_log import read_labelled_predictions, read_request_errors
from loopml.storage.offline import OfflineStore

PASS, FAIL, INCONCLUSIVE, SKIPPED = "pass", "fail", "inconclusive", "skipped"


@dataclass(frozen=True)
class AnalysisSettings:
    """Thresholds of the checks (defaults suit a first canary; set them per endpoint)."""

    min_requests: int = 100
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    min_p99_increase_ms: float = 5.0
    min_labels: int = 50
    max_metric_drop: float = 0.02
    max_output_drift: float = 0.5
    max_flip_rate: float = 0.3
    p_value: float = 0.001

    def __post_init__(self) -> None:
        if self.min_requests < 1 or self.min_labels < 1:
            raise ValidationError(
                f"min_requests and min_labels must be at least 1, got {self.min_requests} and {self.min_labels}."
            )
        if self.max_p99_ratio < 1:
            raise ValidationError(f"max_p99_ratio must be at least 1, got {self.max_p99_ratio}.")
        if not 0 < self.p_value < 1:
            raise ValidationError(f"p_value must be in (0, 1), got {self.p_value}.")
        if not 0 <= self.max_flip_rate <= 1:
            raise ValidationError(f"max_flip_rate is a share in [0, 1], got {self.max_flip_rate}.")
        for name in ("max_error_rate_increase", "min_p99_increase_ms", "max_metric_drop", "max_output_drift"):
            if getattr(self, name) < 0:
                raise ValidationError(f"{name} must not be negative, got {getattr(self, name)}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisSettings:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValidationError(
                f"Unknown analysis setting(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}."
            )
        return cls(**data)


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    candidate: float | None
    baseline: float | None
    limit: float | None
    reason: str


@dataclass(frozen=True)
class Analysis:
    """The checks of one analysis and the numbers behind them."""

    checks: list[Check]
    candidate_requests: int
    baseline_requests: int
    start: datetime
    end: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        statuses = {check.status for check in self.checks}
        return FAIL if FAIL in statuses else INCONCLUSIVE if INCONCLUSIVE in statuses else PASS

    def summary(self) -> str:
        failing = [c for c in self.checks if c.status in (FAIL, INCONCLUSIVE)]
        if not failing:
            return "every check passed: " + "; ".join(c.reason for c in self.checks)
        return "; ".join(f"{c.name} {c.status}: {c.reason}" for c in failing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "candidate_requests": self.candidate_requests,
            "baseline_requests": self.baseline_requests,
            "checks": [asdict(check) for check in self.checks],
        }


@dataclass(frozen=True)
class Side:
    """The traffic of one version on one route (the candidate's route is canary or shadow)."""

    model_name: str
    version: int
    route: str


def analyse(
    offline: OfflineStore,
    endpoint: str,
    candidate: Side,
    baseline: Side,
    start: datetime,
    end: datetime,
    *,
    labels_until: datetime,
    settings: AnalysisSettings | None = None,
) -> Analysis:
    """Compare the candidate's traffic with the baseline's in [start, end)."""
    settings = settings or AnalysisSettings()
    log = read_labelled_predictions(
        offline, endpoint, start, end, labels_until=labels_until, include_shadow=True, keep_unlabelled=True
    )
    errors = read_request_errors(offline, endpoint, start, end, include_shadow=True)
    cand, base = _rows(log, candidate), _rows(log, baseline)
    cand_errors, base_errors = len(_rows(errors, candidate)), len(_rows(errors, baseline))
    enough = (
        len(cand) + cand_errors >= settings.min_requests and len(base) + base_errors >= settings.min_requests
    )
    checks = [
        _error_rate(len(cand), cand_errors, len(base), base_errors, enough, settings),
        _latency(cand, base, enough, settings) if candidate.route != SHADOW else _shadow_latency(),
        _output_drift(cand, base, enough, settings),
        _metric(cand, base, settings),
    ]
    if candidate.route == SHADOW:
        checks.append(_paired(cand, base, settings))
    return Analysis(checks, len(cand) + cand_errors, len(base) + base_errors, start, end)


def _rows(frame: pd.DataFrame, side: Side) -> pd.DataFrame:
    if not len(frame):
        return frame
    return frame[
        (frame.model_name == side.model_name)
        & (frame.model_version == side.version)
        & (frame.route == side.route)
    ]


def _too_few(name: str, settings: AnalysisSettings) -> Check:
    return Check(
        name, INCONCLUSIVE, None, None, None, f"fewer than {settings.min_requests} requests on a side"
    )


def _error_rate(
    cand_ok: int, cand_err: int, base_ok: int, base_err: int, enough: bool, settings: AnalysisSettings
) -> Check:
    if not enough:
        return _too_few("error_rate", settings)
    cand_n, base_n = cand_ok + cand_err, base_ok + base_err
    candidate, baseline = cand_err / cand_n, base_err / base_n
    limit = baseline + settings.max_error_rate_increase
    test = stats.z_test_proportions(base_err, base_n, cand_err, cand_n)
    one_sided = test.p_value / 2 if test.statistic > 0 else 1.0
    status = FAIL if candidate > limit and one_sided < settings.p_value else PASS
    return Check(
        "error_rate",
        status,
        candidate,
        baseline,
        limit,
        f"{candidate:.2%} vs {baseline:.2%} (limit {limit:.2%}, p={one_sided:.2g})",
    )


def _latency(cand: pd.DataFrame, base: pd.DataFrame, enough: bool, settings: AnalysisSettings) -> Check:
    if not enough or not len(cand) or not len(base):
        return _too_few("p99_latency", settings)
    candidate = float(np.quantile(cand.latency_seconds.dropna(), 0.99)) * 1000
    baseline = float(np.quantile(base.latency_seconds.dropna(), 0.99)) * 1000
    limit = max(baseline * settings.max_p99_ratio, baseline + settings.min_p99_increase_ms)
    status = FAIL if candidate > limit else PASS
    return Check(
        "p99_latency",
        status,
        candidate,
        baseline,
        limit,
        f"{candidate:.1f} ms vs {baseline:.1f} ms (limit {limit:.1f} ms)",
    )


def _shadow_latency() -> Check:
    return Check(
        "p99_latency",
        SKIPPED,
        None,
        None,
        None,
        "not judged in shadow: mirrored requests are scored at idle priority, after the answers",
    )


def _output_drift(cand: pd.DataFrame, base: pd.DataFrame, enough: bool, settings: AnalysisSettings) -> Check:
    cand_scores, base_scores = (
        cand.output.dropna().to_numpy(),
        base.output.dropna().to_numpy() if len(base) else [],
    )
    if not enough or not len(cand_scores) or not len(base_scores):
        return Check("output_drift", INCONCLUSIVE, None, None, None, "too few scored requests on a side")
    scale = float(np.std(base_scores))
    distance = stats.wasserstein(base_scores, cand_scores, scale if scale > 0 else 1.0)
    test = stats.ks_test(base_scores, cand_scores)
    status = FAIL if distance >= settings.max_output_drift and test.p_value < settings.p_value else PASS
    return Check(
        "output_drift",
        status,
        distance,
        None,
        settings.max_output_drift,
        f"normalised Wasserstein {distance:.3f} between the scores (limit {settings.max_output_drift:g}), "
        f"KS p={test.p_value:.2g}",
    )


def _paired(cand: pd.DataFrame, base: pd.DataFrame, settings: AnalysisSettings) -> Check:
    """The shadow's answers against the primary's to the very same requests: how often the decision at 0.5
    flips, and by how much the scores differ."""
    pairs = (
        cand[["mirrors", "output"]].merge(
            base[["prediction_id", "output"]],
            left_on="mirrors",
            right_on="prediction_id",
            suffixes=("_candidate", "_baseline"),
        )
        if len(cand) and len(base) and "mirrors" in cand
        else pd.DataFrame()
    )
    if len(pairs) < settings.min_requests:
        return Check(
            "paired_outputs",
            INCONCLUSIVE,
            None,
            None,
            None,
            f"{len(pairs)} paired requests (need {settings.min_requests})",
        )
    shadow, primary = (
        pairs.output_candidate.to_numpy(dtype=float),
        pairs.output_baseline.to_numpy(dtype=float),
    )
    flips = float(((shadow >= 0.5) != (primary >= 0.5)).mean())
    difference = float(np.abs(shadow - primary).mean())
    status = FAIL if flips > settings.max_flip_rate else PASS
    return Check(
        "paired_outputs",
        status,
        flips,
        None,
        settings.max_flip_rate,
        f"on {len(pairs)} identical requests the decision flips {flips:.1%} of the time "
        f"(limit {settings.max_flip_rate:.0%}); mean score difference {difference:.3f}",
    )


def _metric(cand: pd.DataFrame, base: pd.DataFrame, settings: AnalysisSettings) -> Check:
    measured = [_auc(side) for side in (cand, base)]
    if (
        measured[0] is None
        or measured[1] is None
        or min(_labelled(cand), _labelled(base)) < settings.min_labels
    ):
        return Check(
            "roc_auc",
            SKIPPED,
            None,
            None,
            None,
            f"fewer than {settings.min_labels} labels with both classes on a side",
        )
    (candidate, cand_se), (baseline, base_se) = measured[0], measured[1]
    margin = max(settings.max_metric_drop, 1.96 * math.sqrt(cand_se**2 + base_se**2))
    limit = baseline - margin
    status = FAIL if candidate < limit else PASS
    return Check(
        "roc_auc",
        status,
        candidate,
        baseline,
        limit,
        f"{candidate:.3f} vs {baseline:.3f} (limit {limit:.3f})",
    )


def _labelled(rows: pd.DataFrame) -> int:
    return int(rows.label.notna().sum()) if len(rows) else 0


def _auc(rows: pd.DataFrame) -> tuple[float, float] | None:
    """ROC AUC of a side's labelled rows and its standard error (Hanley and McNeil, 1982)."""
    if not len(rows):
        return None
    known = rows[rows.label.notna() & rows.output.notna()]
    positives = int((known.label == 1).sum())
    negatives = len(known) - positives
    if not positives or not negatives:
        return None
    auc = float(roc_auc_score(known.label.astype(int), known.output))
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    return auc, math.sqrt(max(variance, 0.0))
