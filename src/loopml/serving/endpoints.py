"""Endpoints: a stable name clients call, routed to one or more model versions.

Every endpoint has a primary route; canary, shadow and experiment routes take a share of its traffic. A route
follows a model alias (the version moves when the alias does) or pins one version. Each change is an event and
bumps the change counter, so running servers pick it up within a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from loopml.errors import NotFoundError, ValidationError
from loopml.features.definitions import check_identifier, group_feature_refs
from loopml.registry.models import ModelRegistry, ModelVersion
from loopml.serving.tables import endpoint_routes, endpoints
from loopml.storage.metadata import MetadataStore

PRIMARY, CANARY, SHADOW, EXPERIMENT = "primary", "canary", "shadow", "experiment"
MODES = (PRIMARY, CANARY, SHADOW, EXPERIMENT)
NAN_POLICIES = ("reject", "stored", "allow")


@dataclass(frozen=True)
class Route:
    """One model version behind an endpoint; `weight` is the percent of traffic it takes (or mirrors)."""

    name: str
    model_name: str
    alias: str | None
    version: int | None
    mode: str
    weight: float

    @property
    def target(self) -> str:
        return (
            f"{self.model_name}@{self.alias}"
            if self.alias is not None
            else f"{self.model_name}/{self.version}"
        )


@dataclass(frozen=True)
class ServingSettings:
    """How an endpoint serves: prediction cache, adaptive batching (off when max_batch_size is 0), NaN policy."""

    cache_max_age_seconds: float | None = None
    max_batch_size: int = 0
    max_batch_wait_ms: float = 2.0
    batch_timeout_ms: float = 100.0
    nan_policy: str = "stored"

    def __post_init__(self) -> None:
        age = self.cache_max_age_seconds
        if age is not None and not (isinstance(age, int | float) and age > 0 and math.isfinite(age)):
            raise ValidationError(f"cache_max_age_seconds must be a positive number of seconds, got {age!r}.")
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 0:
            raise ValidationError(
                f"max_batch_size must be 0 (batching off) or a positive integer, got {self.max_batch_size!r}."
            )
        if not 0 <= self.max_batch_wait_ms < self.batch_timeout_ms:
            raise ValidationError(
                f"Batching needs 0 <= max_batch_wait_ms < batch_timeout_ms, got {self.max_batch_wait_ms!r} and "
                f"{self.batch_timeout_ms!r}."
            )
        if self.nan_policy not in NAN_POLICIES:
            raise ValidationError(
                f"nan_policy is {self.nan_policy!r}; use 'stored' (a stored feature without a value reaches the "
                "model as NaN, a null sent in the request is refused), 'reject' (every null is refused) or "
                "'allow' (every null reaches the model as NaN)."
            )

    @property
    def batch_settings(self) -> tuple[int, float, float]:
        return (self.max_batch_size, self.max_batch_wait_ms, self.batch_timeout_ms)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServingSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"Unknown serving setting(s) {unknown}; known: {sorted(known)}.")
        return cls(**data)


@dataclass(frozen=True)
class Endpoint:
    name: str
    salt: str
    routes: tuple[Route, ...]
    settings: ServingSettings
    created_at: datetime
    updated_at: datetime

    @property
    def primary(self) -> Route:
        return next(route for route in self.routes if route.mode == PRIMARY)

    @property
    def model_name(self) -> str:
        return self.primary.model_name


def deploy(
    metadata: MetadataStore,
    registry: ModelRegistry,
    name: str,
    model_name: str,
    alias: str | None = "champion",
    *,
    version: int | None = None,
    mode: str = PRIMARY,
    weight: float | None = None,
    route: str | None = None,
    actor: str = "loopml",
    reason: str = "",
) -> Endpoint:
    """Create an endpoint or set one of its routes; the model alias (or version) must already exist.

    A primary deploy replaces the primary route and drops another route to the same target (a promoted
    canary); a canary, shadow or experiment deploy adds or changes that route, and weight 0 removes it.
    """
    check_identifier("Endpoint", name)
    route_name, weight = _check_route(mode, weight, route)
    if version is not None:
        alias = None
        registry.get_version(model_name, version)
    elif alias is None:
        raise ValidationError("Give the route a model alias or a version.")
    elif registry.get_alias(model_name, alias) is None:
        raise NotFoundError(
            f"Model '{model_name}' has no alias '{alias}'; set it first (`loopml models alias {model_name} {alias} N`)."
        )
    new = Route(route_name, model_name, alias, version, mode, weight)
    now = metadata.clock.now()
    with metadata.begin() as conn:
        current = _read(conn, name)
        if current is None and mode != PRIMARY:
            raise NotFoundError(
                f"Endpoint '{name}' does not exist; deploy its primary model first (`loopml deploy {name} "
                f"--model {model_name}@ALIAS`)."
            )
        routes = {r.name: r for r in current.routes} if current else {}
        if mode == PRIMARY:
            routes = {k: r for k, r in routes.items() if r.mode == SHADOW or r.target != new.target}
        if weight == 0:
            routes.pop(route_name, None)
        else:
            routes[route_name] = new
        _check_weights(name, routes.values())
        if current is None:
            conn.execute(
                insert(endpoints).values(name=name, salt=name, settings={}, created_at=now, updated_at=now)
            )
        else:
            conn.execute(update(endpoints).where(endpoints.c.name == name).values(updated_at=now))
        _write_routes(conn, name, routes.values())
        action = "removed" if weight == 0 else f"→ {new.target} ({mode}, {weight:g}%)"
        metadata.record_event(
            conn,
            kind="endpoint.deployed",
            subject=f"endpoint:{name}",
            actor=actor,
            reason=reason or f"endpoint '{name}' route '{route_name}' {action}",
            data={"route": route_name, **asdict(new)},
        )
        metadata.bump_change_counter(conn)
    return get_endpoint(metadata, name)


def set_route(
    conn: Connection,
    metadata: MetadataStore,
    name: str,
    route: Route,
    *,
    actor: str = "loopml",
    reason: str = "",
) -> bool:
    """In the caller's transaction, make one non-primary route exactly `route` (weight 0 removes it), so a
    rollout's step and its route change commit together; False (and no event) when it already is."""
    return set_routes(conn, metadata, name, [route], actor=actor, reason=reason)


