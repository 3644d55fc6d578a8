"""Per-feature drift between a reference and a current window, with warning and critical tiers.

The method follows the feature's kind and the sample size, unless a rule names one:

| kind        | at most `small_sample` values on a side          | more on both sides             |
|-------------|---------------------------------------------------|--------------------------------|
| numeric     | Kolmogorov–Smirnov (p-value)                     | normalised Wasserstein         |
| categorical | chi-squared (two-proportion Z for two categories) | Jensen–Shannon distance        |

On large samples a p-value flags shifts too small to matter (a 1M-row window rejects a 0.01 σ shift), so
distances with fixed thresholds take over. Numeric distances and PSI are computed on the reference's quantile
bins (`loopml.data.profiles`): the current window is counted in them and never sorted or kept. A p-value
test warns below 0.05 and is critical below 0.01 (after an optional Bonferroni or Benjamini–Hochberg
correction across features); a distance warns at or above its warning threshold. Dataset drift is the share
of evaluated features that drift (warning or critical). A feature that cannot be evaluated (no values on a
side) is `no_data`, with the reason, and does not count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from loopml.data.profiles import CATEGORICAL, NUMERIC, ColumnProfile, Profile, profile_frame
from loopml.errors import ValidationError
from loopml.monitoring import stats

OK, WARNING, CRITICAL, NO_DATA = "ok", "warning", "critical", "no_data"
SEVERITY_ORDER = {NO_DATA: -1, OK: 0, WARNING: 1, CRITICAL: 2}
P_VALUE, DISTANCE = "p_value", "distance"
BONFERRONI, BENJAMINI_HOCHBERG = "bonferroni", "benjamini-hochberg"
COARSE_BINS = 10  # PSI, KL, JS, Hellinger and chi-squared on numbers use reference deciles
RAW_DISTANCE_MAX = 100_000  # Wasserstein on raw values up to this many per side, on quantile bins beyond


@dataclass(frozen=True)
class Method:
    """A drift measure: a p-value (drift below the thresholds) or a distance (drift at or above them)."""

    name: str
    measures: str
    kinds: frozenset[str]
    warning: float
    critical: float


BOTH = frozenset({NUMERIC, CATEGORICAL})
METHODS = {
    m.name: m
    for m in (
        Method("ks", P_VALUE, frozenset({NUMERIC}), 0.05, 0.01),
        Method("chi_squared", P_VALUE, BOTH, 0.05, 0.01),
        Method("z", P_VALUE, frozenset({CATEGORICAL}), 0.05, 0.01),
        Method("psi", DISTANCE, BOTH, 0.1, 0.25),
        Method("kl", DISTANCE, BOTH, 0.1, 0.5),
        Method("jensen_shannon", DISTANCE, BOTH, 0.1, 0.2),
        Method("hellinger", DISTANCE, BOTH, 0.1, 0.2),
        Method("wasserstein", DISTANCE, frozenset({NUMERIC}), 0.1, 0.2),
    )
}


@dataclass(frozen=True)
class Rule:
    """A feature's own method and thresholds (each optional)."""

    method: str | None = None
    warning: float | None = None
    critical: float | None = None


@dataclass(frozen=True)
class DriftSettings:
    """How drift is decided: sample-size switch, p-value tiers, correction, dataset share and per-feature rules."""

    small_sample: int = 1_000
    p_value_warning: float = 0.05
    p_value_critical: float = 0.01
    correction: str | None = None
    drift_share: float = 0.5
    rules: Mapping[str, Rule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.p_value_critical <= self.p_value_warning < 1:
            raise ValidationError(
                "p-value thresholds must satisfy 0 < critical <= warning < 1; got warning "
                f"{self.p_value_warning} and critical {self.p_value_critical}."
            )
        if self.correction not in (None, BONFERRONI, BENJAMINI_HOCHBERG):
            raise ValidationError(
                f"Unknown correction {self.correction!r}; use {BONFERRONI!r}, {BENJAMINI_HOCHBERG!r} or none."
            )
        if not 0 < self.drift_share <= 1:
            raise ValidationError(f"drift_share is a share of features in (0, 1], got {self.drift_share}.")
        for feature, rule in self.rules.items():
            _check_rule(feature, rule)


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's verdict: the method, its numbers, the thresholds it was held to and why."""

    feature: str
    kind: str
    method: str
    statistic: float | None
    p_value: float | None
    p_adjusted: float | None
    warning: float
    critical: float
    severity: str
    reason: str
    n_reference: int
    n_current: int
    missing_reference: float
    missing_current: float

    @property
    def drifted(self) -> bool:
        return self.severity in (WARNING, CRITICAL)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}


