"""The model registry: versions are immutable, aliases move, and every move is an event."""

from __future__ import annotations

import io
import math
import platform
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import joblib
import sklearn
from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from loopml.errors import NotFoundError, StoreUnavailableError, ValidationError
from loopml.registry.tables import model_aliases, model_versions, registered_models
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from loopml.training.pipeline import TrainedModel, TrainingSpec

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")
REGISTER_ATTEMPTS = 20  # concurrent registrations of one model retry for the next version number


@dataclass(frozen=True)
class ModelVersion:
    model_name: str
    version: int
    run_id: str | None
    dataset_id: str | None
    artifact_digest: str
    flavor: str
    inputs: list[str]
    features: list[str]
    feature_service: str | None
    code_version: dict[str, Any]
    library_versions: dict[str, str]
    metrics: dict[str, float]
    model_file: dict[str, Any] | None
    gate: dict[str, Any] | None
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.model_name}/{self.version}"


class ModelRegistry:
    """Registers versions, moves aliases and loads models with their checksum verified."""

    def __init__(self, metadata: MetadataStore, artifacts: ArtifactStore) -> None:
        self.metadata = metadata
        self.artifacts = artifacts

    def register(self, trained: TrainedModel, *, actor: str = "loopml", reason: str = "") -> ModelVersion:
        """Store the estimator as an artifact and record a new immutable version with its lineage."""
        buffer = io.BytesIO()
        joblib.dump(trained.estimator, buffer)
        digest = self.artifacts.put(buffer.getvalue())
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            try:
                row = self._insert_version(trained, digest, actor, reason)
                break
            except (IntegrityError, StoreUnavailableError) as exc:
                # Another registration of this model took the next number (or, on SQLite, the write lock)
                # between our read and our write; the transaction rolled back, so take the next free number.
                if not _is_conflict(exc):
                    raise
                if attempt == REGISTER_ATTEMPTS:
                    raise StoreUnavailableError(
                        f"Registering a version of '{trained.spec.model_name}' lost the race for the next version "
                        f"number {REGISTER_ATTEMPTS} times to other registrations of it; register again once "
                        "they have finished."
                    ) from exc
                time.sleep(random.uniform(0, 0.05 * attempt))
        return ModelVersion(**row)

    def _insert_version(self, trained: TrainedModel, digest: str, actor: str, reason: str) -> dict[str, Any]:
        """One transaction: the model row if new, the next version number, the version and its event."""
        name = trained.spec.model_name
        now = self.metadata.clock.now()
        with self.metadata.begin() as conn:
            exists = conn.execute(
                select(registered_models.c.name).where(registered_models.c.name == name)
            ).first()
            if exists is None:
                conn.execute(
                    insert(registered_models).values(
                        name=name, description="", training_spec=trained.spec.spec(), created_at=now
                    )
                )
            else:
                conn.execute(
                    update(registered_models)
                    .where(registered_models.c.name == name)
                    .values(training_spec=trained.spec.spec())
                )
            version = (
                conn.execute(
                    select(func.max(model_versions.c.version)).where(model_versions.c.model_name == name)
                ).scalar()
                or 0
            ) + 1
            row = {
                "model_name": name,
                "version": version,
                "run_id": trained.run_id,
                "dataset_id": trained.snapshot.id,
                "artifact_digest": digest,
                "flavor": "sklearn",
                "inputs": trained.spec.inputs,
                "features": list(trained.spec.features),
                "feature_service": None,
                "model_file": None,
                "code_version": trained.code_version,
                "library_versions": {
                    "python": platform.python_version(),
                    "scikit-learn": sklearn.__version__,
                },
                "metrics": {k: v for k, v in trained.metrics.items() if not math.isnan(v)},
                "gate": None,
                "created_at": now,
            }
            conn.execute(insert(model_versions).values(**row))
            self.metadata.record_event(
                conn,
                kind="model.registered",
                subject=f"model:{name}/{version}",
                actor=actor,
                reason=reason or f"registered version {version} of '{name}' from run {trained.run_id}",
                data={"run_id": trained.run_id, "dataset_id": trained.snapshot.id, "metrics": row["metrics"]},
            )
        return row

    def get_version(self, name: str, version: int) -> ModelVersion:
        with self.metadata.begin() as conn:
            row = conn.execute(
                select(model_versions).where(
                    model_versions.c.model_name == name, model_versions.c.version == version
                )
            ).first()
        if row is None:
            raise NotFoundError(f"Model '{name}' has no version {version}; see `loopml models list`.")
        return ModelVersion(**row._mapping)

    def list_versions(self, name: str) -> list[ModelVersion]:
        with self.metadata.begin() as conn:
            rows = conn.execute(
                select(model_versions)
                .where(model_versions.c.model_name == name)
                .order_by(model_versions.c.version)
            ).all()
        return [ModelVersion(**row._mapping) for row in rows]

    def list_models(self) -> list[str]:
        with self.metadata.begin() as conn:
            return list(
                conn.execute(select(registered_models.c.name).order_by(registered_models.c.name)).scalars()
            )

    def training_spec(self, name: str) -> TrainingSpec:
        with self.metadata.begin() as conn:
            spec = conn.execute(
                select(registered_models.c.training_spec).where(registered_models.c.name == name)
            ).scalar()
        if spec is None:
            raise NotFoundError(f"No registered model named '{name}'; train and register it first.")
        return TrainingSpec.from_spec(spec)

    def aliases(self, name: str) -> dict[str, int]:
        with self.metadata.begin() as conn:
            rows = conn.execute(
                select(model_aliases.c.alias, model_aliases.c.version).where(
                    model_aliases.c.model_name == name
                )
            ).all()
        return dict(rows)

    def get_alias(self, name: str, alias: str) -> int | None:
        return self.aliases(name).get(alias)

    def resolve(self, ref: str) -> ModelVersion:
        """'name@alias' or 'name/version' to the version it points at now."""
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = self.get_alias(name, alias)
            if version is None:
                raise NotFoundError(f"Model '{name}' has no alias '{alias}'.")
            return self.get_version(name, version)
        name, sep, version_text = ref.partition("/")
        if not sep or not version_text.isdigit():
            raise ValidationError(f"Model reference {ref!r} must be 'name@alias' or 'name/version'.")
        return self.get_version(name, int(version_text))

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str = "loopml",
        reason: str,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Point `alias` at `version`, recording who, when, why and the numbers behind it."""
        if not _ALIAS.match(alias):
            raise ValidationError(
                f"Alias {alias!r} is invalid; use a letter then letters, digits, '_' or '-'."
            )
        self.get_version(name, version)
        with self.metadata.begin() as conn:
            previous = _alias_version(conn, name, alias)
            if previous == version:
                return
            now = self.metadata.clock.now()
            if previous is None:
                conn.execute(
                    insert(model_aliases).values(
                        model_name=name, alias=alias, version=version, updated_at=now
                    )
                )
            else:
                conn.execute(
                    update(model_aliases)
                    .where(model_aliases.c.model_name == name, model_aliases.c.alias == alias)
                    .values(version=version, updated_at=now)
                )
            self.metadata.record_event(
                conn,
                kind="alias.moved",
                subject=f"model:{name}@{alias}",
                actor=actor,
                reason=reason,
                data={"alias": alias, "from_version": previous, "to_version": version, **(evidence or {})},
            )
            self.metadata.bump_change_counter(conn)

    def remove_alias(self, name: str, alias: str, *, actor: str = "loopml", reason: str) -> None:
        with self.metadata.begin() as conn:
            previous = _alias_version(conn, name, alias)
            if previous is None:
                return
            conn.execute(
                delete(model_aliases).where(
                    model_aliases.c.model_name == name, model_aliases.c.alias == alias
                )
            )
            self.metadata.record_event(
                conn,
                kind="alias.removed",
                subject=f"model:{name}@{alias}",
                actor=actor,
                reason=reason,
                data={"alias": alias, "from_version": previous, "to_version": None},
            )
            self.metadata.bump_change_counter(conn)

    def alias_at(self, name: str, alias: str, moment: datetime) -> int | None:
        """Which version `alias` pointed at, at `moment`, read from the alias events."""
        moves = self.metadata.events(subject_prefix=f"model:{name}@{alias}", until=moment)
        moves = [e for e in moves if e.subject == f"model:{name}@{alias}"]
        return moves[-1].data["to_version"] if moves else None

    def record_gate(self, name: str, version: int, gate: dict[str, Any], *, actor: str = "loopml") -> None:
        with self.metadata.begin() as conn:
            conn.execute(
                update(model_versions)
                .where(model_versions.c.model_name == name, model_versions.c.version == version)
                .values(gate=gate)
            )
            self.metadata.record_event(
                conn,
                kind="gate.passed" if gate["passed"] else "gate.failed",
                subject=f"model:{name}/{version}",
                actor=actor,
                reason=gate["reason"],
                data=gate,
            )

    def load(self, version: ModelVersion) -> Any:
        """The estimator of a version, after its artifact's checksum was verified."""
        return joblib.load(io.BytesIO(self.artifacts.get(version.artifact_digest)))


def _alias_version(conn: Connection, name: str, alias: str) -> int | None:
    return conn.execute(
        select(model_aliases.c.version).where(
            model_aliases.c.model_name == name, model_aliases.c.alias == alias
        )
    ).scalar()


def _is_conflict(exc: Exception) -> bool:
    """A lost race for a version number or for SQLite's write lock, which a new transaction resolves."""
    if isinstance(exc, IntegrityError):
        return True
    return "locked" in str(exc)
