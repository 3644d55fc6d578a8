"""Data quality of a window against rules derived from the training data's profile.

Per feature: present in the window (schema), values of the kind it was trained on (type), missing rate at
most the training rate plus `missing_tolerance`, numbers inside the training range and categories seen in
training (each with a tolerated share of exceptions), not constant or all-null where training varied. Every
check says what it measured, the limit and, when it fails, what that means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loopml.data.profiles import NUMERIC, ColumnProfile, Profile
from loopml.errors import ValidationError


@dataclass(frozen=True)
class QualitySettings:
    """Tolerances for the rules derived from the training profile."""

    missing_tolerance: float = 0.05
    out_of_range_tolerance: float = 0.01
    unseen_tolerance: float = 0.01
    wrong_type_tolerance: float = 0.0
    min_violations: int = 5  # values that must break a share rule before it fails

    def __post_init__(self) -> None:
        if self.min_violations < 1:
            raise ValidationError(f"min_violations must be at least 1, got {self.min_violations}.")
        for name, value in asdict(self).items():
            if name != "min_violations" and not 0 <= value <= 1:
                raise ValidationError(f"{name} is a share in [0, 1], got {value}.")


@dataclass(frozen=True)
class QualityCheck:
    """One rule on one feature in one window."""

    feature: str
    check: str
    value: float | None
    limit: float | None
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_quality(
    reference: Profile,
    window: Profile,
    features: Sequence[str] | None = None,
    *,
    logged: Sequence[str] | None = None,
    settings: QualitySettings | None = None,
) -> list[QualityCheck]:
    """Every rule for every feature; `logged` names the inputs the window's records carried (a feature
    missing from them fails the schema check instead of reading as all-null)."""
    settings = settings or QualitySettings()
    names = list(features) if features is not None else list(reference.columns)
    checks: list[QualityCheck] = []
    for name in names:
        ref, cur = reference[name], window[name]
        if logged is not None and name not in logged:
            checks.append(QualityCheck(name, "schema", None, None, False, "not in the logged inputs"))
            continue
        checks.extend(_feature_checks(ref, cur, settings))
    return checks


def _feature_checks(ref: ColumnProfile, cur: ColumnProfile, settings: QualitySettings) -> list[QualityCheck]:
    name = ref.name
    if cur.rows == 0:
        return [QualityCheck(name, "rows", 0, None, True, "empty window: nothing to check")]
    present = cur.rows - cur.missing
    checks = [
        _limit(
            name,
            "missing",
            cur.missing_rate,
            min(1.0, ref.missing_rate + settings.missing_tolerance),
            cur.missing,
            settings,
            f"training had {ref.missing_rate:.1%} missing",
        ),
        _limit(
            name,
            "type",
            cur.invalid / present if present else 0.0,
            settings.wrong_type_tolerance,
            cur.invalid,
            settings,
            f"values that are not {ref.kind}",
        ),
    ]
    if present and cur.count == 0:
        checks.append(QualityCheck(name, "all_null", 1.0, 0.0, False, "no usable value in the window"))
        return checks
    if cur.missing == cur.rows:
        checks.append(QualityCheck(name, "all_null", 1.0, 0.0, ref.count == 0, "every value is missing"))
        return checks
    if ref.kind == NUMERIC:
        outside = (cur.below + cur.above) / cur.count
        checks.append(
            _limit(
                name,
                "range",
                outside,
                settings.out_of_range_tolerance,
                cur.below + cur.above,
                settings,
                f"outside the training range [{_num(ref.minimum)}, {_num(ref.maximum)}]",
            )
        )
        constant = cur.count > 1 and cur.std == 0 and ref.std > 0
        checks.append(
            QualityCheck(
                name,
                "constant",
                cur.std,
                None,
                not constant,
                f"every value is {_num(cur.minimum)}" if constant else "varies",
            )
        )
    else:
        unseen = sum(n for category, n in cur.categories.items() if category not in ref.categories)
        checks.append(
            _limit(
                name,
                "unseen",
                unseen / cur.count,
                settings.unseen_tolerance,
                unseen,
                settings,
                "categories not seen in training",
            )
        )
        single = cur.count > 1 and len(cur.categories) == 1 and len(ref.categories) > 1
        checks.append(
            QualityCheck(
                name,
                "constant",
                float(len(cur.categories)),
                None,
                not single,
                f"only {next(iter(cur.categories))!r}" if single else f"{len(cur.categories)} categories",
            )
        )
    return checks


def _limit(
    name: str, check: str, value: float, limit: float, offending: int, settings: QualitySettings, what: str
) -> QualityCheck:
    """A share rule: it fails above its limit, once at least `min_violations` values break it (one odd value
    in a small window is not evidence)."""
    passed = value <= limit or offending < settings.min_violations
    message = f"{value:.2%} {what}, {'within' if value <= limit else 'above'} the limit {limit:.2%}"
    if value > limit and passed:
        message += f" but only {offending} value(s) (it fails from {settings.min_violations})"
    return QualityCheck(name, check, value, limit, passed, message)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
