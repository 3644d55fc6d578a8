"""One prediction path behind every protocol: route, cache, fetch features, check, score, log, mirror.

The loopml JSON, Open Inference Protocol and MLflow routes turn their payloads into request columns and format
what `PredictionService.predict` returns; everything else (which version answers, where features come from,
what is logged) happens here once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError, NotFoundError, ValidationError, listed
from loopml.features.lookup_log import FEATURE_LOOKUPS, LoggedLookup
from loopml.features.online import PRESENT, OnlineFeatures, read_online_async, with_transforms
from loopml.serving import prediction_cache
from loopml.serving.batching import AdaptiveBatcher
from loopml.serving.bodies import json_bytes
from loopml.serving.metrics import Metrics
from loopml.serving.prediction_log import ERRORS, PREDICTIONS, BatchWriter
from loopml.serving.router import LoadedModel, Router, ServedEndpoint
from loopml.serving.routing import RoutedTo
from loopml.serving.scoring import nullable_inputs
from loopml.serving.shadow_process import Mirrored, ShadowProcess

if TYPE_CHECKING:
    from loopml.project import Project

logger = logging.getLogger(__name__)
SCORES, PREDICT, PROBA = "scores", "predict", "predict_proba"
Columns = dict[str, list[Any]]


@dataclass
class Scored:
    """What answered a request: the route and model, one output per row, and the ids they were logged under."""

    endpoint: str
    route: str
    model: LoadedModel
    outputs: dict[str, np.ndarray]
    prediction_ids: list[str]
    statuses: dict[str, list[str]] = field(default_factory=dict)
    cached: bool = False

    @property
    def version(self) -> int:
        return self.model.version.version


@dataclass(frozen=True)
class Prepared:
    """A request's model inputs, ready to score."""

    frame: pd.DataFrame
    columns: Columns
    fetched: OnlineFeatures | None


