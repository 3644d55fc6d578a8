"""In-memory routing: endpoint → route table of loaded model versions, refreshed when the change counter moves.

Serving never queries the metadata store per request. A refresh loads every newly routed version before it
swaps the tables in one assignment, so a request in flight keeps the model it started with. The version an
alias or primary route held before stays loaded for an instant rollback; a version nothing routes to any more
is dropped and its memory given back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from loopml.errors import NotFoundError, NotReadyError
from loopml.features.definitions import FeatureService, FeatureView, group_feature_refs
from loopml.features.on_demand import FeaturePlan, OnDemandFeatureView, plan_features
from loopml.features.registry import get_view, list_definitions, list_feature_views
from loopml.registry.models import ModelRegistry, ModelVersion
from loopml.serving.endpoints import PRIMARY, Endpoint, Route, list_endpoints
from loopml.serving.routing import RoutedTo, RouteTable
from loopml.serving.scoring import Scorer
from loopml.serving.unloaded import UnloadedEndpoints
from loopml.storage.metadata import MetadataStore

logger = logging.getLogger(__name__)

Served = TypeVar("Served")
ModelKey = tuple[str, int]
MAX_CACHED_PLANS = 1024  # distinct feature lists asked for; past that the cache starts over
READY, UNAVAILABLE, UNLOADED = "READY", "UNAVAILABLE", "UNLOADED"


@dataclass(frozen=True)
class LoadedModel:
    """A model version ready to predict, with the feature views it reads online."""

    version: ModelVersion
    scorer: Scorer
    feature_plan: FeaturePlan
    fetched: tuple[str, ...]  # model inputs read from the online store
    request_features: tuple[str, ...]  # inputs sent with the request (the model's and on-demand views')

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(key for view, _ in self.feature_plan.views for key in view.join_keys))


@dataclass(frozen=True)
class ServedEndpoint:
    """An endpoint as this server serves it: its definition, its route table and its state.

    READY while every route has a model (one whose new version failed to load keeps its previous one, and
    `reason` says why); UNAVAILABLE while a route has none; UNLOADED after the repository API unloaded it.
    """

    endpoint: Endpoint
    table: RouteTable[LoadedModel]
    state: str
    reason: str = ""

    def models(self) -> list[LoadedModel]:
        return [routed.served for routed in self.table.routes if routed.served is not None]

    @property
    def versions(self) -> list[int]:
        """The version numbers its routes have loaded."""
        return sorted({model.version.version for model in self.models()})

    def require_loaded(self) -> None:
        """Refuse requests while the repository API has the endpoint unloaded."""
        if self.state == UNLOADED:
            name = self.endpoint.name
            raise NotReadyError(
                f"Endpoint '{name}' is unloaded in this server; load it with POST /v2/repository/models/{name}/load."
            )

    def no_model(self) -> NotReadyError:
        """The error for a request no loaded model can answer."""
        name = self.endpoint.name
        return NotReadyError(
            f"Endpoint '{name}' has no model loaded ({self.reason or 'its primary alias is unset'}); see "
            f"`loopml endpoints show {name}` and set the alias its primary route follows."
        )


class Router:
    """Keeps the route tables of every endpoint and the model versions they (or a rollback) need."""

    def __init__(
        self,
        metadata: MetadataStore,
        registry: ModelRegistry,
        search_path: Path | None = None,
        unloaded: UnloadedEndpoints | None = None,
        modes: frozenset[str] | None = None,
    ) -> None:
        self.metadata = metadata
        self.modes = modes  # the route modes whose models this router loads (None: all)
        self.registry = registry
        self.search_path = search_path  # where on-demand views' code is imported from
        self.endpoints: dict[str, ServedEndpoint] = {}
        self.feature_views: dict[str, FeatureView | OnDemandFeatureView] = {}
        self.feature_services: dict[str, FeatureService] = {}
        self._plans: dict[tuple[str, ...], FeaturePlan] = {}  # of these feature views
        self.seen_counter = -1
        self.unloaded = unloaded if unloaded is not None else UnloadedEndpoints()  # by the repository API
        self._models: dict[ModelKey, LoadedModel] = {}
        self._previous_primary: dict[str, ModelKey] = {}
        self._lock = threading.Lock()
        self._started = False

    @property
    def ready(self) -> bool:
        """Every endpoint's routes loaded once (a later deploy that fails to load is reported per endpoint,
        in its state, model readiness and the repository index, and does not take the server out of
        rotation)."""
        return self._started

    @property
    def loaded_versions(self) -> list[ModelKey]:
        return sorted(self._models)

    def refresh(self, *, force: bool = False) -> bool:
        """Reload routes if the change counter moved; returns whether anything was reloaded.

        A route whose version cannot be loaded keeps the version it had, if any (else the endpoint is
        UNAVAILABLE for that route and its traffic goes to the primary).
        """
        if not self.unloaded.changed() and self.metadata.change_counter() == self.seen_counter and not force:
            return False
        with self._lock:
            counter = self.metadata.change_counter()
            previous = self.endpoints
            views: dict[str, FeatureView | OnDemandFeatureView] = {
                view.name: view for view in list_feature_views(self.metadata)
            }
            views.update(self._on_demand_views())
            services = {
                d.name: FeatureService.from_spec(d.spec)
                for d in list_definitions(self.metadata, "feature_service")
            }
            served = {}
            deployed = list_endpoints(self.metadata)
            self.unloaded.keep_only(endpoint.name for endpoint in deployed)
            for endpoint in deployed:
                if endpoint.name in self.unloaded:
                    served[endpoint.name] = ServedEndpoint(
                        endpoint, RouteTable(endpoint.salt, []), UNLOADED, "unloaded through the API"
                    )
                    continue
                served[endpoint.name] = self._serve(endpoint, previous.get(endpoint.name))
            self.endpoints, self.feature_views, self.feature_services = served, views, services
            self._plans = {}
            self.seen_counter = counter
            self._started = self._started or all(s.state != UNAVAILABLE for s in served.values())
            self._release(self._needed(served))
        return True

    def load(self, name: str) -> ServedEndpoint:
        """Serve an endpoint again after `unload` (or reload it now); returns its state."""
        if name not in self.endpoints:
            self.refresh(force=True)  # deployed since the last tick?
        if name not in self.endpoints:
            raise NotFoundError(self._unknown(name))
        self.unloaded.discard(name)
        self.refresh(force=True)
        return self.endpoints[name]

    def unload(self, name: str) -> None:
        """Stop serving an endpoint in this server and free the models only it used."""
        if name not in self.endpoints:
            raise NotFoundError(self._unknown(name))
        self.unloaded.add(name)
        self.refresh(force=True)

    def served(self, name: str) -> ServedEndpoint:
        """An endpoint this server knows (in any state)."""
        found = self.endpoints.get(name)
        if found is None:
            raise NotFoundError(self._unknown(name))
        return found

    def feature_view(self, name: str) -> FeatureView | OnDemandFeatureView:
        """An applied feature view or on-demand view, as of the last refresh."""
        return _served(self.feature_views, name, "feature view", "applied views")

    def feature_service(self, name: str) -> FeatureService:
        """An applied feature service, as of the last refresh."""
        return _served(self.feature_services, name, "feature service", "applied services")

    def feature_plan(self, refs: Sequence[str]) -> FeaturePlan:
        """How to read `refs` from the current feature views, cached until they change."""
        plans = self._plans  # before the views: a refresh in between discards what is cached here
        key = tuple(refs)
        plan = plans.get(key)
        if plan is None:
            plan = plan_features(refs, self.feature_view)
            if len(plans) >= MAX_CACHED_PLANS:
                plans.clear()
            plans[key] = plan
        return plan

    def _serve(self, endpoint: Endpoint, before: ServedEndpoint | None) -> ServedEndpoint:
        """The endpoint's routes with their models loaded; a route that fails keeps its previous model."""
        kept = {r.route.name: r.served for r in before.table.routes} if before else {}
        routed, problems = [], []
        for route in endpoint.routes:
            if self.modes is not None and route.mode not in self.modes:
                routed.append(RoutedTo(route, None))
                continue
            try:
                model = self._model_for(route)
            except Exception as exc:  # a broken version must not take the other routes down with it
                logger.exception(
                    "Endpoint %s route %s (%s) could not be loaded", endpoint.name, route.name, route.target
                )
                problems.append(f"route '{route.name}' ({route.target}): {type(exc).__name__}: {exc}")
                model = kept.get(route.name)
            routed.append(RoutedTo(route, model))
        self._remember_primary(endpoint.name, before, routed)
        loaded = all(r.served is not None for r in routed if self.modes is None or r.route.mode in self.modes)
        state = READY if loaded else UNAVAILABLE
        return ServedEndpoint(endpoint, RouteTable(endpoint.salt, routed), state, "; ".join(problems))

    def _model_for(self, route: Route) -> LoadedModel | None:
        number = (
            route.version if route.alias is None else self.registry.get_alias(route.model_name, route.alias)
        )
        if number is None:
            raise NotFoundError(
                f"{route.target} is unset; set it (`loopml models alias {route.model_name} {route.alias} N`)."
            )
        return self._load((route.model_name, number))

    def _load(self, key: ModelKey) -> LoadedModel:
        loaded = self._models.get(key)
        version = self.registry.get_version(*key)
        plan = plan_features(version.features, lambda name: get_view(self.metadata, name, self.search_path))
        if loaded is None:
            model = self.registry.load(version)
            scorer = Scorer.build(
                version.ref, model, self.registry.model_file(version).signature, version.inputs
            )
            logger.info("Loaded %s", version.ref)
        else:
            scorer = loaded.scorer
        fetched, request = input_roles(version, plan.request_fields)
        loaded = LoadedModel(
            version=version, scorer=scorer, feature_plan=plan, fetched=fetched, request_features=request
        )
        self._models[key] = loaded
        return loaded

    def _remember_primary(
        self, name: str, before: ServedEndpoint | None, routed: list[RoutedTo[LoadedModel]]
    ) -> None:
        old = before.table.primary if before else None
        new = next((r for r in routed if r.route.mode == PRIMARY and r.served is not None), None)
        if old is not None and new is not None and _key(old.served) != _key(new.served):
            self._previous_primary[name] = _key(old.served)

    def _needed(self, served: Mapping[str, ServedEndpoint]) -> set[ModelKey]:
        """Versions routed now, the primary each endpoint had before, and each alias's previous holder."""
        needed = set()
        for name, endpoint in served.items():
            if endpoint.state == UNLOADED:
                continue
            needed.update(_key(model) for model in endpoint.models())
            if name in self._previous_primary:
                needed.add(self._previous_primary[name])
            for route in endpoint.endpoint.routes:
                if route.alias is not None and route.mode == PRIMARY and self.modes is None:
                    needed.update(self._previous_holder(route))
        return needed

    def _previous_holder(self, route: Route) -> set[ModelKey]:
        """The version the route's alias pointed at before its current one (loaded, so a rollback is instant)."""
        periods = self.registry.alias_history(route.model_name, route.alias)
        closed = [p for p in periods if p.valid_to is not None]
        if not closed:
            return set()
        key = (route.model_name, max(closed, key=lambda p: p.valid_to).version)
        if key not in self._models:
            try:
                self._load(key)
            except Exception:  # deleted or broken: nothing to roll back to
                logger.warning("Previous version %s/%d of %s cannot be kept loaded", *key, route.target)
                return set()
        return {key}

    def _release(self, needed: set[ModelKey]) -> None:
        """Drop the versions nothing needs and give their memory back to the operating system."""
        dropped = [key for key in self._models if key not in needed]
        if not dropped:
            return
        for key in dropped:
            del self._models[key]
            logger.info("Unloaded %s/%d", *key)
        self._previous_primary = {k: v for k, v in self._previous_primary.items() if v in needed}
        release_memory()

    def _on_demand_views(self) -> dict[str, OnDemandFeatureView]:
        """Applied on-demand views whose code loads; one that does not is left out, with the reason logged."""
        views = {}
        for stored in list_definitions(self.metadata, "on_demand_feature_view"):
            try:
                views[stored.name] = OnDemandFeatureView.from_spec(stored.spec, self.search_path)
            except Exception:
                logger.exception("On-demand view %s cannot be served", stored.name)
        return views

    def _unknown(self, name: str) -> str:
        return f"No endpoint named '{name}' is deployed; deployed: {sorted(self.endpoints) or 'none'}."


def input_roles(
    version: ModelVersion, request_fields: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A version's stored features (read from the online store) and the inputs sent with each request (its
    own and its on-demand views' `request_fields`); the server and batch scoring share the split."""
    stored = tuple(f for features in group_feature_refs(version.features).values() for f in features)
    request = tuple(
        dict.fromkeys([*(name for name in version.inputs if name not in stored), *request_fields])
    )
    return stored, request


def release_memory() -> None:
    """Collect what dropped models left (their cycles too, even in a frozen heap) and return freed pages.

    glibc keeps freed memory in its arenas; without `malloc_trim` an unloaded model's memory would stay
    with the process.
    """
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()
    _malloc_trim()


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return


def _key(model: Any) -> ModelKey:
    return (model.version.model_name, model.version.version)


def _served(table: Mapping[str, Served], name: str, what: str, listed: str) -> Served:
    found = table.get(name)
    if found is None:
        raise NotFoundError(f"No {what} named '{name}' is served; {listed}: {sorted(table) or 'none'}.")
    return found
