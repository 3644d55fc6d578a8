"""Declarative feature definitions: what an entity is and where a view's values come from."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from loopml.errors import ValidationError
from loopml.features.sources import SOURCE_TYPES, TIMESTAMP, DataFrameSource, Source, source_from_spec

DTYPES = ("float64", "int64", "string", "bool")
AGGREGATE_FUNCTIONS = ("count", "sum", "mean", "min", "max")
DEFAULT_TTL = timedelta(days=1)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def check_identifier(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValidationError(
            f"{kind} name {name!r} is not valid; use letters, digits and '_', starting with a letter or '_'."
        )
    return name


@dataclass(frozen=True)
class Entity:
    """A thing features describe (a user, a merchant), identified by one or more join keys."""

    name: str
    join_keys: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        check_identifier("Entity", self.name)
        keys = (self.join_keys,) if isinstance(self.join_keys, str) else tuple(self.join_keys)
        if not keys:
            raise ValidationError(
                f"Entity '{self.name}' needs at least one join key, e.g. join_keys=['user_id']."
            )
        for key in keys:
            check_identifier("Join key", key)
        object.__setattr__(self, "join_keys", keys)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "join_keys": list(self.join_keys), "description": self.description}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Entity:
        return cls(spec["name"], tuple(spec["join_keys"]), spec.get("description", ""))


@dataclass(frozen=True)
class Field:
    """A typed feature column."""

    name: str
    dtype: str = "float64"

    def __post_init__(self) -> None:
        check_identifier("Field", self.name)
        if self.dtype not in DTYPES:
            raise ValidationError(
                f"Field '{self.name}' has dtype {self.dtype!r}; use one of {', '.join(DTYPES)}."
            )


def parse_duration(value: timedelta | str, what: str) -> timedelta:
    """A positive timedelta from a timedelta or text such as '30m', '1h', '7d', '2w'."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not match:
            raise ValidationError(
                f"{what} {value!r} is not a duration; write e.g. '30m', '1h', '7d' or '2w'."
            )
        value = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ValidationError(f"{what} must be a positive duration, got {value!r}.")
    return value