class PredictionService:
    """Answers prediction requests for every endpoint the router serves."""

    def __init__(
        self,
        project: Project,
        router: Router,
        metrics: Metrics,
        writers: Mapping[str, BatchWriter],
        shadows: ShadowProcess | None = None,
    ) -> None:
        """`shadows` scores the requests mirrored to shadow routes (the shadow process itself has none)."""
        self.project = project
        self.router = router
        self.metrics = metrics
        self.writers = writers
        self.log_predictions = bool(project.config["serving"].get("log_predictions", True))
        self._batchers: dict[tuple[Any, ...], AdaptiveBatcher] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self.idle = threading.Event()  # set while no request is in flight: the log writers work then
        self.idle.set()
        self.shadows = shadows

    async def predict(
        self,
        name: str,
        columns: Columns,
        rows: int,
        *,
        unit_id: str | None = None,
        methods: tuple[str, ...] = (SCORES,),
        version: int | None = None,
    ) -> tuple[Scored, Callable[[], Awaitable[None]] | None]:
        """Score `rows` rows for endpoint `name`; returns the answer and the shadow work to run after it.

        `version` pins one of the versions the endpoint has loaded (the Open Inference Protocol's
        `/versions/V`); otherwise the unit's route answers.
        """
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        self._in_flight += 1
        self.idle.clear()
        label = ""
        routed: RoutedTo[LoadedModel] | None = None
        try:
            served = self._serving(name)
            routed = self._pick(served, unit_id, version)
            label = str(routed.served.version.version)
            now = self.project.clock.now()
            scored = await self._score(served, routed, columns, rows, methods, unit_id, started, now)
            shadows = served.table.shadows(unit_id) if version is None and self.shadows else []
            mirror = self._mirror(served, shadows, columns, scored, unit_id, now) if shadows else None
        except Exception as exc:
            known = name if name in self.router.endpoints else "unknown"  # no series per made-up name
            self.metrics.requests.labels(known, label, str(status_of(exc))).inc()
            if routed is not None:
                self._log_error(name, routed, exc, served=True)
            raise
        finally:
            self.metrics.in_flight.dec()
            self._in_flight -= 1
            if not self._in_flight:
                self.idle.set()
        self.metrics.requests.labels(name, label, "200").inc()
        self.metrics.duration.labels(name, label).observe(time.perf_counter() - started)
        return scored, mirror

    async def flush_shadows(self) -> None:
        """Wait until every request mirrored so far is scored and logged by the shadow process."""
        if self.shadows is not None:
            await asyncio.to_thread(self.shadows.flush)

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()

    def _serving(self, name: str) -> ServedEndpoint:
        served = self.router.served(name)
        served.require_loaded()
        return served

    def _pick(
        self, served: ServedEndpoint, unit_id: str | None, version: int | None
    ) -> RoutedTo[LoadedModel]:
        name = served.endpoint.name
        if version is not None:
            for routed in served.table.routes:
                if routed.served is not None and routed.served.version.version == version:
                    return routed
            raise NotFoundError(
                f"Endpoint '{name}' has no version {version} loaded; loaded versions: {served.versions}."
            )
        routed = served.table.choose(unit_id)
        if routed is None or routed.served is None:
            raise served.no_model()
        return routed

    async def _score(
        self,
        served: ServedEndpoint,
        routed: RoutedTo[LoadedModel],
        columns: Columns,
        rows: int,
        methods: tuple[str, ...],
        unit_id: str | None,
        started: float,
        now: datetime,
        *,
        returned: bool = True,
        mirrors: tuple[str, ...] = (),
    ) -> Scored:
        model = routed.served
        assert model is not None
        name = served.endpoint.name
        cached = await self._cached(served, model, columns, rows, methods, now) if returned else None
        if cached is not None:
            outputs, prepared = {SCORES: cached}, None
        else:
            prepared = await self._prepare(model, columns, rows, now, served.endpoint.settings.nan_policy)
            outputs = {m: await self._run(served, model, m, prepared.frame) for m in methods}
            if SCORES not in outputs and self.log_predictions:  # the log holds scores, whoever asked
                derived = _scores_from(model, outputs)
                outputs[SCORES] = (
                    derived if derived is not None else await self._run(served, model, SCORES, prepared.frame)
                )
        ids = [uuid.uuid4().hex for _ in range(rows)]
        scored = Scored(
            name,
            routed.route.name,
            model,
            outputs,
            ids,
            statuses=prepared.fetched.statuses if prepared and prepared.fetched else {},
            cached=cached is not None,
        )
        if self.log_predictions:
            inputs = columns if prepared is None else prepared.columns
            entities = {k: columns[k] for k in model.join_keys if k in columns}
            self._log(scored, inputs, entities, unit_id, now, started, returned, mirrors)
            if prepared is not None and prepared.fetched is not None:
                plan = model.feature_plan
                self.writers[FEATURE_LOOKUPS].put(
                    LoggedLookup(ids[0], f"endpoint:{name}", now, plan.views, prepared.fetched)
                )
        return scored

    async def _cached(
        self,
        served: ServedEndpoint,
        model: LoadedModel,
        columns: Columns,
        rows: int,
        methods: tuple[str, ...],
        now: Any,
    ) -> np.ndarray | None:
        """Cached scores when the endpoint uses the cache, the request is only entity keys and all are fresh."""
        max_age = served.endpoint.settings.cache_max_age_seconds
        keys = model.join_keys
        if max_age is None or methods != (SCORES,) or not keys or set(columns) != set(keys):
            return None
        outputs, results = await prediction_cache.read_cached(
            self.project.online,
            model.version,
            [tuple(columns[k][i] for k in keys) for i in range(rows)],
            now=now,
            max_age_seconds=max_age,
        )
        for result in results:
            self.metrics.cache.labels(served.endpoint.name, result).inc()
        if any(output is None for output in outputs):
            return None
        return np.asarray(outputs, dtype=float)

    async def _prepare(
        self, model: LoadedModel, columns: Columns, rows: int, now: Any, policy: str
    ) -> Prepared:
        """The model's input frame: the request's values, with the feature views' values fetched when the
        request does not carry them."""
        given = [f for f in model.fetched if f in columns]
        fetched = None
        inputs: Columns = {}
        if given and len(given) < len(model.fetched):
            missing = [f for f in model.fetched if f not in columns]
            raise ValidationError(
                f"The request carries features {given} but not {missing}; send all of the model's stored features "
                f"or none (they are then read from the online store by {list(model.join_keys)})."
            )
        if model.fetched and not given:
            fetched = await self._fetch(model, columns, now)
            inputs.update(fetched.values)
        allowed = {
            *model.scorer.input_names,
            *(model.join_keys if fetched else ()),
            *model.feature_plan.request_fields,
        }
        unknown = [name for name in columns if name not in allowed]
        if unknown:
            raise ValidationError(
                f"Unknown input(s) {listed(unknown)}: model {model.version.ref} takes {model.scorer.input_names}"
                + (f" and the entity keys {list(model.join_keys)}" if model.fetched else "")
                + "; remove them."
            )
        inputs.update({k: v for k, v in columns.items() if k in model.scorer.names})
        model_columns = {name: inputs[name] for name in model.scorer.input_names if name in inputs}
        try:
            nullable = nullable_inputs(policy, model.scorer.names, frozenset(model.fetched))
            frame = model.scorer.frame(model_columns, rows, nullable=nullable)
        except ValidationError as exc:
            raise ValidationError(f"{exc}{_absent_hint(fetched)}") from None
        return Prepared(frame, model_columns, fetched)

    async def _fetch(self, model: LoadedModel, columns: Columns, now: Any) -> OnlineFeatures:
        missing = [k for k in model.join_keys if k not in columns]
        if missing:
            raise ValidationError(
                f"Model {model.version.ref} reads {list(model.fetched)} from the online store by "
                f"{list(model.join_keys)}; the request lacks {missing}. Send the entity keys, or every feature."
            )
        plan = model.feature_plan
        entities = {k: columns[k] for k in model.join_keys}
        for key, values in entities.items():
            bad = next((v for v in values if not isinstance(v, int | str) or isinstance(v, bool)), None)
            if bad is not None:
                raise ValidationError(f"Entity key '{key}' must be an integer or a string, got {bad!r}.")
        raw = await read_online_async(self.project.online, plan.views, entities, now=now)
        return with_transforms(plan, raw, {f: columns[f] for f in plan.request_fields if f in columns})

    async def _run(
        self, served: ServedEndpoint, model: LoadedModel, method: str, frame: pd.DataFrame
    ) -> np.ndarray:
        settings = served.endpoint.settings
        if settings.max_batch_size <= 0:
            return _call(model, method, frame)
        key = (
            served.endpoint.name,
            model.version.model_name,
            model.version.version,
            method,
            settings.batch_settings,
        )
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = AdaptiveBatcher(
                lambda batch: _call(model, method, batch),
                max_batch_size=settings.max_batch_size,
                max_wait_seconds=settings.max_batch_wait_ms / 1000,
                timeout_seconds=settings.batch_timeout_ms / 1000,
                on_batch=self.metrics.batch_size.labels(served.endpoint.name).observe,
                name=served.endpoint.name,
            )
            self._batchers[key] = batcher
        return await batcher.submit(frame)

    def prune_batchers(self) -> None:
        """Retire the batchers of versions or settings no longer served (each holds its model in memory).

        A retired batcher still scores what it has queued: it closes after its wait budget has passed.
        """
        live = {
            (name, m.version.model_name, m.version.version, s.batch_settings)
            for name, served in self.router.endpoints.items()
            for s in [served.endpoint.settings]
            for m in served.models()
        }
        for key in list(self._batchers):
            endpoint, model_name, version, _, settings = key
            if (endpoint, model_name, version, settings) not in live:
                batcher = self._batchers.pop(key)
                task = asyncio.create_task(_retire(batcher, settings[2] / 1000 + 1.0))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    def _mirror(
        self,
        served: ServedEndpoint,
        shadows: list[RoutedTo[LoadedModel]],
        columns: Columns,
        scored: Scored,
        unit_id: str | None,
        now: datetime,
    ) -> Callable[[], Awaitable[None]]:
        """Work to run after the answer is sent: hand the request to the shadow process for each shadow route
        (its queue full: dropped and counted), with the answer's prediction ids so the two can be paired."""
        assert self.shadows is not None
        shadow_process = self.shadows
        name = served.endpoint.name
        rows, answered = len(scored.prediction_ids), tuple(scored.prediction_ids)

        async def run() -> None:
            for routed in shadows:
                assert routed.served is not None
                version = routed.served.version
                mirrored = Mirrored(
                    name,
                    routed.route.name,
                    version.model_name,
                    version.version,
                    columns,
                    rows,
                    unit_id,
                    now,
                    answered,
                )
                if shadow_process.submit(mirrored):
                    self.metrics.shadow.labels(name, str(version.version)).inc(rows)
                else:
                    self.metrics.shadow_dropped.labels(name).inc(rows)

        return run

    async def score_shadow(
        self, served: ServedEndpoint, routed: RoutedTo[LoadedModel], request: Mirrored
    ) -> None:
        """Score a mirrored request with a shadow route as of its time and log it; logs failures, never raises."""
        name = served.endpoint.name
        try:
            await self._score(
                served,
                routed,
                request.columns,
                request.rows,
                (SCORES,),
                request.unit_id,
                time.perf_counter(),
                request.at,
                returned=False,
                mirrors=request.prediction_ids,
            )
        except LoopmlError as exc:
            logger.info("Shadow route %s of %s refused the request: %s", routed.route.name, name, exc)
            self._log_error(name, routed, exc, served=False)
        except Exception as exc:
            logger.exception("Shadow route %s of %s failed", routed.route.name, name)
            self._log_error(name, routed, exc, served=False)

    def _log_error(
        self, endpoint: str, routed: RoutedTo[LoadedModel], exc: BaseException, *, served: bool
    ) -> None:
        """Record a failure of a chosen version (canary analysis compares error rates per version)."""
        writer = self.writers.get(ERRORS)
        if writer is None or routed.served is None:
            return
        version = routed.served.version
        writer.put(
            {
                "ts": self.project.clock.now(),
                "endpoint": endpoint,
                "model_name": version.model_name,
                "model_version": version.version,
                "route": routed.route.name,
                "served": served,
                "status": status_of(exc),
                "error": f"{type(exc).__name__}: {exc}"[:1000],
            }
        )

    def _log(
        self,
        scored: Scored,
        inputs: Columns,
        entities: Columns,
        unit_id: str | None,
        now: Any,
        started: float,
        returned: bool,
        mirrors: tuple[str, ...] = (),
    ) -> None:
        latency = time.perf_counter() - started
        model = scored.model
        logged = scored.outputs.get(SCORES)
        writer = self.writers[PREDICTIONS]
        names = list(inputs)
        for i, prediction_id in enumerate(scored.prediction_ids):
            writer.put(
                {
                    "prediction_id": prediction_id,
                    "ts": now,
                    "endpoint": scored.endpoint,
                    "model_name": model.version.model_name,
                    "model_version": model.version.version,
                    "route": scored.route,
                    "served": returned,
                    "unit_id": unit_id,
                    "entities": json_bytes({k: v[i] for k, v in entities.items()}).decode(),
                    "inputs": json_bytes({k: inputs[k][i] for k in names}).decode(),
                    "output": _loggable(logged[i]) if logged is not None else None,
                    "latency_seconds": latency,
                    "mirrors": mirrors[i] if mirrors else None,
                }
            )


