"""`loopml.Project`: reads loopml.yaml, wires the four stores and hands them to the domain packages."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from loopml.clock import Clock, SystemClock, as_utc
from loopml.config import load_config
from loopml.errors import ValidationError
from loopml.features import historical, online
from loopml.features import registry as feature_registry
from loopml.features.definitions import (
    Entity,
    FeatureService,
    FeatureView,
)
from loopml.features.frame_store import store_frames
from loopml.features.materialize import MaterializeProgress, materialize
from loopml.features.on_demand import FeaturePlan, OnDemandFeatureView, plan_features, transform_frame
from loopml.features.registry import AppliedChange
from loopml.registry.models import ModelRegistry, versions_from_runs
from loopml.schema import register_all_tables
from loopml.serving.endpoints import endpoint_users, served_views
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from loopml.storage.offline import OfflineStore
from loopml.storage.online import open_online_store
from loopml.training.pipeline import TrainedModel, TrainingSpec, train
from loopml.training.runner import PipelineRun, run_pipeline
from loopml.training.steps import Pipeline, layered_params
from loopml.training.tracking import Tracker

DEFINITIONS_POLL_SECONDS = 1.0  # how stale another process's apply may look to cached reads


class Project:
    """One loopml project: configuration, stores, and the verbs of the public API."""

    def __init__(
        self, path: str | Path = ".", *, clock: Clock | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.path = Path(path).resolve()
        self.clock: Clock = clock or SystemClock()
        self.config: dict[str, Any] = load_config(self.path, environ)
        register_all_tables()
        self.metadata = MetadataStore(self._sqlite_url(self.config["metadata"]["url"]), self.clock)
        self.metadata.migrate()
        self.artifacts = ArtifactStore(self._local(self.config["artifacts"]["url"]))
        offline = self.config["offline"]
        self.offline = OfflineStore(
            Path(self._local(offline["root"])),
            memory_limit=offline.get("duckdb_memory_limit"),
            temp_directory=Path(self._local(offline["duckdb_temp_directory"]))
            if offline.get("duckdb_temp_directory")
            else None,
        )
        self.online = open_online_store(
            self._sqlite_url(self.config["online"]["url"]),
            key_prefix=self.config["online"].get("key_prefix") or f"loopml:{self.config['project']}:",
        )
        self.registry = ModelRegistry(self.metadata, self.artifacts)
        self.registry.usage_checks.append(endpoint_users(self.metadata, self.registry))
        self._views: dict[str, FeatureView | OnDemandFeatureView] = {}
        self._plans: dict[tuple[str, ...], FeaturePlan] = {}
        self._views_seen = self._local_seen = -1
        self._checked_at = -math.inf

    # features
    def apply(
        self,
        objects: Iterable[Entity | FeatureView | OnDemandFeatureView | FeatureService],
        actor: str = "loopml",
        *,
        prune: bool = False,
    ) -> list[AppliedChange]:
        """Record entity, feature view, on-demand view and feature service definitions (like `feast apply`).

        With `prune`, `objects` are the whole desired state: stored definitions absent from them are deleted
        (their versions are kept); deleting a view that a deployed model reads is refused. A DataFrameSource's
        frame is stored in the offline store first, and the view records that file.
        """
        in_use = served_views(self.metadata, self.registry) if prune else None
        objects = store_frames(objects, self.offline, self.path)
        return feature_registry.apply(self.metadata, objects, actor, prune=prune, in_use=in_use)

    def plan(
        self,
        objects: Iterable[Entity | FeatureView | OnDemandFeatureView | FeatureService],
        *,
        prune: bool = False,
    ) -> list[AppliedChange]:
        """What `apply` would do to each definition, without writing anything."""
        in_use = served_views(self.metadata, self.registry) if prune else None
        objects = store_frames(objects, self.offline, self.path, write=False)
        return feature_registry.plan(self.metadata, objects, prune=prune, in_use=in_use)

    def get_historical_features(
        self,
        entity_df: pd.DataFrame | None,
        features: Sequence[str] | FeatureService,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        timestamp_field: str = "event_timestamp",
        full_feature_names: bool = False,
    ) -> pd.DataFrame:
        """Point-in-time correct features for each row of `entity_df` (a list of 'view:feature' or a service).

        Without an entity_df (None), the entity rows are every (join keys, event time) the requested views'
        sources hold with start <= event time <= end, and each gets the features as known at that time.
        On-demand features are computed from the retrieved ones and from `entity_df`'s request columns.
        """
        plan = self._plan(features)
        if entity_df is None:
            if start is None or end is None:
                raise ValidationError(
                    "Without an entity_df, pass start= and end= (the event-time range to read)."
                )
            entity_df = historical.entity_rows_in_range(
                plan.views,
                start=as_utc(start),
                end=as_utc(end),
                base_dir=self.path,
                timestamp_field=timestamp_field,
                connect=self.offline.connect,
            )
        elif start is not None or end is not None:
            raise ValidationError(
                "start= and end= select entity rows for an entity-less retrieval; with an entity_df, leave them out."
            )
        frame = historical.get_historical_features(
            entity_df,
            plan.views,
            base_dir=self.path,
            timestamp_field=timestamp_field,
            full_feature_names=full_feature_names,
            connect=self.offline.connect,
        )
        return transform_frame(plan, frame, full_feature_names=full_feature_names)

    def materialize(
        self,
        end: datetime | None = None,
        start: datetime | None = None,
        views: Sequence[str] | None = None,
        *,
        incremental: bool = False,
        lookback: timedelta = timedelta(0),
        progress: MaterializeProgress | None = None,
    ) -> dict[str, int]:
        """Load the latest values with event time in [start, end] into the online store; rows written per view.

        `end` defaults to now by the project clock. Without `start`, each view loads from `end - ttl`: older
        values would read as expired anyway. `incremental` continues each view from the end of its last
        successful run of the same definition version, less `lookback` (for rows that arrive late). Every
        view's run is recorded; `loopml features runs` lists them.
        """
        return materialize(
            self.metadata,
            self.online,
            base_dir=self.path,
            end=self.clock.now() if end is None else as_utc(end),
            start=None if start is None else as_utc(start),
            views=views,
            incremental=incremental,
            lookback=lookback,
            connect=self.offline.connect,
            progress=progress,
        )

    def push(self, view: str, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> int:
        """Write fresh rows (or, for an aggregation view, events) of `view` straight to the online store."""
        if isinstance(rows, pd.DataFrame):
            rows = rows.to_dict("records")
        return online.push(
            self.online, feature_registry.get_feature_view(self.metadata, view), rows, now=self.clock.now()
        )

    def get_online_features(
        self,
        entities: Mapping[str, Sequence[Any]],
        features: Sequence[str] | FeatureService,
        *,
        request_data: Mapping[str, Sequence[Any]] | None = None,
        full_feature_names: bool = False,
    ) -> online.OnlineFeatures:
        """Current feature values for entities, with a status (present, missing, expired, null) per value.

        `request_data` holds the request-time columns on-demand views read (one value per entity row).
        """
        plan = self._plan(features)
        found = online.read_online(
            self.online, plan.views, entities, now=self.clock.now(), full_feature_names=full_feature_names
        )
        return online.with_transforms(plan, found, request_data, full_feature_names=full_feature_names)

    def get_feature_service(self, name: str) -> FeatureService:
        return feature_registry.get_feature_service(self.metadata, name)

    # training
    def train(self, spec: TrainingSpec, entity_df: pd.DataFrame) -> TrainedModel:
        """Run the training pipeline and record the run; register the result with `project.registry`."""
        return train(
            spec,
            entity_df,
            metadata=self.metadata,
            offline=self.offline,
            get_features=lambda df, refs: self.get_historical_features(
                df, refs, timestamp_field=spec.timestamp_field
            ),
            code_dir=self.path,
            view_versions=self._view_versions(spec.features),
        )

    def tracker(self, **options: Any) -> Tracker:
        """A Tracker on this project's stores; deleting a run is refused while a model version came from it."""
        return Tracker(self.metadata, self.artifacts, usage_checks=[versions_from_runs], **options)

    def run_pipeline(
        self,
        pipeline: Pipeline,
        params: Mapping[str, Any] | None = None,
        *,
        resume: str | None = None,
        progress: bool = False,
    ) -> PipelineRun:
        """Run a step pipeline, skipping steps whose code, params and inputs match an earlier success.

        Parameters: `params` over the project's `pipelines.<name>.params` over the pipeline's own defaults;
        steps taking a `project` argument get this project. `resume` continues a failed run by its id, with
        that run's parameters.
        """
        if resume and params:
            raise ValidationError(
                f"Resuming run {resume} reuses its own parameters; drop {sorted(params)} or start a new run."
            )
        return run_pipeline(
            pipeline,
            metadata=self.metadata,
            artifacts=self.artifacts,
            code_dir=self.path,
            params=None if resume else {**layered_params(pipeline, self.config), **(params or {})},
            resume=resume,
            context={"project": self},
            progress=progress,
        )

    def close(self) -> None:
        self.online.close()
        self.metadata.dispose()

    def _view_versions(self, features: Sequence[str]) -> dict[str, int]:
        """The applied version of every view (on-demand ones included) that `features` read."""
        plan = self._plan(features)
        kinds = [("feature_view", view.name) for view, _ in plan.views]
        kinds += [("on_demand_feature_view", odfv.name) for odfv, _ in plan.transforms]
        return {
            name: feature_registry.definition_versions(self.metadata, kind, name)[-1].version
            for kind, name in kinds
        }

    def _plan(self, features: Sequence[str] | FeatureService) -> FeaturePlan:
        """Resolve feature references against the applied views; cached while the definitions stay the same."""
        if isinstance(features, FeatureService):
            features = features.features
        self._refresh_definitions()
        key = tuple(features)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_features(features, self._view)
        return plan

    def _refresh_definitions(self) -> None:
        """Forget cached views and plans when definitions changed: at once after a change made through this
        project, and within DEFINITIONS_POLL_SECONDS of one made by another process (one query per poll)."""
        now = time.monotonic()
        if (
            self.metadata.local_changes == self._local_seen
            and now < self._checked_at + DEFINITIONS_POLL_SECONDS
        ):
            return
        counter = self.metadata.change_counter()
        self._checked_at, self._local_seen = now, self.metadata.local_changes
        if counter != self._views_seen:
            self._views, self._plans, self._views_seen = {}, {}, counter

    def _view(self, name: str) -> FeatureView | OnDemandFeatureView:
        if name not in self._views:
            self._views[name] = feature_registry.get_view(self.metadata, name, self.path)
        return self._views[name]

    def _local(self, location: str) -> str:
        if "://" in location:
            return location
        path = Path(location)
        return str(path if path.is_absolute() else self.path / path)

    def _sqlite_url(self, url: str) -> str:
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
            return prefix + self._local(url[len(prefix) :])
        return url