def set_routes(
    conn: Connection,
    metadata: MetadataStore,
    name: str,
    changes: Sequence[Route],
    *,
    actor: str = "loopml",
    reason: str = "",
) -> bool:
    """`set_route` for several routes at once: the weights are checked once, after every change (a bandit
    moving traffic from one arm to another never passes through more than 100%)."""
    current = _read(conn, name)
    if current is None:
        raise _not_found(name)
    if any(route.mode == PRIMARY for route in changes):
        raise ValidationError(
            "set_route changes canary, shadow and experiment routes; deploy sets the primary."
        )
    routes = {r.name: r for r in current.routes}
    before = dict(routes)
    for route in changes:
        if route.weight == 0:
            routes.pop(route.name, None)
        else:
            routes[route.name] = route
    if routes == before:
        return False
    _check_weights(name, routes.values())
    conn.execute(update(endpoints).where(endpoints.c.name == name).values(updated_at=metadata.clock.now()))
    _write_routes(conn, name, routes.values())
    described = ", ".join(
        f"'{r.name}' removed" if r.weight == 0 else f"'{r.name}' → {r.target} ({r.mode}, {r.weight:g}%)"
        for r in changes
    )
    metadata.record_event(
        conn,
        kind="endpoint.deployed",
        subject=f"endpoint:{name}",
        actor=actor,
        reason=reason or f"endpoint '{name}' routes: {described}",
        data={"routes": [asdict(route) for route in changes]},
    )
    metadata.bump_change_counter(conn)
    return True


def configure(metadata: MetadataStore, name: str, *, actor: str = "loopml", **changes: Any) -> Endpoint:
    """Change an endpoint's serving settings (cache age, batching, NaN policy); None resets one to default."""
    with metadata.begin() as conn:
        current = _read(conn, name)
        if current is None:
            raise _not_found(name)
        merged = {**asdict(current.settings), **changes}
        defaults = asdict(ServingSettings())
        settings = ServingSettings.from_dict({k: defaults[k] if v is None else v for k, v in merged.items()})
        stored = {k: v for k, v in asdict(settings).items() if v != defaults[k]}
        conn.execute(
            update(endpoints)
            .where(endpoints.c.name == name)
            .values(settings=stored, updated_at=metadata.clock.now())
        )
        metadata.record_event(
            conn,
            kind="endpoint.configured",
            subject=f"endpoint:{name}",
            actor=actor,
            reason=f"endpoint '{name}' settings: {stored or 'defaults'}",
            data=stored,
        )
        metadata.bump_change_counter(conn)
    return get_endpoint(metadata, name)


def undeploy(metadata: MetadataStore, name: str, *, actor: str = "loopml") -> None:
    """Delete an endpoint and its routes; servers stop serving it within a second."""
    with metadata.begin() as conn:
        if _read(conn, name) is None:
            raise _not_found(name)
        conn.execute(delete(endpoint_routes).where(endpoint_routes.c.endpoint == name))
        conn.execute(delete(endpoints).where(endpoints.c.name == name))
        metadata.record_event(
            conn, kind="endpoint.deleted", subject=f"endpoint:{name}", actor=actor, reason=f"'{name}' deleted"
        )
        metadata.bump_change_counter(conn)


