"""Aliases and their history: every period an alias pointed at a version, with who moved it and why.

The current pointer lives in `model_aliases`; `alias_history` keeps one row per period so "which version was
champion at time T" is a single indexed query, and the events table keeps the evidence of each move.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select, update

from loopml.errors import ValidationError
from loopml.registry.tables import alias_history, model_aliases, registered_models
from loopml.storage.metadata import MetadataStore

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")


@dataclass(frozen=True)
class AliasPeriod:
    """One period during which `alias` pointed at `version`; `valid_to` is None while it still does."""

    model_name: str
    alias: str
    version: int
    valid_from: datetime
    valid_to: datetime | None
    actor: str
    reason: str


def check_alias(alias: str) -> None:
    if not _ALIAS.match(alias):
        raise ValidationError(f"Alias {alias!r} is invalid; use a letter then letters, digits, '_' or '-'.")


def current_version(conn: Connection, name: str, alias: str) -> int | None:
    return conn.execute(
        select(model_aliases.c.version).where(
            model_aliases.c.model_name == name, model_aliases.c.alias == alias
        )
    ).scalar()


def move_alias(
    metadata: MetadataStore,
    conn: Connection,
    name: str,
    alias: str,
    version: int | None,
    *,
    actor: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
) -> bool:
    """Point `alias` at `version` (None removes it) in `conn`'s transaction; False when nothing changed.

    The model's row is locked first (PostgreSQL), so two moves of one alias happen one after the other.
    """
    conn.execute(select(registered_models.c.name).where(registered_models.c.name == name).with_for_update())
    previous = current_version(conn, name, alias)
    if previous == version:
        return False
    now = metadata.clock.now()
    where = (model_aliases.c.model_name == name, model_aliases.c.alias == alias)
    if version is None:
        conn.execute(delete(model_aliases).where(*where))
    elif previous is None:
        conn.execute(
            insert(model_aliases).values(model_name=name, alias=alias, version=version, updated_at=now)
        )
    else:
        conn.execute(update(model_aliases).where(*where).values(version=version, updated_at=now))
    conn.execute(
        update(alias_history)
        .where(
            alias_history.c.model_name == name,
            alias_history.c.alias == alias,
            alias_history.c.valid_to.is_(None),
        )
        .values(valid_to=now)
    )
    if version is not None:
        conn.execute(
            insert(alias_history).values(
                model_name=name,
                alias=alias,
                version=version,
                valid_from=now,
                valid_to=None,
                actor=actor,
                reason=reason,
            )
        )
    metadata.record_event(
        conn,
        kind="alias.moved" if version is not None else "alias.removed",
        subject=f"model:{name}@{alias}",
        actor=actor,
        reason=reason,
        data={"alias": alias, "from_version": previous, "to_version": version, **(evidence or {})},
    )
    metadata.bump_change_counter(conn)
    return True


def version_at(conn: Connection, name: str, alias: str, moment: datetime) -> int | None:
    """The version `alias` pointed at, at `moment`: one indexed query over its periods."""
    return conn.execute(
        select(alias_history.c.version)
        .where(
            alias_history.c.model_name == name,
            alias_history.c.alias == alias,
            alias_history.c.valid_from <= moment,
            or_(alias_history.c.valid_to.is_(None), alias_history.c.valid_to > moment),
        )
        .order_by(alias_history.c.valid_from.desc(), alias_history.c.id.desc())
        .limit(1)
    ).scalar()


def periods(conn: Connection, name: str, alias: str | None = None) -> list[AliasPeriod]:
    """Every period of one alias (or of all aliases of the model), oldest first."""
    conditions = [alias_history.c.model_name == name]
    if alias is not None:
        conditions.append(alias_history.c.alias == alias)
    rows = conn.execute(
        select(alias_history)
        .where(and_(*conditions))
        .order_by(alias_history.c.valid_from, alias_history.c.id)
    ).all()
    return [AliasPeriod(**{k: v for k, v in row._mapping.items() if k != "id"}) for row in rows]