@dataclass(frozen=True)
class DriftReport:
    """Drift of every feature (and of the model's output, when given) from reference to current."""

    features: list[FeatureDrift]
    prediction: FeatureDrift | None = None
    settings: DriftSettings = field(default_factory=DriftSettings)

    @property
    def evaluated(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.severity != NO_DATA]

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def share(self) -> float:
        """Share of evaluated features that drifted (0 when nothing could be evaluated)."""
        evaluated = self.evaluated
        return len(self.drifted_features) / len(evaluated) if evaluated else 0.0

    @property
    def dataset_drift(self) -> bool:
        return bool(self.evaluated) and self.share >= self.settings.drift_share

    @property
    def severity(self) -> str:
        """The worst feature severity (ok when nothing could be evaluated)."""
        worst = max((f.severity for f in self.features), key=SEVERITY_ORDER.__getitem__, default=OK)
        return OK if worst == NO_DATA else worst

    def to_frame(self) -> pd.DataFrame:
        rows = [f.to_dict() for f in self.features + ([self.prediction] if self.prediction else [])]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "dataset_drift": self.dataset_drift,
            "severity": self.severity,
            "drifted_features": self.drifted_features,
            "features": [f.to_dict() for f in self.features],
            "prediction": self.prediction.to_dict() if self.prediction else None,
            "settings": {
                **asdict(self.settings),
                "rules": {k: asdict(v) for k, v in self.settings.rules.items()},
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_json_number, allow_nan=False)


def compare(
    reference_df: pd.DataFrame,
    current_df: pd.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    categorical: Iterable[str] = (),
    prediction: str | None = None,
    settings: DriftSettings | None = None,
) -> DriftReport:
    """Drift of every shared column (or `columns`) from `reference_df` to `current_df`.

    `categorical` names numeric-looking columns to treat as categories; `prediction` names the model-output
    column, reported apart from the features (output drift).
    """
    settings = settings or DriftSettings()
    names = (
        list(columns) if columns is not None else [c for c in reference_df.columns if c in current_df.columns]
    )
    wanted = names + ([prediction] if prediction is not None and prediction not in names else [])
    absent = [c for c in wanted if c not in reference_df.columns or c not in current_df.columns]
    if absent:
        raise ValidationError(
            f"Column(s) {absent} are missing from the reference or the current data; reference has "
            f"{list(reference_df.columns)}, current has {list(current_df.columns)}."
        )
    reference = profile_frame(reference_df, columns=wanted, categorical=categorical)
    current = profile_frame(current_df, reference=reference, columns=wanted)
    raw = {name: (reference_df[name], current_df[name]) for name in wanted}
    return _report(reference, current, names, prediction, settings, raw)


def compare_profiles(
    reference: Profile,
    current: Profile,
    columns: Sequence[str] | None = None,
    *,
    prediction: str | None = None,
    settings: DriftSettings | None = None,
) -> DriftReport:
    """Drift from a reference profile to a window profiled against it (no raw data needed: KS is then taken at
    the reference's bin edges)."""
    names = list(columns) if columns is not None else [c for c in reference.columns if c != prediction]
    return _report(reference, current, names, prediction, settings or DriftSettings(), {})


def _report(
    reference: Profile,
    current: Profile,
    names: list[str],
    prediction: str | None,
    settings: DriftSettings,
    raw: Mapping[str, tuple[pd.Series, pd.Series]],
) -> DriftReport:
    features = [_feature(reference[n], current[n], settings, raw.get(n)) for n in names]
    features = _corrected(features, settings)
    output = None
    if prediction is not None:
        output = _feature(reference[prediction], current[prediction], settings, raw.get(prediction))
    return DriftReport(features, output, settings)


