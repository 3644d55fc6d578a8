"""Endpoints: a stable name clients call, routed to whatever version a model alias points at."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update

from loopml.errors import NotFoundError
from loopml.features.definitions import check_identifier, group_feature_refs
from loopml.registry.models import ModelRegistry
from loopml.serving.tables import endpoints
from loopml.storage.metadata import MetadataStore


@dataclass(frozen=True)
class Endpoint:
    name: str
    model_name: str
    alias: str
    created_at: datetime
    updated_at: datetime


def deploy(
    metadata: MetadataStore,
    registry: ModelRegistry,
    name: str,
    model_name: str,
    alias: str = "champion",
    *,
    actor: str = "loopml",
) -> Endpoint:
    """Create or repoint an endpoint; the model alias must already exist."""
    check_identifier("Endpoint", name)
    if registry.get_alias(model_name, alias) is None:
        raise NotFoundError(
            f"Model '{model_name}' has no alias '{alias}'; set it first (`loopml models alias {model_name} {alias} N`)."
        )
    now = metadata.clock.now()
    with metadata.begin() as conn:
        existing = conn.execute(select(endpoints.c.name).where(endpoints.c.name == name)).first()
        if existing is None:
            conn.execute(
                insert(endpoints).values(
                    name=name, model_name=model_name, alias=alias, created_at=now, updated_at=now
                )
            )
        else:
            conn.execute(
                update(endpoints)
                .where(endpoints.c.name == name)
                .values(model_name=model_name, alias=alias, updated_at=now)
            )
        metadata.record_event(
            conn,
            kind="endpoint.deployed",
            subject=f"endpoint:{name}",
            actor=actor,
            reason=f"endpoint '{name}' serves {model_name}@{alias}",
            data={"model": model_name, "alias": alias},
        )
        metadata.bump_change_counter(conn)
    return get_endpoint(metadata, name)


def get_endpoint(metadata: MetadataStore, name: str) -> Endpoint:
    with metadata.begin() as conn:
        row = conn.execute(select(endpoints).where(endpoints.c.name == name)).first()
    if row is None:
        raise NotFoundError(f"No endpoint named '{name}'; create it with `loopml deploy {name} MODEL`.")
    return Endpoint(**row._mapping)


def list_endpoints(metadata: MetadataStore) -> list[Endpoint]:
    with metadata.begin() as conn:
        return [
            Endpoint(**row._mapping) for row in conn.execute(select(endpoints).order_by(endpoints.c.name))
        ]


def served_views(metadata: MetadataStore, registry: ModelRegistry) -> dict[str, str]:
    """The feature views that each endpoint's current model version reads, with who reads them."""
    served: dict[str, str] = {}
    for endpoint in list_endpoints(metadata):
        number = registry.get_alias(endpoint.model_name, endpoint.alias)
        if number is None:
            continue
        version = registry.get_version(endpoint.model_name, number)
        for view in group_feature_refs(version.features):
            served.setdefault(view, f"endpoint '{endpoint.name}' (model {version.ref})")
    return served


def endpoint_users(
    metadata: MetadataStore, registry: ModelRegistry
) -> Callable[[str, int | None], list[str]]:
    """A registry usage check: the endpoints serving a model (any of it, or one version right now)."""

    def users(model_name: str, version: int | None) -> list[str]:
        found = []
        for endpoint in list_endpoints(metadata):
            if endpoint.model_name != model_name:
                continue
            if version is None or registry.get_alias(model_name, endpoint.alias) == version:
                found.append(f"endpoint '{endpoint.name}' ({model_name}@{endpoint.alias})")
        return found

    return users
