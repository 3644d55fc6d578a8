"""Training/serving skew: do the values serving read online match what the offline path computes?

Every logged online lookup (keys, lookup time, values, statuses, event times) is replayed through the
point-in-time retrieval at its lookup time, and the two answers are compared value by value. A
materialisation that fell behind, a push that never reached the offline source, or a feature computed
differently on the two paths shows up as a mismatch rate per feature, with the reason for each mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import pandas as pd

from loopml.clock import as_utc
from loopml.errors import LoopmlError, ValidationError
from loopml.features import registry as feature_registry
from loopml.features.definitions import FeatureService, FeatureView, group_feature_refs
from loopml.features.historical import source_sql
from loopml.features.lookup_log import count_lookups, read_lookups
from loopml.storage.metadata import MetadataStore
from loopml.storage.offline import OfflineStore, quote


class ProjectStores(Protocol):
    """What the skew check needs of a project: its stores, its directory and point-in-time retrieval."""

    path: Path
    metadata: MetadataStore
    offline: OfflineStore

    def get_historical_features(
        self,
        entity_df: pd.DataFrame | None,
        features: Sequence[str] | FeatureService,
        *,
        timestamp_field: str = ...,
        full_feature_names: bool = ...,
    ) -> pd.DataFrame: ...


RELATIVE_TOLERANCE = 1e-9  # numbers equal within this; floats round-trip through JSON
EVENT_TIME_TOLERANCE_SECONDS = 1e-3
SAMPLES_PER_FEATURE = 3
DEFAULT_MAX_LOOKUPS = 200_000
LOOKUP_TS = "__loopml_lookup_ts"

# Why a value mismatched.
ONLINE_MISSING = "online_missing"  # online missing, expired or null, while offline has a value
OFFLINE_MISSING = "offline_missing"  # online has a value, offline is null
STALE = "stale"  # both have values; the online one is older than the offline one (materialisation lag)
# both have values of the same event time (or event times that cannot be compared), and they differ
VALUE_DIFFERS = "value_differs"
ONLINE_NEWER = "online_newer"  # the online value is newer than any offline row (pushed, not in the source)
REASONS = (ONLINE_MISSING, OFFLINE_MISSING, STALE, VALUE_DIFFERS, ONLINE_NEWER)


@dataclass
class FeatureSkew:
    """How one feature's online values compare with the offline recomputation.

    `compared` counts the lookups where at least one side has a value; lookups where both are null agree
    but say nothing about skew, so they are left out of the rate.
    """

    feature: str
    lookups: int = 0
    compared: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    @property
    def mismatches(self) -> int:
        return sum(self.reasons.values())

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0


@dataclass(frozen=True)
class Mismatch:
    """One lookup where online and offline disagree, kept as an example."""

    feature: str
    lookup_ts: datetime
    entities: dict[str, Any]
    online_value: Any
    online_status: str
    online_event_ts: datetime | None
    offline_value: Any
    offline_event_ts: datetime | None
    reason: str


@dataclass
class SkewReport:
    """Per-feature mismatch rates over the lookups logged in [start, end], worst first."""

    start: datetime
    end: datetime
    lookups: int  # lookup records (one per view and entity row) logged in the window
    replayed: int  # those replayed offline: all of them, or a uniform sample of max_lookups
    features: list[FeatureSkew]
    samples: list[Mismatch]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data (times in ISO 8601)."""
        data = orjson.loads(orjson.dumps(asdict(self), default=str))
        for row, feature in zip(data["features"], self.features, strict=True):
            row["mismatches"], row["mismatch_rate"] = feature.mismatches, feature.mismatch_rate
        return data


