"""The evaluation gate: a candidate must prove itself against the champion on the same held-out rows.

A `GatePolicy` lists `MetricThreshold`s. Value thresholds bound the candidate's metric; change thresholds make
it beat the champion by a margin in the metric's direction (a negative margin allows a bounded regression).
The same checks can run on every value of chosen columns (slices), so a model that wins on average but loses
one segment is caught. The `GateResult` keeps every number, for the version's record and the event log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import ValidationError
from loopml.training.gate_policy import OVERALL, GatePolicy, MetricThreshold, metric_values


@dataclass(frozen=True)
class GateCheck:
    """One condition checked on one scope, with every number behind its verdict.

    `delta` is how much better the candidate is than the champion in the metric's direction (positive is
    better, whatever the metric), `relative_delta` that as a fraction of |champion|. Data checks (kind
    "min_rows" / "min_positive") put the count in `candidate`.
    """

    scope: str  # "overall" or "column=value"
    metric: str
    kind: str  # min_value, max_value, min_absolute_change, min_relative_change, min_rows, min_positive
    threshold: float
    status: str  # "passed", "failed" or "skipped"
    detail: str  # one line with the numbers
    n_rows: int
    n_positive: int
    candidate: float | None = None
    champion: float | None = None
    delta: float | None = None
    relative_delta: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def describe(self) -> str:
        return self.detail if self.scope == OVERALL else f"slice {self.scope}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {key: _json_number(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateCheck:
        return cls(**data)


@dataclass(frozen=True)
class GateResult:
    """The verdict, a one-line reason naming what decided it, and every check with its numbers.

    `metric`, `candidate` and `champion` summarise the policy's first metric on all rows, for listings.
    """

    passed: bool
    reason: str
    metric: str
    candidate: float | None
    champion: float | None
    n_rows: int
    n_positive: int
    checks: tuple[GateCheck, ...] = ()
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> tuple[GateCheck, ...]:
        return tuple(check for check in self.checks if check.status == "failed")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (undefined numbers become None), for the version's record and the gate event."""
        statuses = [check.status for check in self.checks]
        return {
            "passed": self.passed,
            "reason": self.reason,
            "metric": self.metric,
            "candidate": _json_number(self.candidate),
            "champion": _json_number(self.champion),
            "n_rows": self.n_rows,
            "n_positive": self.n_positive,
            "counts": {status: statuses.count(status) for status in ("passed", "failed", "skipped")},
            "checks": [check.to_dict() for check in self.checks],
            "policy": self.policy,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateResult:
        """Read a stored result back; results of the first gate (no checks, no policy) read too."""
        return cls(
            passed=bool(data["passed"]),
            reason=data["reason"],
            metric=data["metric"],
            candidate=data.get("candidate"),
            champion=data.get("champion"),
            n_rows=int(data["n_rows"]),
            n_positive=int(data["n_positive"]),
            checks=tuple(GateCheck.from_dict(check) for check in data.get("checks", ())),
            policy=dict(data.get("policy") or {}),
        )


def _json_number(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------- evaluate


def evaluate_candidate(
    policy: GatePolicy,
    y_true: Any,
    candidate_scores: Any,
    champion_scores: Any | None = None,
    slice_frame: pd.DataFrame | None = None,
) -> GateResult:
    """Judge a candidate against the champion, both scored on the same held-out rows (row i is row i).

    Without a champion (a first model) change thresholds are skipped and value thresholds still apply.
    `slice_frame` holds the policy's slice columns for the same rows, in the same order.
    """
    y = _labels(y_true)
    candidate = _scores("candidate_scores", candidate_scores, len(y))
    champion = None if champion_scores is None else _scores("champion_scores", champion_scores, len(y))
    slices = _slice_masks(policy, slice_frame, len(y))
    has_champion = champion is not None
    n_rows, n_positive = len(y), int(y.sum())

    checks = [
        _count_check(OVERALL, "min_rows", n_rows, policy.min_rows, n_rows, n_positive),
        _count_check(OVERALL, "min_positive", n_positive, policy.min_positive, n_rows, n_positive),
    ]
    overall = _scope_values(policy.metrics, y, candidate, champion)
    checks += _threshold_checks(OVERALL, policy.thresholds, overall, has_champion, n_rows, n_positive)
    for scope, mask in slices:
        rows, positives = int(mask.sum()), int(y[mask].sum())
        if rows < policy.min_slice_rows:
            checks.append(_count_check(scope, "min_rows", rows, policy.min_slice_rows, rows, positives))
            continue
        values = _scope_values(
            policy.metrics, y[mask], candidate[mask], champion[mask] if has_champion else None
        )
        checks += _threshold_checks(scope, policy.checks_per_slice, values, has_champion, rows, positives)

    primary = policy.thresholds[0].metric
    ours, theirs = overall[primary]
    return GateResult(
        passed=all(check.status != "failed" for check in checks),
        reason=_reason(checks, policy, f"candidate {primary} {ours:.4f}", has_champion, n_rows, n_positive),
        metric=primary,
        candidate=_json_number(ours),
        champion=_json_number(theirs),
        n_rows=n_rows,
        n_positive=n_positive,
        checks=tuple(checks),
        policy=policy.to_dict(),
    )


def _labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true, dtype=float).ravel()
    bad = y[~np.isin(y, (0.0, 1.0))]
    if len(bad):
        raise ValidationError(
            f"The gate judges binary labels: y_true must hold 0/1, found {sorted(set(bad.tolist()))[:5]}."
        )
    return y


def _scores(name: str, scores: Any, n_rows: int) -> np.ndarray:
    values = np.asarray(scores, dtype=float).ravel()
    if len(values) != n_rows:
        raise ValidationError(
            f"{name} has {len(values)} values for {n_rows} labels; score the same held-out rows with both "
            "models."
        )
    if not np.isfinite(values).all():
        raise ValidationError(f"{name} holds {int((~np.isfinite(values)).sum())} missing or infinite scores.")
    return values


def _slice_masks(policy: GatePolicy, frame: pd.DataFrame | None, n_rows: int) -> list[tuple[str, np.ndarray]]:
    """("column=value", row mask) for every value of every slice column, values in sorted order."""
    if not policy.slices:
        return []
    if frame is None:
        raise ValidationError(
            f"The gate policy checks slices {list(policy.slices)}; pass slice_frame with those columns."
        )
    if len(frame) != n_rows:
        raise ValidationError(f"slice_frame has {len(frame)} rows for {n_rows} labels; pass the same rows.")
    missing = [column for column in policy.slices if column not in frame.columns]
    if missing:
        raise ValidationError(f"slice_frame lacks slice columns {missing}; it has {list(frame.columns)}.")
    masks = []
    for column in policy.slices:
        codes, uniques = pd.factorize(frame[column], use_na_sentinel=False)
        labelled = [("null" if pd.isna(value) else str(value), code) for code, value in enumerate(uniques)]
        masks += [(f"{column}={label}", codes == code) for label, code in sorted(labelled)]
    return masks


def _scope_values(
    metrics: Sequence[str], y: np.ndarray, candidate: np.ndarray, champion: np.ndarray | None
) -> dict[str, tuple[float, float | None]]:
    ours = metric_values(y, candidate, metrics)
    theirs = None if champion is None else metric_values(y, champion, metrics)
    return {name: (ours[name], None if theirs is None else theirs[name]) for name in metrics}


def _count_check(scope: str, kind: str, count: int, needed: int, n_rows: int, n_positive: int) -> GateCheck:
    """Enough rows or positives? Short data fails the gate overall; a short slice is only skipped."""
    metric = "n_rows" if kind == "min_rows" else "n_positive"
    if count >= needed:
        status, detail = "passed", f"{count} {_COUNTED[kind]} (>= {needed})"
    elif scope == OVERALL:
        status, detail = "failed", f"{count} {_COUNTED[kind]} (needs {needed})"
    else:
        status, detail = "skipped", f"skipped: too few rows ({count} < {needed})"
    return GateCheck(scope, metric, kind, needed, status, detail, n_rows, n_positive, candidate=count)


_COUNTED = {"min_rows": "labelled rows", "min_positive": "positive labels"}


def _threshold_checks(
    scope: str,
    thresholds: Sequence[MetricThreshold],
    values: dict[str, tuple[float, float | None]],
    has_champion: bool,
    n_rows: int,
    n_positive: int,
) -> list[GateCheck]:
    checks = []
    for threshold in thresholds:
        ours, theirs = values[threshold.metric]
        for kind, needed in threshold.conditions.items():
            status, detail, delta, relative = _judge(threshold, kind, needed, ours, theirs, has_champion)
            if status == "undefined":
                # one class, or no predicted positives: an overall verdict cannot rest on it, a slice can wait
                status = "failed" if scope == OVERALL else "skipped"
                detail = detail if scope == OVERALL else f"skipped: {detail}"
            checks.append(
                GateCheck(
                    scope,
                    threshold.metric,
                    kind,
                    needed,
                    status,
                    detail,
                    n_rows,
                    n_positive,
                    candidate=_json_number(ours),
                    champion=_json_number(theirs),
                    delta=delta,
                    relative_delta=relative,
                )
            )
    return checks


def _judge(
    threshold: MetricThreshold,
    kind: str,
    needed: float,
    ours: float,
    theirs: float | None,
    has_champion: bool,
) -> tuple[str, str, float | None, float | None]:
    """(status, detail, delta, relative delta) of one condition; status "undefined" when a NaN blocks it."""
    metric = threshold.metric
    if kind.endswith("_change") and not has_champion:
        return "skipped", f"skipped: no champion to compare {metric} with", None, None
    if math.isnan(ours):
        return "undefined", f"{metric} of the candidate is undefined on these rows (one class?)", None, None
    if kind == "min_value":
        ok = ours >= needed
        relation = ">= the minimum" if ok else "is below the minimum"
        return _verdict(ok), f"{metric} {ours:.4f} {relation} {needed:.4f}", None, None
    if kind == "max_value":
        ok = ours <= needed
        relation = "<= the maximum" if ok else "is above the maximum"
        return _verdict(ok), f"{metric} {ours:.4f} {relation} {needed:.4f}", None, None
    assert theirs is not None
    if math.isnan(theirs):
        return "undefined", f"{metric} of the champion is undefined on these rows; cannot compare", None, None
    delta = ours - theirs if threshold.greater_is_better else theirs - ours
    relative = None if theirs == 0 else delta / abs(theirs)
    if kind == "min_absolute_change":
        versus = _versus(delta, f"{abs(delta):.4f}", theirs)
        text = f"{metric} {ours:.4f} {versus} (needs a gain >= {needed:+.4f})"
        return _verdict(delta >= needed), text, delta, relative
    if relative is None:
        # a zero champion: any gain is infinitely large relative to it, any loss infinitely bad
        ok = delta > 0 or (delta == 0 and needed <= 0)
        text = (
            f"{metric} {ours:.4f} {_versus(delta, f'{abs(delta):.4f}', theirs)}; change relative to a zero "
            f"champion is undefined, judged by its sign (needs a gain >= {needed:+.2%})"
        )
        return _verdict(ok), text, delta, None
    versus = _versus(delta, f"{abs(relative):.2%}", theirs)
    text = f"{metric} {ours:.4f} {versus} (needs a gain >= {needed:+.2%})"
    return _verdict(relative >= needed), text, delta, relative


def _verdict(ok: bool) -> str:
    return "passed" if ok else "failed"


def _versus(delta: float, size: str, champion: float) -> str:
    if delta > 0:
        return f"beats champion {champion:.4f} by {size}"
    if delta < 0:
        return f"is {size} worse than champion {champion:.4f}"
    return f"equals champion {champion:.4f}"


def _reason(
    checks: list[GateCheck],
    policy: GatePolicy,
    fallback: str,
    has_champion: bool,
    n_rows: int,
    n_positive: int,
) -> str:
    """The failing checks (data first), or on a pass the primary metric's comparison and a tally."""
    failed = [check for check in checks if check.status == "failed"]
    if any(check.kind in _COUNTED for check in failed):
        return (
            f"not enough labelled data: {n_rows} rows with {n_positive} positives "
            f"(needs {policy.min_rows} rows and {policy.min_positive} positives)"
        )
    if failed:
        more = f" (+{len(failed) - 2} more failed checks)" if len(failed) > 2 else ""
        return "; ".join(check.describe() for check in failed[:2]) + more
    judged = [check for check in checks if check.kind not in _COUNTED]
    primary = policy.thresholds[0].metric
    overall = [c for c in judged if c.scope == OVERALL and c.metric == primary and c.passed]
    lead = next((c for c in overall if c.kind.endswith("_change")), overall[0] if overall else None)
    summary = fallback if lead is None else lead.detail
    if not has_champion:
        summary = f"no champion: change thresholds skipped; {summary}"
    passed, skipped = sum(c.passed for c in judged), sum(c.status == "skipped" for c in judged)
    return f"{summary}; {passed} checks passed" + (f", {skipped} skipped" if skipped else "")
