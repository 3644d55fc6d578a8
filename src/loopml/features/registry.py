"""Stored definitions: `apply` records entities and feature views; a changed one becomes a new version."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, func, insert, select

from loopml.errors import NotFoundError, ValidationError
from loopml.features.definitions import Entity, FeatureService, FeatureView, group_feature_refs
from loopml.features.on_demand import OnDemandFeatureView
from loopml.features.tables import feature_definitions
from loopml.storage.metadata import MetadataStore

Definition = Entity | FeatureView | FeatureService | OnDemandFeatureView


@dataclass(frozen=True)
class AppliedChange:
    kind: str
    name: str
    action: str  # "create", "update" or "unchanged"
    version: int


def plan(metadata: MetadataStore, objects: Iterable[Definition]) -> list[AppliedChange]:
    """What `apply` would do to each definition, without writing anything."""
    with metadata.begin() as conn:
        return [_change(conn, obj)[0] for obj in objects]


def apply(
    metadata: MetadataStore, objects: Iterable[Definition], actor: str = "loopml"
) -> list[AppliedChange]:
    """Store each definition, versioning changed ones; returns what happened to each."""
    objects = list(objects)
    changes = []
    with metadata.begin() as conn:
        _check_services(conn, objects)
        for obj in objects:
            change, spec, spec_hash = _change(conn, obj)
            changes.append(change)
            if change.action == "unchanged":
                continue
            conn.execute(
                insert(feature_definitions).values(
                    kind=change.kind,
                    name=obj.name,
                    version=change.version,
                    spec=spec,
                    spec_hash=spec_hash,
                    created_at=metadata.clock.now(),
                )
            )
            metadata.record_event(
                conn,
                kind=f"{change.kind}.{change.action}d",
                subject=f"{change.kind}:{obj.name}",
                actor=actor,
                reason=f"applied {change.kind} '{obj.name}' as version {change.version}",
                data={"version": change.version},
            )
        if any(change.action != "unchanged" for change in changes):
            metadata.bump_change_counter(conn)  # servers re-read the views they fetch online
    return changes


def _change(conn: Connection, obj: Definition) -> tuple[AppliedChange, dict[str, Any], str]:
    kind = _kind_of(obj)
    spec = obj.spec()
    spec_hash = hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()
    latest = conn.execute(
        select(feature_definitions.c.version, feature_definitions.c.spec_hash)
        .where(feature_definitions.c.kind == kind, feature_definitions.c.name == obj.name)
        .order_by(feature_definitions.c.version.desc())
        .limit(1)
    ).first()
    if latest is None:
        return AppliedChange(kind, obj.name, "create", 1), spec, spec_hash
    if latest.spec_hash == spec_hash:
        return AppliedChange(kind, obj.name, "unchanged", latest.version), spec, spec_hash
    return AppliedChange(kind, obj.name, "update", latest.version + 1), spec, spec_hash


@dataclass(frozen=True)
class StoredDefinition:
    kind: str
    name: str
    version: int
    spec: dict[str, Any]
    created_at: datetime


def get_feature_view(metadata: MetadataStore, name: str) -> FeatureView:
    """The newest applied version of a feature view."""
    return FeatureView.from_spec(_latest(metadata, "feature_view", name).spec)


def get_feature_service(metadata: MetadataStore, name: str) -> FeatureService:
    """The newest applied version of a feature service."""
    return FeatureService.from_spec(_latest(metadata, "feature_service", name).spec)


def get_view(
    metadata: MetadataStore, name: str, search_path: Path | None = None
) -> FeatureView | OnDemandFeatureView:
    """The newest applied version of a feature view or, failing that, of an on-demand view."""
    try:
        return get_feature_view(metadata, name)
    except NotFoundError:
        try:
            spec = _latest(metadata, "on_demand_feature_view", name).spec
        except NotFoundError:
            raise NotFoundError(
                f"No feature view or on-demand view named '{name}'; define it and run `loopml apply`."
            ) from None
        return OnDemandFeatureView.from_spec(spec, search_path)


def list_feature_views(metadata: MetadataStore) -> list[FeatureView]:
    return [FeatureView.from_spec(d.spec) for d in list_definitions(metadata, "feature_view")]


def list_definitions(metadata: MetadataStore, kind: str | None = None) -> list[StoredDefinition]:
    """The newest version of every applied definition (of one kind, if given), by kind and name."""
    newest = (
        select(
            feature_definitions.c.kind,
            feature_definitions.c.name,
            func.max(feature_definitions.c.version).label("version"),
        )
        .group_by(feature_definitions.c.kind, feature_definitions.c.name)
        .subquery()
    )
    query = (
        select(feature_definitions)
        .join(
            newest,
            (feature_definitions.c.kind == newest.c.kind)
            & (feature_definitions.c.name == newest.c.name)
            & (feature_definitions.c.version == newest.c.version),
        )
        .order_by(feature_definitions.c.kind, feature_definitions.c.name)
    )
    if kind is not None:
        query = query.where(feature_definitions.c.kind == kind)
    with metadata.begin() as conn:
        return [
            StoredDefinition(row.kind, row.name, row.version, row.spec, row.created_at)
            for row in conn.execute(query)
        ]


def definition_versions(metadata: MetadataStore, kind: str, name: str) -> list[StoredDefinition]:
    """Every applied version of one definition, oldest first."""
    with metadata.begin() as conn:
        rows = conn.execute(
            select(feature_definitions)
            .where(feature_definitions.c.kind == kind, feature_definitions.c.name == name)
            .order_by(feature_definitions.c.version)
        ).all()
    if not rows:
        raise NotFoundError(f"No {kind.replace('_', ' ')} named '{name}'; define it and run `loopml apply`.")
    return [StoredDefinition(r.kind, r.name, r.version, r.spec, r.created_at) for r in rows]


def _check_services(conn: Connection, objects: list[Definition]) -> None:
    """Every feature a service or an on-demand view reads must exist in a view applied now or before."""
    views: dict[str, Any] = {o.name: o for o in objects if isinstance(o, FeatureView | OnDemandFeatureView)}
    readers = [o for o in objects if isinstance(o, FeatureService | OnDemandFeatureView)]
    for reader in readers:
        refs = reader.features if isinstance(reader, FeatureService) else reader.sources
        for view_name, features in group_feature_refs(refs).items():
            view = views.get(view_name) or _stored_view(conn, view_name)
            if view is None or (
                isinstance(reader, OnDemandFeatureView) and not isinstance(view, FeatureView)
            ):
                raise ValidationError(
                    f"{type(reader).__name__} '{reader.name}' reads view '{view_name}', which is not a defined "
                    "feature view; apply the view with it or fix the reference."
                )
            for feature in features:
                view.dtype_of(feature)


def _stored_view(conn: Connection, name: str) -> Any:
    """The newest stored feature view (or, as a schema only, on-demand view) named `name`, if any."""
    for kind in ("feature_view", "on_demand_feature_view"):
        spec = conn.execute(
            select(feature_definitions.c.spec)
            .where(feature_definitions.c.kind == kind, feature_definitions.c.name == name)
            .order_by(feature_definitions.c.version.desc())
            .limit(1)
        ).scalar()
        if spec is not None:
            if kind == "feature_view":
                return FeatureView.from_spec(spec)
            return _SchemaOnly({f["name"]: f["dtype"] for f in spec["schema"]}, name)
    return None


@dataclass(frozen=True)
class _SchemaOnly:
    """An applied on-demand view's outputs, checked without importing its code."""

    dtypes: dict[str, str]
    name: str

    def dtype_of(self, feature: str) -> str:
        if feature not in self.dtypes:
            raise ValidationError(
                f"On-demand view '{self.name}' has no feature '{feature}'; it has {', '.join(self.dtypes)}."
            )
        return self.dtypes[feature]


def _latest(metadata: MetadataStore, kind: str, name: str) -> StoredDefinition:
    return definition_versions(metadata, kind, name)[-1]


def _kind_of(obj: object) -> str:
    if isinstance(obj, FeatureView):
        return "feature_view"
    if isinstance(obj, Entity):
        return "entity"
    if isinstance(obj, FeatureService):
        return "feature_service"
    if isinstance(obj, OnDemandFeatureView):
        return "on_demand_feature_view"
    raise ValidationError(
        f"Cannot apply {obj!r}; apply takes Entity, FeatureView, OnDemandFeatureView and FeatureService objects."
    )