def get_endpoint(metadata: MetadataStore, name: str) -> Endpoint:
    with metadata.begin() as conn:
        found = _read(conn, name)
    if found is None:
        raise _not_found(name)
    return found


def list_endpoints(metadata: MetadataStore) -> list[Endpoint]:
    with metadata.begin() as conn:
        rows = conn.execute(select(endpoints).order_by(endpoints.c.name)).all()
        routes = _routes(conn, None)
    return [_endpoint(row._mapping, routes.get(row.name, [])) for row in rows]


def route_versions(registry: ModelRegistry, endpoint: Endpoint) -> dict[str, ModelVersion]:
    """The version each route serves now; a route whose alias is unset is left out."""
    found = {}
    for route in endpoint.routes:
        number = route.version if route.alias is None else registry.get_alias(route.model_name, route.alias)
        if number is not None:
            found[route.name] = registry.get_version(route.model_name, number)
    return found


def served_views(metadata: MetadataStore, registry: ModelRegistry) -> dict[str, str]:
    """The feature views that each endpoint's current model versions read, with who reads them."""
    served: dict[str, str] = {}
    for endpoint in list_endpoints(metadata):
        for route_name, version in route_versions(registry, endpoint).items():
            for view in group_feature_refs(version.features):
                served.setdefault(
                    view, f"endpoint '{endpoint.name}' route '{route_name}' (model {version.ref})"
                )
    return served


def endpoint_users(
    metadata: MetadataStore, registry: ModelRegistry
) -> Callable[[str, int | None], list[str]]:
    """A registry usage check: the endpoint routes serving a model (any of it, or one version right now)."""

    def users(model_name: str, version: int | None) -> list[str]:
        found = []
        for endpoint in list_endpoints(metadata):
            for route in endpoint.routes:
                if route.model_name != model_name:
                    continue
                if (
                    version is None
                    or route.version == version
                    or (route.alias is not None and registry.get_alias(model_name, route.alias) == version)
                ):
                    found.append(f"endpoint '{endpoint.name}' route '{route.name}' ({route.target})")
        return found

    return users


def _check_route(mode: str, weight: float | None, route: str | None) -> tuple[str, float]:
    if mode not in MODES:
        raise ValidationError(f"Route mode {mode!r} is unknown; use one of {', '.join(MODES)}.")
    if mode == PRIMARY:
        if weight is not None or route not in (None, PRIMARY):
            raise ValidationError(
                "The primary route takes the traffic the others leave: give no weight or name."
            )
        return PRIMARY, 100.0
    if weight is None or not (isinstance(weight, int | float) and 0 <= weight <= 100):
        raise ValidationError(f"A {mode} route needs a weight between 0 and 100 (percent), got {weight!r}.")
    name = route or (mode if mode != EXPERIMENT else None)
    if name is None:
        raise ValidationError("An experiment arm needs a name (route='b', or --arm b).")
    if name == PRIMARY:
        raise ValidationError(f"'{PRIMARY}' names the primary route; name the {mode} route otherwise.")
    check_identifier("Route", name)
    return name, float(weight)


def _check_weights(endpoint: str, routes: Any) -> None:
    served = sum(r.weight for r in routes if r.mode in (CANARY, EXPERIMENT))
    if served > 100:
        raise ValidationError(
            f"Canary and experiment routes of '{endpoint}' would take {served:g}% of traffic; together they "
            "may take at most 100% (the primary gets the rest). Lower a weight or remove a route."
        )


def _read(conn: Connection, name: str) -> Endpoint | None:
    row = conn.execute(select(endpoints).where(endpoints.c.name == name)).first()
    if row is None:
        return None
    return _endpoint(row._mapping, _routes(conn, name).get(name, []))


def _routes(conn: Connection, endpoint: str | None) -> dict[str, list[Route]]:
    query = select(endpoint_routes).order_by(endpoint_routes.c.endpoint, endpoint_routes.c.name)
    if endpoint is not None:
        query = query.where(endpoint_routes.c.endpoint == endpoint)
    found: dict[str, list[Route]] = {}
    for row in conn.execute(query):
        values = dict(row._mapping)
        found.setdefault(values.pop("endpoint"), []).append(Route(**values))
    return found


def _endpoint(row: Mapping[str, Any], routes: list[Route]) -> Endpoint:
    return Endpoint(
        name=row["name"],
        salt=row["salt"],
        routes=tuple(routes),
        settings=ServingSettings.from_dict(row["settings"] or {}),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _write_routes(conn: Connection, name: str, routes: Any) -> None:
    conn.execute(delete(endpoint_routes).where(endpoint_routes.c.endpoint == name))
    rows = [{"endpoint": name, **asdict(route)} for route in routes]
    if rows:
        conn.execute(insert(endpoint_routes), rows)


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(
        f"No endpoint named '{name}'; create it with `loopml deploy {name} --model NAME@ALIAS`."
    )