def duration_label(value: timedelta) -> str:
    """The shortest exact label of a duration: 7d, 1h, 90s."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0 and value.microseconds == 0:
            return f"{seconds // size}{unit}"
    return f"{value.total_seconds():g}s"


@dataclass(frozen=True)
class Aggregation:
    """A windowed aggregate of an event source column, point-in-time: events with t - window <= time < t.

    `Aggregation("amount", "sum", "7d", name="spend_7d")` is a user's spending over the last 7 days. Count and
    sum over an empty window are 0; mean, min and max are null. `column=None` counts events.
    """

    column: str | None
    function: str
    window: timedelta | str
    name: str = ""

    def __post_init__(self) -> None:
        if self.function not in AGGREGATE_FUNCTIONS:
            raise ValidationError(
                f"Aggregation function {self.function!r} is not supported; use one of {', '.join(AGGREGATE_FUNCTIONS)}."
            )
        if self.column is None and self.function != "count":
            raise ValidationError(
                f"Aggregation '{self.function}' needs a column; only 'count' can count events."
            )
        if self.column is not None:
            check_identifier("Aggregation column", self.column)
        window = parse_duration(self.window, "Aggregation window")
        object.__setattr__(self, "window", window)
        if not self.name:
            default = f"{self.column}_{self.function}" if self.column else "count"
            object.__setattr__(self, "name", f"{default}_{duration_label(window)}")
        check_identifier("Aggregation", self.name)

    @property
    def dtype(self) -> str:
        return "int64" if self.function == "count" else "float64"

    def spec(self) -> dict[str, Any]:
        assert isinstance(self.window, timedelta)
        return {
            "column": self.column,
            "function": self.function,
            "window_seconds": self.window.total_seconds(),
            "name": self.name,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Aggregation:
        return cls(spec["column"], spec["function"], timedelta(seconds=spec["window_seconds"]), spec["name"])


@dataclass(frozen=True)
class FeatureView:
    """Features of one or more entities read from a source, valid for `ttl` after their event time.

    A view declares either its feature columns (`schema`) or windowed `aggregations` of an event source; an
    aggregation view's features are its aggregations, and its ttl (how much event history is kept online)
    defaults to the longest window.
    """

    name: str
    entities: tuple[Entity, ...]
    source: Source
    schema: tuple[Field, ...] = ()
    ttl: timedelta | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    owner: str = ""
    aggregations: tuple[Aggregation, ...] = ()

    def __post_init__(self) -> None:
        check_identifier("FeatureView", self.name)
        entities = (self.entities,) if isinstance(self.entities, Entity) else tuple(self.entities)
        if not entities:
            raise ValidationError(f"FeatureView '{self.name}' needs at least one entity.")
        object.__setattr__(self, "entities", entities)
        if not isinstance(self.source, SOURCE_TYPES):
            raise ValidationError(
                f"FeatureView '{self.name}' has source {self.source!r}; use a ParquetSource, CsvSource, "
                "SqlSource or DataFrameSource."
            )
        object.__setattr__(self, "schema", tuple(self.schema))
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        if self.aggregations:
            self._derive_aggregation_schema()
        elif not self.schema:
            raise ValidationError(
                f"FeatureView '{self.name}' declares no features; add Field(...)s to schema or aggregations=[...]."
            )
        if self.ttl is None:
            object.__setattr__(self, "ttl", DEFAULT_TTL)
        if self.ttl <= timedelta(0):
            raise ValidationError(f"FeatureView '{self.name}' has ttl {self.ttl}; it must be positive.")
        if self.aggregations and self.ttl < self.longest_window:
            raise ValidationError(
                f"FeatureView '{self.name}' keeps {self.ttl} of events online (ttl) but aggregates over "
                f"{self.longest_window}; leave ttl out or make it at least the longest window."
            )
        names = self.feature_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValidationError(f"FeatureView '{self.name}' declares features {duplicates} more than once.")
        clashes = set(self.feature_names) & set(self.join_keys)
        if clashes:
            raise ValidationError(f"FeatureView '{self.name}' uses join keys {sorted(clashes)} as features.")
        if isinstance(self.source, DataFrameSource) and self.source.frame is not None:
            missing = [c for c in self.source_columns if c not in self.source.frame.columns]
            if missing:
                raise ValidationError(
                    f"FeatureView '{self.name}' reads column(s) {missing} that its DataFrameSource lacks; "
                    "add them to the frame or fix the view's join keys and features."
                )

    def _derive_aggregation_schema(self) -> None:
        if self.schema:
            raise ValidationError(
                f"FeatureView '{self.name}' declares both schema and aggregations; an aggregation view's "
                "features are its aggregations, so leave schema out."
            )
        object.__setattr__(self, "schema", tuple(Field(a.name, a.dtype) for a in self.aggregations))
        if self.ttl is None:
            object.__setattr__(self, "ttl", self.longest_window)

    @property
    def longest_window(self) -> timedelta:
        return max(a.window for a in self.aggregations)

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(key for entity in self.entities for key in entity.join_keys)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)

    @property
    def source_columns(self) -> dict[str, str | None]:
        """The source columns the view reads, with their declared dtype (None: as the source has it)."""
        columns: dict[str, str | None] = dict.fromkeys(self.join_keys)
        columns[self.source.timestamp_field] = TIMESTAMP
        if self.source.created_timestamp_field:
            columns[self.source.created_timestamp_field] = TIMESTAMP
        if self.aggregations:
            columns.update((a.column, None) for a in self.aggregations if a.column is not None)
        else:
            columns.update((f.name, f.dtype) for f in self.schema)
        return columns

    def dtype_of(self, feature: str) -> str:
        for f in self.schema:
            if f.name == feature:
                return f.dtype
        raise ValidationError(
            f"Feature view '{self.name}' has no feature '{feature}'; it has {', '.join(self.feature_names)}."
        )

    def spec(self) -> dict[str, Any]:
        """A JSON-able description; keys are only added when set, so older specs keep their hash."""
        extra: dict[str, Any] = {}
        if self.owner:
            extra["owner"] = self.owner
        if self.aggregations:
            extra["aggregations"] = [a.spec() for a in self.aggregations]
        return extra | {
            "name": self.name,
            "entities": [e.spec() for e in self.entities],
            "source": self.source.spec(),
            "schema": [{"name": f.name, "dtype": f.dtype} for f in self.schema],
            "ttl_seconds": self.ttl.total_seconds(),
            "description": self.description,
            "tags": dict(self.tags),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FeatureView:
        aggregations = tuple(Aggregation.from_spec(a) for a in spec.get("aggregations", ()))
        return cls(
            name=spec["name"],
            entities=tuple(Entity.from_spec(e) for e in spec["entities"]),
            source=source_from_spec(spec["source"]),
            schema=() if aggregations else tuple(Field(**f) for f in spec["schema"]),
            ttl=timedelta(seconds=spec["ttl_seconds"]),
            description=spec.get("description", ""),
            tags=spec.get("tags", {}),
            owner=spec.get("owner", ""),
            aggregations=aggregations,
        )


@dataclass(frozen=True)
class FeatureService:
    """The named set of features one model reads, so training and serving ask for exactly the same."""

    name: str
    features: tuple[str, ...]
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_identifier("FeatureService", self.name)
        refs = tuple(self.features)
        if not refs:
            raise ValidationError(
                f"FeatureService '{self.name}' lists no features; add 'view:feature' references."
            )
        group_feature_refs(refs)
        object.__setattr__(self, "features", refs)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "features": list(self.features),
            "description": self.description,
            "tags": dict(self.tags),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FeatureService:
        return cls(spec["name"], tuple(spec["features"]), spec.get("description", ""), spec.get("tags", {}))


def parse_feature_ref(ref: str) -> tuple[str, str]:
    """Split 'view:feature' into its parts."""
    view, sep, feature = ref.partition(":")
    if not sep or not view or not feature:
        raise ValidationError(f"Feature reference {ref!r} must look like 'view_name:feature_name'.")
    return view, feature


def group_feature_refs(refs: Sequence[str]) -> dict[str, list[str]]:
    """'view:feature' references grouped by view, in first-seen order."""
    if isinstance(refs, str):
        raise ValidationError("features must be a list of 'view:feature' references, not one string.")
    grouped: dict[str, list[str]] = {}
    for ref in refs:
        view, feature = parse_feature_ref(ref)
        grouped.setdefault(view, []).append(feature)
    return grouped


def feature_column(view: str, feature: str, full_feature_names: bool) -> str:
    """The column a feature is returned under: 'feature', or 'view__feature' with full names."""
    return f"{view}__{feature}" if full_feature_names else feature