def _feature(
    ref: ColumnProfile,
    cur: ColumnProfile,
    settings: DriftSettings,
    raw: tuple[pd.Series, pd.Series] | None,
) -> FeatureDrift:
    rule = settings.rules.get(ref.name, Rule())
    small = min(ref.count, cur.count) <= settings.small_sample
    method = METHODS[rule.method or _default_method(ref, cur, small)]
    if ref.kind not in method.kinds:
        raise ValidationError(
            f"Feature '{ref.name}' is {ref.kind}; method {method.name!r} takes "
            f"{' or '.join(sorted(method.kinds))} features. Choose one of {_methods_for(ref.kind)}."
        )
    if method.measures == P_VALUE:
        warning = rule.warning if rule.warning is not None else settings.p_value_warning
        critical = rule.critical if rule.critical is not None else settings.p_value_critical
    else:
        warning = rule.warning if rule.warning is not None else method.warning
        critical = rule.critical if rule.critical is not None else method.critical
    notes = _notes(ref, cur)
    base = dict(
        feature=ref.name,
        kind=ref.kind,
        method=method.name,
        p_adjusted=None,
        warning=warning,
        critical=critical,
        n_reference=ref.count,
        n_current=cur.count,
        missing_reference=ref.missing_rate,
        missing_current=cur.missing_rate,
    )
    empty = _no_data_reason(ref, cur)
    if empty:
        return FeatureDrift(
            **base, statistic=None, p_value=None, severity=NO_DATA, reason=_join(empty, *notes)
        )
    statistic, p_value, note = _measure(method.name, ref, cur, raw)
    measured = p_value if method.measures == P_VALUE else statistic
    assert measured is not None
    return FeatureDrift(
        **base,
        statistic=statistic,
        p_value=p_value,
        severity=_severity(method, measured, warning, critical),
        reason=_join(note, *notes),
    )


def _default_method(ref: ColumnProfile, cur: ColumnProfile, small: bool) -> str:
    if ref.kind == NUMERIC:
        return "ks" if small else "wasserstein"
    if not small:
        return "jensen_shannon"
    return "z" if len(set(ref.categories) | set(cur.categories)) == 2 else "chi_squared"


def _measure(
    method: str, ref: ColumnProfile, cur: ColumnProfile, raw: tuple[pd.Series, pd.Series] | None
) -> tuple[float, float | None, str]:
    """The method's statistic, its p-value (tests only) and a note on how it was computed."""
    if ref.kind == CATEGORICAL:
        return _on_categories(method, ref, cur)
    if method == "ks":
        if raw is not None:
            result = stats.ks_test(_finite(raw[0]), _finite(raw[1]))
            return result.statistic, result.p_value, ""
        result = stats.ks_binned(ref.counts, cur.counts)
        return result.statistic, result.p_value, f"KS at the reference's {len(ref.edges)} quantile edges"
    if method == "wasserstein":
        if raw is not None and max(ref.count, cur.count) <= RAW_DISTANCE_MAX:
            return stats.wasserstein(_finite(raw[0]), _finite(raw[1]), ref.std), None, _constant_note(ref)
        edges = _outer_edges(ref, cur)
        assert (
            ref.counts is not None
            and cur.counts is not None
            and ref.sums is not None
            and cur.sums is not None
        )
        distance = stats.wasserstein_binned(edges, ref.counts, cur.counts, ref.sums, cur.sums, ref.std)
        return distance, None, _constant_note(ref)
    ref_bins, cur_bins = _deciles(ref.counts, cur.counts)
    return _on_counts(method, ref_bins, cur_bins)


def _on_categories(method: str, ref: ColumnProfile, cur: ColumnProfile) -> tuple[float, float | None, str]:
    categories = sorted(set(ref.categories) | set(cur.categories))
    ref_counts = np.array([ref.categories.get(c, 0) for c in categories], dtype=float)
    cur_counts = np.array([cur.categories.get(c, 0) for c in categories], dtype=float)
    note = "one category on both sides" if len(categories) == 1 else ""
    unseen = [c for c in categories if not ref.categories.get(c)]
    if unseen:
        note = _join(note, f"not in the reference: {_few(unseen)}")
    if method == "z" and len(categories) == 2:
        hit = int(np.argmax(ref_counts))
        result = stats.z_test_proportions(
            int(ref_counts[hit]), int(ref_counts.sum()), int(cur_counts[hit]), int(cur_counts.sum())
        )
        return result.statistic, result.p_value, note
    if method == "z":
        method, note = "chi_squared", _join(note, "not two categories: chi-squared instead of Z")
    statistic, p_value, _ = _on_counts(method, ref_counts, cur_counts)
    return statistic, p_value, note


def _on_counts(method: str, ref: np.ndarray, cur: np.ndarray) -> tuple[float, float | None, str]:
    if method == "chi_squared":
        result = stats.chi_squared_test(ref, cur)
        return result.statistic, result.p_value, ""
    measure = {
        "psi": stats.psi,
        "kl": stats.kl_divergence,
        "jensen_shannon": stats.jensen_shannon,
        "hellinger": stats.hellinger,
    }[method]
    return measure(ref, cur), None, ""


