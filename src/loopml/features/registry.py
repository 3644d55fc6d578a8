"""Stored definitions: `apply` records entities and feature views; a changed one becomes a new version."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, func, insert, select

from loopml.errors import NotFoundError, ValidationError
from loopml.features.definitions import Entity, FeatureView
from loopml.features.tables import feature_definitions
from loopml.storage.metadata import MetadataStore

Definition = Entity | FeatureView


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
    changes = []
    with metadata.begin() as conn:
        for obj in list(objects):
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


def get_feature_view(metadata: MetadataStore, name: str) -> FeatureView:
    """The newest applied version of a feature view."""
    with metadata.begin() as conn:
        spec = conn.execute(
            select(feature_definitions.c.spec)
            .where(feature_definitions.c.kind == "feature_view", feature_definitions.c.name == name)
            .order_by(feature_definitions.c.version.desc())
            .limit(1)
        ).scalar()
    if spec is None:
        raise NotFoundError(f"No feature view named '{name}'; define it and run `loopml apply` first.")
    return FeatureView.from_spec(spec)


def list_feature_views(metadata: MetadataStore) -> list[FeatureView]:
    newest = (
        select(feature_definitions.c.name, func.max(feature_definitions.c.version).label("version"))
        .where(feature_definitions.c.kind == "feature_view")
        .group_by(feature_definitions.c.name)
        .subquery()
    )
    with metadata.begin() as conn:
        rows = conn.execute(
            select(feature_definitions.c.spec)
            .join(
                newest,
                (feature_definitions.c.name == newest.c.name)
                & (feature_definitions.c.version == newest.c.version),
            )
            .where(feature_definitions.c.kind == "feature_view")
        )
        return [FeatureView.from_spec(row.spec) for row in rows]


def _kind_of(obj: object) -> str:
    if isinstance(obj, FeatureView):
        return "feature_view"
    if isinstance(obj, Entity):
        return "entity"
    raise ValidationError(f"Cannot apply {obj!r}; apply takes Entity and FeatureView objects.")
