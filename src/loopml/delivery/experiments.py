"""A/B experiments between two arms of an endpoint: outcome from labels, a fixed-horizon test, a decision.

Units are assigned to arms sticky by unit id (the endpoint's experiment routes). The outcome of a prediction
is its label (feedback): a rate when labels are 0/1, a mean otherwise. The experiment plans its sample size
up front, from the smallest effect worth detecting, the significance level and the power, and decides only
once both arms have it: looking at a running test and stopping at the first small p-value would declare
winners far more often than the level says.

- binary outcome: two-proportion Z test; the difference's confidence interval is Wald's;
  required n per arm = (z₁₋α/₂ √(2 p̄(1 − p̄)) + z₁₋β √(p₁(1 − p₁) + p₂(1 − p₂)))² / δ²;
- continuous outcome: Welch's t test and interval; n per arm = 2 (z₁₋α/₂ + z₁₋β)² σ² / δ².

Decisions: `continue` (the sample is not there yet), `treatment` or `control` (significant at α, the winner
named), `no_difference` (the planned sample shows no significant effect).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from loopml.errors import ValidationError
from loopml.serving.prediction_log import read_labelled_predictions
from loopml.storage.offline import OfflineStore

CONTINUE, TREATMENT, CONTROL, NO_DIFFERENCE = "continue", "treatment", "control", "no_difference"


@dataclass(frozen=True)
class ExperimentSettings:
    """The test's level and power, and the smallest effect the planned sample must be able to see."""

    alpha: float = 0.05
    power: float = 0.8
    min_effect: float = 0.02  # the smallest difference worth detecting (absolute: rate points, or units)
    baseline_rate: float | None = None  # the control's expected rate for the plan (else its observed rate)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or not 0 < self.power < 1:
            raise ValidationError(f"alpha and power must be in (0, 1), got {self.alpha} and {self.power}.")
        if self.min_effect <= 0:
            raise ValidationError(f"min_effect must be positive, got {self.min_effect}.")


@dataclass(frozen=True)
class Arm:
    """One arm's outcomes: how many, their mean and variance."""

    name: str
    n: int
    mean: float
    variance: float


@dataclass(frozen=True)
class ExperimentResult:
    """The effect of treatment over control with its interval, the test, the planned sample, the decision."""

    control: Arm
    treatment: Arm
    binary: bool
    effect: float  # treatment minus control
    ci_low: float
    ci_high: float
    p_value: float
    required_n: int  # per arm
    decision: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ab_test(
    control: pd.Series,
    treatment: pd.Series,
    settings: ExperimentSettings | None = None,
    *,
    names: tuple[str, str] = ("control", "treatment"),
) -> ExperimentResult:
    """Test two arms' outcomes (one value per labelled prediction)."""
    settings = settings or ExperimentSettings()
    a, b = _values(control), _values(treatment)
    binary = bool(np.isin(np.concatenate([a, b]), (0.0, 1.0)).all())
    arms = [
        Arm(
            name,
            len(v),
            float(v.mean()) if len(v) else math.nan,
            float(v.var(ddof=1)) if len(v) > 1 else math.nan,
        )
        for name, v in zip(names, (a, b), strict=True)
    ]
    required = _required_n(arms[0], arms[1], binary, settings)
    if min(len(a), len(b)) < 2:
        return ExperimentResult(
            arms[0],
            arms[1],
            binary,
            math.nan,
            math.nan,
            math.nan,
            math.nan,
            required,
            CONTINUE,
            f"{min(len(a), len(b))} outcomes on an arm; the plan needs {required} each",
        )
    effect = arms[1].mean - arms[0].mean
    z = stats.norm.ppf(1 - settings.alpha / 2)
    if binary:
        pooled = (a.sum() + b.sum()) / (len(a) + len(b))
        se_test = math.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
        p_value = float(2 * stats.norm.sf(abs(effect) / se_test)) if se_test > 0 else 1.0
        se = math.sqrt(
            arms[0].mean * (1 - arms[0].mean) / len(a) + arms[1].mean * (1 - arms[1].mean) / len(b)
        )
        low, high = effect - z * se, effect + z * se
    else:
        test = stats.ttest_ind(b, a, equal_var=False)
        p_value = float(test.pvalue)
        interval = test.confidence_interval(1 - settings.alpha)
        low, high = float(interval.low), float(interval.high)
    decision, reason = _decide(arms, effect, p_value, required, settings)
    return ExperimentResult(arms[0], arms[1], binary, effect, low, high, p_value, required, decision, reason)


def endpoint_experiment(
    offline: OfflineStore,
    endpoint: str,
    control_route: str,
    treatment_route: str,
    start: datetime,
    end: datetime,
    *,
    labels_until: datetime,
    settings: ExperimentSettings | None = None,
) -> ExperimentResult:
    """The A/B test of two routes of an endpoint over predictions in [start, end), outcomes as labelled by
    `labels_until`."""
    joined = read_labelled_predictions(offline, endpoint, start, end, labels_until=labels_until)
    outcomes = {route: joined[joined.route == route].label for route in (control_route, treatment_route)}
    return ab_test(
        outcomes[control_route], outcomes[treatment_route], settings, names=(control_route, treatment_route)
    )


def _values(series: pd.Series) -> np.ndarray:
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _required_n(control: Arm, treatment: Arm, binary: bool, settings: ExperimentSettings) -> int:
    z_alpha, z_beta = stats.norm.ppf(1 - settings.alpha / 2), stats.norm.ppf(settings.power)
    delta = settings.min_effect
    if binary:
        observed = control.mean if control.n and not math.isnan(control.mean) else 0.5
        p1 = settings.baseline_rate if settings.baseline_rate is not None else observed
        p1 = min(max(p1, 0.01), 0.99)
        p2 = min(max(p1 + delta, 0.0), 1.0)
        average = (p1 + p2) / 2
        n = (
            z_alpha * math.sqrt(2 * average * (1 - average))
            + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
        ) ** 2
        return math.ceil(n / delta**2)
    variances = [v for v in (control.variance, treatment.variance) if not math.isnan(v)]
    sigma2 = max(variances) if variances else 1.0
    return math.ceil(2 * (z_alpha + z_beta) ** 2 * sigma2 / delta**2)


def _decide(
    arms: list[Arm], effect: float, p_value: float, required: int, settings: ExperimentSettings
) -> tuple[str, str]:
    smallest = min(arm.n for arm in arms)
    if smallest < required:
        return (
            CONTINUE,
            f"{smallest} outcomes on the smaller arm; the plan needs {required} per arm before deciding",
        )
    if p_value < settings.alpha:
        winner = arms[1] if effect > 0 else arms[0]
        return (
            TREATMENT if effect > 0 else CONTROL
        ), f"{winner.name} is better by {abs(effect):.4g} (p={p_value:.3g})"
    return NO_DIFFERENCE, f"no significant difference at {required} per arm (p={p_value:.3g})"