def _severity(method: Method, measured: float, warning: float, critical: float) -> str:
    if method.measures == P_VALUE:
        return CRITICAL if measured < critical else WARNING if measured < warning else OK
    return CRITICAL if measured >= critical else WARNING if measured >= warning else OK


def _corrected(features: list[FeatureDrift], settings: DriftSettings) -> list[FeatureDrift]:
    """Features with their p-values adjusted for testing many at once, and severities from the adjusted ones."""
    tested = [i for i, f in enumerate(features) if f.p_value is not None and f.severity != NO_DATA]
    if settings.correction is None or not tested:
        return features
    p = np.array([features[i].p_value for i in tested], dtype=float)
    adjusted = _bonferroni(p) if settings.correction == BONFERRONI else _benjamini_hochberg(p)
    result = list(features)
    for i, value in zip(tested, adjusted, strict=True):
        f = features[i]
        method = METHODS.get(f.method, METHODS["chi_squared"])
        severity = _severity(method, float(value), f.warning, f.critical)
        note = f"{settings.correction} over {len(tested)} tests"
        result[i] = replace(f, p_adjusted=float(value), severity=severity, reason=_join(f.reason, note))
    return result


def _bonferroni(p: np.ndarray) -> np.ndarray:
    return np.minimum(p * len(p), 1.0)


def _benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Step-up adjusted p-values: min over k ≥ rank of p_(k) · m / k, capped at 1."""
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    result = np.empty_like(p)
    result[order] = np.minimum(adjusted, 1.0)
    return result


def _no_data_reason(ref: ColumnProfile, cur: ColumnProfile) -> str:
    for side, profile in (("reference", ref), ("current window", cur)):
        if profile.rows == 0:
            return f"the {side} has no rows"
        if profile.count == 0:
            what = "missing" if profile.missing == profile.rows else "missing or of the wrong type"
            return f"every value in the {side} is {what}"
    return ""


def _notes(ref: ColumnProfile, cur: ColumnProfile) -> list[str]:
    notes = []
    if ref.mixed or cur.mixed:
        notes.append("numbers and text in one column: compared as categories")
    if cur.invalid:
        notes.append(f"{cur.invalid} current value(s) of the wrong type left out")
    if ref.kind == NUMERIC and ref.count and ref.std == 0:
        notes.append(f"the reference is constant ({ref.minimum:g})")
    return notes


def _constant_note(ref: ColumnProfile) -> str:
    return "distance not scaled: the reference has no spread" if ref.std == 0 else ""


def _outer_edges(ref: ColumnProfile, cur: ColumnProfile) -> np.ndarray:
    """The reference's edges with the outer bins closed at the lowest and highest value of either side."""
    assert ref.edges is not None
    low = min(v for v in (ref.minimum, cur.minimum) if v is not None)
    high = max(v for v in (ref.maximum, cur.maximum) if v is not None)
    return np.concatenate([[min(low, ref.edges[0])], ref.edges, [max(high, ref.edges[-1])]])


def _deciles(ref_counts: np.ndarray | None, cur_counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Fine quantile bins grouped into about ten of equal reference mass (PSI's usual bins)."""
    assert ref_counts is not None and cur_counts is not None
    share = np.cumsum(ref_counts) / ref_counts.sum()
    group = np.minimum((share * COARSE_BINS - 1e-9).astype(int), COARSE_BINS - 1)
    group = np.maximum(group, 0)
    return (
        np.bincount(group, weights=ref_counts, minlength=COARSE_BINS),
        np.bincount(group, weights=cur_counts, minlength=COARSE_BINS),
    )


def _finite(values: pd.Series) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return numbers[np.isfinite(numbers)]


def _check_rule(feature: str, rule: Rule) -> None:
    if rule.method is not None and rule.method not in METHODS:
        raise ValidationError(
            f"Feature '{feature}': unknown drift method {rule.method!r}; use one of {sorted(METHODS)}."
        )
    for name in ("warning", "critical"):
        value = getattr(rule, name)
        if value is not None and (not isinstance(value, int | float) or math.isnan(value) or value < 0):
            raise ValidationError(
                f"Feature '{feature}': the {name} threshold must be a non-negative number, got {value!r}."
            )


def _methods_for(kind: str) -> list[str]:
    return sorted(name for name, method in METHODS.items() if kind in method.kinds)


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _few(values: list[str], shown: int = 5) -> str:
    listed = ", ".join(repr(v) for v in values[:shown])
    return listed + (f" and {len(values) - shown} more" if len(values) > shown else "")


def _json_number(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
