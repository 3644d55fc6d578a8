"""In-memory routing: endpoint → loaded model version, refreshed when the metadata change counter moves.

Serving never queries the metadata store per request. A refresh loads any newly routed version before it
swaps the table in one assignment, so a request in flight keeps the model it started with, and the version
routed before stays loaded for an instant rollback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from loopml.errors import NotFoundError
from loopml.features.definitions import FeatureService, FeatureView, group_feature_refs
from loopml.features.on_demand import FeaturePlan, OnDemandFeatureView, plan_features
from loopml.features.registry import get_view, list_definitions, list_feature_views
from loopml.registry.models import ModelRegistry, ModelVersion
from loopml.serving.endpoints import Endpoint, list_endpoints
from loopml.storage.metadata import MetadataStore

logger = logging.getLogger(__name__)

Served = TypeVar("Served")
MAX_CACHED_PLANS = 1024  # distinct feature lists asked for; past that the cache starts over


@dataclass(frozen=True)
class LoadedModel:
    """A model version ready to predict, with the feature views it reads online."""

    version: ModelVersion
    estimator: Any
    feature_plan: FeaturePlan
    request_features: tuple[str, ...]  # inputs sent with the request (the model's and on-demand views')


class Router:
    """Keeps the routing table and the loaded models of every endpoint."""

    def __init__(
        self, metadata: MetadataStore, registry: ModelRegistry, search_path: Path | None = None
    ) -> None:
        self.metadata = metadata
        self.registry = registry
        self.search_path = search_path  # where on-demand views' code is imported from
        self.routes: dict[str, LoadedModel] = {}
        self.feature_views: dict[str, FeatureView | OnDemandFeatureView] = {}
        self.feature_services: dict[str, FeatureService] = {}
        self._plans: dict[tuple[str, ...], FeaturePlan] = {}  # of these feature views
        self.seen_counter = -1
        self._estimators: dict[tuple[str, int], tuple[ModelVersion, Any]] = {}
        self._lock = threading.Lock()

    def refresh(self, *, force: bool = False) -> bool:
        """Reload routes if the change counter moved; returns whether anything was reloaded.

        An endpoint whose new version cannot be loaded keeps serving the version it had.
        """
        counter = self.metadata.change_counter()
        if counter == self.seen_counter and not force:
            return False
        with self._lock:
            routes = {}
            for endpoint in list_endpoints(self.metadata):
                try:
                    route = self._route(endpoint)
                except Exception:  # a broken version must not take the other endpoints down with it
                    logger.exception(
                        "Endpoint %s could not be reloaded; it keeps its current model", endpoint.name
                    )
                    route = self.routes.get(endpoint.name)
                if route is not None:
                    routes[endpoint.name] = route
            previous = self.routes
            self.routes = routes
            self.feature_views = {view.name: view for view in list_feature_views(self.metadata)}
            self.feature_views.update(self._on_demand_views())
            self.feature_services = {
                d.name: FeatureService.from_spec(d.spec)
                for d in list_definitions(self.metadata, "feature_service")
            }
            self._plans = {}
            self.seen_counter = counter
            keep = {(m.version.model_name, m.version.version) for m in [*routes.values(), *previous.values()]}
            self._estimators = {key: value for key, value in self._estimators.items() if key in keep}
        return True

    def model(self, endpoint: str) -> LoadedModel:
        """The model an endpoint serves now."""
        return _served(self.routes, endpoint, "endpoint", "deployed")

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

    def _route(self, endpoint: Endpoint) -> LoadedModel | None:
        version_number = self.registry.get_alias(endpoint.model_name, endpoint.alias)
        if version_number is None:
            logger.warning(
                "Endpoint %s: %s@%s is unset; not serving it",
                endpoint.name,
                endpoint.model_name,
                endpoint.alias,
            )
            return None
        key = (endpoint.model_name, version_number)
        if key not in self._estimators:
            version = self.registry.get_version(*key)
            self._estimators[key] = (version, self.registry.load(version))
            logger.info("Loaded %s", version.ref)
        version, estimator = self._estimators[key]
        grouped = group_feature_refs(version.features)
        fetched = {feature for features in grouped.values() for feature in features}
        plan = plan_features(version.features, lambda name: get_view(self.metadata, name, self.search_path))
        model_inputs = [name for name in version.inputs if name not in fetched]
        return LoadedModel(
            version=version,
            estimator=estimator,
            feature_plan=plan,
            request_features=tuple(dict.fromkeys([*model_inputs, *plan.request_fields])),
        )

    def _on_demand_views(self) -> dict[str, OnDemandFeatureView]:
        """Applied on-demand views whose code loads; one that does not is left out, with the reason logged."""
        views = {}
        for stored in list_definitions(self.metadata, "on_demand_feature_view"):
            try:
                views[stored.name] = OnDemandFeatureView.from_spec(stored.spec, self.search_path)
            except Exception:
                logger.exception("On-demand view %s cannot be served", stored.name)
        return views


def _served(table: Mapping[str, Served], name: str, what: str, listed: str) -> Served:
    found = table.get(name)
    if found is None:
        raise NotFoundError(f"No {what} named '{name}' is served; {listed}: {sorted(table) or 'none'}.")
    return found