async def _retire(batcher: AdaptiveBatcher, after: float) -> None:
    await asyncio.sleep(after)
    await batcher.close()


def _call(model: LoadedModel, method: str, frame: pd.DataFrame) -> np.ndarray:
    """Run the model; what it cannot score (a value it was never trained on) is the request's fault."""
    scorer = model.scorer
    try:
        if method == SCORES:
            return scorer.scores(frame)
        if method == PREDICT:
            return scorer.predict(frame)
        proba = scorer.predict_proba(frame)
        if proba is None:
            raise ValidationError(
                f"Model {model.version.ref} is not a classifier: it has no predict_proba output."
            )
        return proba
    except (ValueError, TypeError, KeyError) as exc:
        raise ValidationError(f"Model {model.version.ref} could not score these inputs: {exc}") from exc


def _scores_from(model: LoadedModel, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """Scores from outputs already computed: a binary classifier's probabilities, a regressor's predictions."""
    proba = outputs.get(PROBA)
    if proba is not None and proba.ndim == 2 and proba.shape[1] == 2:
        return proba[:, 1]
    if not model.scorer.is_classifier and PREDICT in outputs:
        return np.asarray(outputs[PREDICT], dtype=float)
    return None


def _loggable(value: Any) -> float | None:
    """A row's score as the log's float; None for a multi-class probability vector."""
    if isinstance(value, np.ndarray | str | bytes):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _absent_hint(fetched: OnlineFeatures | None) -> str:
    if fetched is None:
        return ""
    absent = {
        name: sorted(set(statuses) - {PRESENT})
        for name, statuses in fetched.statuses.items()
        if set(statuses) - {PRESENT}
    }
    if not absent:
        return ""
    return f" Stored features without a value: {absent} for {fetched.entities}; run `loopml materialize` or push them."


def status_of(exc: BaseException) -> int:
    """The HTTP status an error answers with."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, LoopmlError):
        return 503
    return 500