def skew_report(
    project: ProjectStores,
    start: datetime,
    end: datetime,
    features: Sequence[str] | FeatureService | None = None,
    *,
    max_lookups: int = DEFAULT_MAX_LOOKUPS,
) -> SkewReport:
    """Replay the lookups logged in [start, end] offline and compare them with what serving returned.

    `features` ('view:feature' references or a feature service) narrows the check; by default every
    logged feature is checked. Past `max_lookups` records a uniform sample of that many is replayed.
    """
    if max_lookups < 1:
        raise ValidationError(f"max_lookups must be at least 1, got {max_lookups}.")
    start, end = as_utc(start), as_utc(end)
    if features is not None:
        _check_features(project, features)
    logged = read_lookups(project.offline, start, end, limit=max_lookups)
    total = count_lookups(project.offline, start, end) if len(logged) >= max_lookups else len(logged)
    wanted = _wanted(logged, features)
    results = {
        f"{view}:{name}": FeatureSkew(f"{view}:{name}") for view, names in wanted.items() for name in names
    }
    samples: list[Mismatch] = []
    for view_name, names in wanted.items():
        records = logged[logged["view"] == view_name]
        if not records.empty:
            _compare_view(project, view_name, names, records, results, samples)
    ranked = sorted(results.values(), key=lambda f: (-f.mismatch_rate, -f.mismatches, f.feature))
    return SkewReport(start, end, total, len(logged), ranked, samples)


def values_match(online: Any, offline: Any) -> bool:
    """Equal if both null, numbers within a tight relative tolerance, or otherwise equal (strings)."""
    if online is None or offline is None:
        return online is None and offline is None
    numbers = (int, float)
    if isinstance(online, numbers) and isinstance(offline, numbers):
        return math.isclose(float(online), float(offline), rel_tol=RELATIVE_TOLERANCE)
    return bool(online == offline)


def _check_features(project: ProjectStores, features: Sequence[str] | FeatureService) -> None:
    """Fail early, with the view's own message, on a requested feature that is not defined."""
    refs = features.features if isinstance(features, FeatureService) else features
    for view_name, names in group_feature_refs(refs).items():
        view = _view(project, view_name)
        for name in names:
            view.dtype_of(name)


def _wanted(logged: pd.DataFrame, features: Sequence[str] | FeatureService | None) -> dict[str, list[str]]:
    """The features to check, by view: the requested ones, or every feature the log holds."""
    if isinstance(features, FeatureService):
        features = features.features
    if features is not None:
        return {view: list(dict.fromkeys(names)) for view, names in group_feature_refs(features).items()}
    wanted: dict[str, list[str]] = {}
    for view, values in zip(logged["view"], logged["values"], strict=True):
        names = wanted.setdefault(view, [])
        names.extend(name for name in orjson.loads(values) if name not in names)
    return wanted


@dataclass
class _Lookups:
    """One view's logged lookup records, parsed, in log order."""

    entities: list[dict[str, Any]]
    values: list[dict[str, Any]]
    statuses: list[dict[str, str]]
    event_timestamps: list[dict[str, float | None]]
    lookup_ts: list[datetime]

    @classmethod
    def parse(cls, records: pd.DataFrame) -> _Lookups:
        return cls(
            entities=[orjson.loads(e) for e in records["entities"]],
            values=[orjson.loads(v) for v in records["values"]],
            statuses=[orjson.loads(s) for s in records["statuses"]],
            event_timestamps=[orjson.loads(t) for t in records["event_timestamps"]],
            lookup_ts=[as_utc(t.to_pydatetime()) for t in records["ts"]],
        )

    def event_time(self, row: int, feature: str) -> datetime | None:
        """When the online value of `feature` in record `row` happened."""
        epoch = self.event_timestamps[row].get(feature)
        return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _compare_view(
    project: ProjectStores,
    view_name: str,
    names: list[str],
    records: pd.DataFrame,
    results: dict[str, FeatureSkew],
    samples: list[Mismatch],
) -> None:
    """Replay one view's logged lookups offline and add each feature's comparison to `results`."""
    view = _view(project, view_name)
    lookups = _Lookups.parse(records)
    entity_df = _entity_frame(view, lookups)
    try:
        replayed = project.get_historical_features(
            entity_df,
            [f"{view_name}:{name}" for name in names],
            timestamp_field=LOOKUP_TS,
            full_feature_names=True,
        )
    except LoopmlError as exc:
        raise type(exc)(
            f"The lookups logged for '{view_name}' cannot be recomputed offline: {exc} Leave the view's "
            "features out with features=[...] (`--feature` on the command line)."
        ) from exc
    offline = {name: _plain(replayed[f"{view_name}__{name}"]) for name in names}

    mismatched: list[tuple[str, int]] = []
    for name in names:
        skew = results[f"{view_name}:{name}"]
        for row, logged in enumerate(lookups.values):
            if name not in logged:
                continue
            skew.lookups += 1
            if logged[name] is None and offline[name][row] is None:
                continue
            skew.compared += 1
            if not values_match(logged[name], offline[name][row]):
                mismatched.append((name, row))

    offline_ts = _offline_event_times(project, view, entity_df, sorted({row for _, row in mismatched}))
    kept: dict[str, int] = {}
    for name, row in mismatched:
        online_value, offline_value = lookups.values[row][name], offline[name][row]
        if online_value is None:
            reason = ONLINE_MISSING
        elif offline_value is None:
            reason = OFFLINE_MISSING
        else:
            reason = _time_reason(lookups.event_time(row, name), offline_ts.get(row))
        results[f"{view_name}:{name}"].reasons[reason] += 1
        if kept.get(name, 0) < SAMPLES_PER_FEATURE:
            kept[name] = kept.get(name, 0) + 1
            samples.append(
                Mismatch(
                    feature=f"{view_name}:{name}",
                    lookup_ts=lookups.lookup_ts[row],
                    entities=lookups.entities[row],
                    online_value=online_value,
                    online_status=lookups.statuses[row][name],
                    online_event_ts=lookups.event_time(row, name),
                    offline_value=offline_value,
                    offline_event_ts=offline_ts.get(row),
                    reason=reason,
                )
            )


