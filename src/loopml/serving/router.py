"""In-memory routing: endpoint → loaded model version, refreshed when the metadata change counter moves.

Serving never queries the metadata store per request. A refresh loads any newly routed version before it
swaps the table in one assignment, so a request in flight keeps the model it started with, and the version
routed before stays loaded for an instant rollback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loopml.features.definitions import FeatureView, parse_feature_ref
from loopml.features.registry import get_feature_view
from loopml.registry.models import ModelRegistry, ModelVersion
from loopml.serving.endpoints import list_endpoints
from loopml.storage.metadata import MetadataStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model version ready to predict, with the feature views it reads online."""

    version: ModelVersion
    estimator: Any
    feature_requests: tuple[tuple[FeatureView, tuple[str, ...]], ...]
    request_features: tuple[str, ...]


class Router:
    """Keeps the routing table and the loaded models of every endpoint."""

    def __init__(self, metadata: MetadataStore, registry: ModelRegistry) -> None:
        self.metadata = metadata
        self.registry = registry
        self.routes: dict[str, LoadedModel] = {}
        self.seen_counter = -1
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._lock = threading.Lock()

    def refresh(self, *, force: bool = False) -> bool:
        """Reload routes if the change counter moved; returns whether anything was reloaded."""
        counter = self.metadata.change_counter()
        if counter == self.seen_counter and not force:
            return False
        with self._lock:
            routes = {}
            for endpoint in list_endpoints(self.metadata):
                version_number = self.registry.get_alias(endpoint.model_name, endpoint.alias)
                if version_number is None:
                    logger.warning(
                        "Endpoint %s: %s@%s is unset; not serving it",
                        endpoint.name,
                        endpoint.model_name,
                        endpoint.alias,
                    )
                    continue
                routes[endpoint.name] = self._load(endpoint.model_name, version_number)
            previous = self.routes
            self.routes = routes
            self.seen_counter = counter
            keep = {(m.version.model_name, m.version.version) for m in [*routes.values(), *previous.values()]}
            self._loaded = {key: model for key, model in self._loaded.items() if key in keep}
        return True

    def _load(self, model_name: str, version_number: int) -> LoadedModel:
        key = (model_name, version_number)
        if key not in self._loaded:
            version = self.registry.get_version(model_name, version_number)
            fetched = {parse_feature_ref(ref)[1] for ref in version.features}
            self._loaded[key] = LoadedModel(
                version=version,
                estimator=self.registry.load(version),
                feature_requests=_feature_requests(self.metadata, version.features),
                request_features=tuple(name for name in version.inputs if name not in fetched),
            )
            logger.info("Loaded %s", version.ref)
        return self._loaded[key]


def _feature_requests(
    metadata: MetadataStore, refs: Sequence[str]
) -> tuple[tuple[FeatureView, tuple[str, ...]], ...]:
    grouped: dict[str, list[str]] = {}
    for ref in refs:
        view, feature = parse_feature_ref(ref)
        grouped.setdefault(view, []).append(feature)
    return tuple((get_feature_view(metadata, view), tuple(features)) for view, features in grouped.items())
