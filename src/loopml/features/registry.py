"""Stored definitions: `apply` records entities and feature views; a changed one becomes a new version.

A definition removed from the project's files is marked deleted on its newest version (with `prune`): it is
no longer listed or served, and every version stays readable for the training sets that reference it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Row, func, insert, select, update

from loopml.errors import NotFoundError, ValidationError
from loopml.features.definitions import Entity, FeatureService, FeatureView, group_feature_refs
from loopml.features.on_demand import OnDemandFeatureView
from loopml.features.tables import feature_definitions
from loopml.storage.metadata import MetadataStore

Definition = Entity | FeatureView | FeatureService | OnDemandFeatureView
VIEW_KINDS = ("feature_view", "on_demand_feature_view")


@dataclass(frozen=True)
class AppliedChange:
    kind: str
    name: str
    action: str  # "create", "update", "unchanged" or "delete"
    version: int  # the version applied; for a delete, the newest version (kept, like every other)


@dataclass(frozen=True)
class _Planned:
    change: AppliedChange
    spec: dict[str, Any] | None = None  # None for a delete
    spec_hash: str = ""


def plan(
    metadata: MetadataStore,
    objects: Iterable[Definition],
    *,
    prune: bool = False,
    in_use: Mapping[str, str] | None = None,
) -> list[AppliedChange]:
    """What `apply` would do to each definition, without writing anything; raises what `apply` would refuse.

    With `prune`, stored definitions absent from `objects` are planned as deletes.
    """
    objects = list(objects)
    with metadata.begin() as conn:
        return [p.change for p in _plan(conn, objects, prune, in_use or {})]


def apply(
    metadata: MetadataStore,
    objects: Iterable[Definition],
    actor: str = "loopml",
    *,
    prune: bool = False,
    in_use: Mapping[str, str] | None = None,
) -> list[AppliedChange]:
    """Store each definition, versioning changed ones; returns what happened to each.

    With `prune`, `objects` are the whole desired state: stored definitions absent from them are marked
    deleted (their versions stay, for the training sets built from them). `in_use` maps the names of views
    that readers outside the registry (deployed models) use to who uses them; deleting those is refused.
    """
    objects = list(objects)
    with metadata.begin() as conn:
        planned = _plan(conn, objects, prune, in_use or {})
        now = metadata.clock.now()
        for p in planned:
            change = p.change
            if change.action == "unchanged":
                continue
            if change.action == "delete":
                conn.execute(
                    update(feature_definitions)
                    .where(
                        feature_definitions.c.kind == change.kind,
                        feature_definitions.c.name == change.name,
                        feature_definitions.c.version == change.version,
                    )
                    .values(deleted_at=now)
                )
                reason = (
                    f"deleted {_label(change.kind)} '{change.name}'; versions up to {change.version} are kept"
                )
            else:
                conn.execute(
                    insert(feature_definitions).values(
                        kind=change.kind,
                        name=change.name,
                        version=change.version,
                        spec=p.spec,
                        spec_hash=p.spec_hash,
                        created_at=now,
                    )
                )
                reason = f"applied {change.kind} '{change.name}' as version {change.version}"
            metadata.record_event(
                conn,
                kind=f"{change.kind}.{change.action}d",
                subject=f"{change.kind}:{change.name}",
                actor=actor,
                reason=reason,
                data={"version": change.version},
            )
        if any(p.change.action != "unchanged" for p in planned):
            metadata.bump_change_counter(conn)  # servers re-read the views they fetch online
    return [p.change for p in planned]


def _plan(
    conn: Connection, objects: list[Definition], prune: bool, in_use: Mapping[str, str]
) -> list[_Planned]:
    objects = _distinct(objects)
    planned = [_change(conn, obj) for obj in objects]
    if prune:
        kept = {(p.change.kind, p.change.name) for p in planned}
        planned += [
            _Planned(AppliedChange(d.kind, d.name, "delete", d.version))
            for d in _newest(conn)
            if (d.kind, d.name) not in kept
        ]
    deleting = {(p.change.kind, p.change.name) for p in planned if p.change.action == "delete"}
    _check_deletes(objects, deleting, in_use)
    _check_services(conn, objects, deleting)
    return planned


def _distinct(objects: list[Definition]) -> list[Definition]:
    """One object per kind and name: the same definition twice is applied once, two different ones refused."""
    by_key: dict[tuple[str, str], Definition] = {}
    for obj in objects:
        key = (_kind_of(obj), obj.name)
        if key in by_key and by_key[key].spec() != obj.spec():
            raise ValidationError(
                f"{_label(key[0]).capitalize()} '{obj.name}' is defined twice, differently; keep one definition "
                "per name."
            )
        by_key[key] = obj
    return list(by_key.values())


def _change(conn: Connection, obj: Definition) -> _Planned:
    kind = _kind_of(obj)
    spec = obj.spec()
    spec_hash = hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()
    latest = conn.execute(
        select(
            feature_definitions.c.version, feature_definitions.c.spec_hash, feature_definitions.c.deleted_at
        )
        .where(feature_definitions.c.kind == kind, feature_definitions.c.name == obj.name)
        .order_by(feature_definitions.c.version.desc())
        .limit(1)
    ).first()
    if latest is None:
        action, version = "create", 1
    elif latest.deleted_at is not None:
        action, version = "create", latest.version + 1  # re-created after a delete: a new version
    elif latest.spec_hash == spec_hash:
        action, version = "unchanged", latest.version
    else:
        action, version = "update", latest.version + 1
    return _Planned(AppliedChange(kind, obj.name, action, version), spec, spec_hash)


def _check_deletes(
    objects: list[Definition], deleting: set[tuple[str, str]], in_use: Mapping[str, str]
) -> None:
    """Refuse to delete a view a deployed model reads, or an entity a kept feature view uses."""
    for kind, name in sorted(deleting):
        if kind in VIEW_KINDS and name in in_use:
            raise ValidationError(
                f"Cannot delete {_label(kind)} '{name}': {in_use[name]} reads it. Keep it in the project's "
                "files, or first serve a model version that does not read it."
            )
        users = [
            o.name for o in objects if isinstance(o, FeatureView) and name in {e.name for e in o.entities}
        ]
        if kind == "entity" and users:
            raise ValidationError(
                f"Cannot delete entity '{name}': feature view '{users[0]}' uses it. Keep the entity defined at "
                "module level in the project's files."
            )


@dataclass(frozen=True)
class StoredDefinition:
    kind: str
    name: str
    version: int
    spec: dict[str, Any]
    created_at: datetime
    deleted_at: datetime | None = None  # set on the newest version of a deleted definition


def get_feature_view(metadata: MetadataStore, name: str) -> FeatureView:
    """The newest applied version of a feature view."""
    return FeatureView.from_spec(_live(metadata, "feature_view", name).spec)


def get_feature_service(metadata: MetadataStore, name: str) -> FeatureService:
    """The newest applied version of a feature service."""
    return FeatureService.from_spec(_live(metadata, "feature_service", name).spec)


def get_view(
    metadata: MetadataStore, name: str, search_path: Path | None = None
) -> FeatureView | OnDemandFeatureView:
    """The newest applied version of a feature view or, failing that, of an on-demand view."""
    with metadata.begin() as conn:
        stored = [d for kind in VIEW_KINDS if (d := _newest_version(conn, kind, name)) is not None]
    for d in stored:
        if d.deleted_at is None:
            if d.kind == "feature_view":
                return FeatureView.from_spec(d.spec)
            return OnDemandFeatureView.from_spec(d.spec, search_path)
    if stored:
        raise NotFoundError(_deleted_message(stored[0]))
    raise NotFoundError(
        f"No feature view or on-demand view named '{name}'; define it and run `loopml apply`."
    )


def list_feature_views(metadata: MetadataStore) -> list[FeatureView]:
    return [FeatureView.from_spec(d.spec) for d in list_definitions(metadata, "feature_view")]


def list_definitions(metadata: MetadataStore, kind: str | None = None) -> list[StoredDefinition]:
    """The newest version of every applied definition not deleted (of one kind, if given), by kind and name."""
    with metadata.begin() as conn:
        return _newest(conn, kind)


def definition_versions(metadata: MetadataStore, kind: str, name: str) -> list[StoredDefinition]:
    """Every applied version of one definition, oldest first, deleted ones included."""
    with metadata.begin() as conn:
        rows = conn.execute(
            select(feature_definitions)
            .where(feature_definitions.c.kind == kind, feature_definitions.c.name == name)
            .order_by(feature_definitions.c.version)
        ).all()
    if not rows:
        raise NotFoundError(f"No {_label(kind)} named '{name}'; define it and run `loopml apply`.")
    return [_stored(r) for r in rows]


def _newest(conn: Connection, kind: str | None = None) -> list[StoredDefinition]:
    """The newest version of every definition not deleted (of one kind, if given), by kind and name."""
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
        .where(feature_definitions.c.deleted_at.is_(None))
        .order_by(feature_definitions.c.kind, feature_definitions.c.name)
    )
    if kind is not None:
        query = query.where(feature_definitions.c.kind == kind)
    return [_stored(row) for row in conn.execute(query)]


def _newest_version(conn: Connection, kind: str, name: str) -> StoredDefinition | None:
    """The newest version of one definition, deleted or not, if it was ever applied."""
    row = conn.execute(
        select(feature_definitions)
        .where(feature_definitions.c.kind == kind, feature_definitions.c.name == name)
        .order_by(feature_definitions.c.version.desc())
        .limit(1)
    ).first()
    return None if row is None else _stored(row)


def _live(metadata: MetadataStore, kind: str, name: str) -> StoredDefinition:
    """The newest version of a definition that is not deleted, or a NotFoundError that says why."""
    with metadata.begin() as conn:
        found = _newest_version(conn, kind, name)
    if found is None:
        raise NotFoundError(f"No {_label(kind)} named '{name}'; define it and run `loopml apply`.")
    if found.deleted_at is not None:
        raise NotFoundError(_deleted_message(found))
    return found


def _deleted_message(d: StoredDefinition) -> str:
    assert d.deleted_at is not None
    return (
        f"The {_label(d.kind)} '{d.name}' was deleted by `loopml apply` at {d.deleted_at:%Y-%m-%d %H:%M:%S} UTC; "
        f"its versions up to {d.version} are kept for the training sets built from them. Define it again and "
        "run `loopml apply` to re-create it as a new version."
    )


def _check_services(conn: Connection, objects: list[Definition], deleting: set[tuple[str, str]]) -> None:
    """Every feature a service or an on-demand view reads must exist in a view applied now or before, and
    not being deleted."""
    views: dict[str, Any] = {o.name: o for o in objects if isinstance(o, FeatureView | OnDemandFeatureView)}
    readers = [o for o in objects if isinstance(o, FeatureService | OnDemandFeatureView)]
    for reader in readers:
        refs = reader.features if isinstance(reader, FeatureService) else reader.sources
        for view_name, features in group_feature_refs(refs).items():
            view = views.get(view_name) or _stored_view(conn, view_name, deleting)
            if view is None and any((kind, view_name) in deleting for kind in VIEW_KINDS):
                raise ValidationError(
                    f"Cannot delete view '{view_name}': {type(reader).__name__} '{reader.name}' reads "
                    f"{', '.join(f'{view_name}:{f}' for f in features)}. Keep the view in the project's files, "
                    f"or stop reading it in '{reader.name}' too."
                )
            if view is None or (
                isinstance(reader, OnDemandFeatureView) and not isinstance(view, FeatureView)
            ):
                raise ValidationError(
                    f"{type(reader).__name__} '{reader.name}' reads view '{view_name}', which is not a defined "
                    "feature view; apply the view with it or fix the reference."
                )
            for feature in features:
                view.dtype_of(feature)


def _stored_view(conn: Connection, name: str, deleting: set[tuple[str, str]]) -> Any:
    """The newest stored feature view (or, as a schema only, on-demand view) named `name` that is neither
    deleted nor about to be, if any."""
    for kind in VIEW_KINDS:
        found = _newest_version(conn, kind, name)
        if found is None or found.deleted_at is not None or (kind, name) in deleting:
            continue
        if kind == "feature_view":
            return FeatureView.from_spec(found.spec)
        return _SchemaOnly({f["name"]: f["dtype"] for f in found.spec["schema"]}, name)
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


def _stored(row: Row[Any]) -> StoredDefinition:
    return StoredDefinition(row.kind, row.name, row.version, row.spec, row.created_at, row.deleted_at)


def _label(kind: str) -> str:
    return kind.replace("_", " ")


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