def _view(project: ProjectStores, name: str) -> FeatureView:
    try:
        return feature_registry.get_feature_view(project.metadata, name)
    except LoopmlError as exc:
        raise type(exc)(
            f"Lookups were logged for feature view '{name}', which cannot be read now: {exc} Leave its "
            "features out with features=[...] (`--feature` on the command line)."
        ) from exc


def _entity_frame(view: FeatureView, lookups: _Lookups) -> pd.DataFrame:
    """Join keys and lookup time per record; keys mixing ints and strings become strings, as online."""
    columns: dict[str, Any] = {}
    for key in view.join_keys:
        keys = [entities.get(key) for entities in lookups.entities]
        if all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
            columns[key] = pd.Series(keys, dtype="int64")
        else:
            columns[key] = pd.Series([str(k) for k in keys], dtype="object")
    columns[LOOKUP_TS] = pd.Series(lookups.lookup_ts, dtype="datetime64[us, UTC]")
    return pd.DataFrame(columns)


def _plain(column: pd.Series) -> list[Any]:
    """Python values with None for every kind of null (NaN, NaT, pd.NA)."""
    return [None if pd.isna(v) else v for v in column.astype(object).tolist()]


def _offline_event_times(
    project: ProjectStores, view: FeatureView, entity_df: pd.DataFrame, rows: list[int]
) -> dict[int, datetime]:
    """The event time of the offline answer for some entity rows: the newest row known at lookup time.

    The point-in-time answer is the newest row by event time among those available (event and created time
    at or before the lookup), so its event time is the maximum over them.
    """
    if not rows:
        return {}
    keys = [quote(k) for k in view.join_keys]
    ts = f"f.{quote(view.source.timestamp_field)}::TIMESTAMPTZ"
    created = (
        f"f.{quote(view.source.created_timestamp_field)}::TIMESTAMPTZ"
        if view.source.created_timestamp_field
        else ts
    )
    wanted = entity_df.iloc[rows].assign(__row=rows)
    sql = (
        f"SELECT e.__row, epoch(max({ts})) AS event_ts FROM wanted AS e "
        f"JOIN {source_sql(view, project.path)} AS f ON {' AND '.join(f'f.{k} = e.{k}' for k in keys)} "
        f"WHERE greatest({ts}, {created}) <= e.{quote(LOOKUP_TS)} GROUP BY e.__row"
    )
    with project.offline.connect() as conn:
        conn.register("wanted", wanted)
        found = conn.execute(sql).fetchall()
    return {
        int(row): datetime.fromtimestamp(event_ts, UTC) for row, event_ts in found if event_ts is not None
    }


def _time_reason(online_ts: datetime | None, offline_ts: datetime | None) -> str:
    """Why two present values differ, from their event times."""
    if online_ts is None or offline_ts is None:
        return VALUE_DIFFERS
    gap = (offline_ts - online_ts).total_seconds()
    if gap > EVENT_TIME_TOLERANCE_SECONDS:
        return STALE
    if gap < -EVENT_TIME_TOLERANCE_SECONDS:
        return ONLINE_NEWER
    return VALUE_DIFFERS
