"""The model registry: versions are immutable, aliases move, and every move is an event.

A version is a set of files (its model file `loopml-model.yaml` and the flavors' files), each stored in the
ArtifactStore under its sha256 and listed in the version's manifest; loading verifies every checksum.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from loopml.data.profiles import REFERENCE_FILE, ReferenceProfile
from loopml.errors import NotFoundError, StoreUnavailableError, ValidationError
from loopml.registry import aliases
from loopml.registry.aliases import AliasPeriod
from loopml.registry.flavors import load_model
from loopml.registry.model_file import MODEL_FILE_NAME, ModelFile
from loopml.registry.packaging import package
from loopml.registry.tables import (
    alias_history,
    model_aliases,
    model_version_tags,
    model_versions,
    registered_model_tags,
    registered_models,
)
from loopml.storage.artifact_refs import StoredFile, add_refs, delete_unreferenced, refs_of, release
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from loopml.training.keys import check_key
from loopml.training.pipeline import TrainedModel, TrainingSpec

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
REGISTER_ATTEMPTS = 20  # concurrent registrations of one model retry for the next version number

# Who else uses a model version (an endpoint, a rollout): (model name, version or None for any) -> users.
UsageCheck = Callable[[str, int | None], list[str]]


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

    @property
    def owner(self) -> str:
        """The version's name in the artifact manifests."""
        return f"model:{self.model_name}/{self.version}"


@dataclass(frozen=True)
class VersionRecord:
    """What the registry records beside a version's files: lineage, metrics and the training recipe."""

    run_id: str | None = None
    dataset_id: str | None = None
    code_version: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    training_spec: dict[str, Any] | None = None


class ModelRegistry:
    """Registers versions, moves aliases, deletes without orphans and loads models with checksums verified."""

    def __init__(
        self, metadata: MetadataStore, artifacts: ArtifactStore, usage_checks: list[UsageCheck] | None = None
    ) -> None:
        self.metadata = metadata
        self.artifacts = artifacts
        self.usage_checks = usage_checks if usage_checks is not None else []

    # registration
    def register_files(
        self,
        model_file: ModelFile,
        files: Mapping[str, bytes],
        record: VersionRecord | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        actor: str = "loopml",
        reason: str = "",
    ) -> ModelVersion:
        """Store a model's files (the model file is written here) and record a new immutable version."""
        record = record or VersionRecord()
        check_model_name(model_file.model_name)
        for key, value in (tags or {}).items():
            _check_tag(key, value)
        if MODEL_FILE_NAME in files:
            raise ValidationError(
                f"Pass the model file as `model_file`, not as a file named {MODEL_FILE_NAME}."
            )
        every_file = {**files, MODEL_FILE_NAME: model_file.to_yaml()}
        stored = {path: StoredFile(self.artifacts.put(data), len(data)) for path, data in every_file.items()}
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            try:
                row = self._insert_version(model_file, stored, record, tags or {}, actor, reason)
                break
            except (IntegrityError, StoreUnavailableError) as exc:
                # Another registration of this model took the next number (or, on SQLite, the write lock)
                # between our read and our write; the transaction rolled back, so take the next free number.
                if not _is_conflict(exc):
                    raise
                if attempt == REGISTER_ATTEMPTS:
                    raise StoreUnavailableError(
                        f"Registering a version of '{model_file.model_name}' lost the race for the next version "
                        f"number {REGISTER_ATTEMPTS} times to other registrations of it; register again once "
                        "they have finished."
                    ) from exc
                time.sleep(random.uniform(0, 0.05 * attempt))
        return ModelVersion(**row)

    def _insert_version(
        self,
        model_file: ModelFile,
        stored: dict[str, StoredFile],
        record: VersionRecord,
        tags: Mapping[str, str],
        actor: str,
        reason: str,
    ) -> dict[str, Any]:
        """One transaction: the model row if new, the next version number, the version, its files and event."""
        name = model_file.model_name
        now = self.metadata.clock.now()
        with self.metadata.begin() as conn:
            exists = conn.execute(
                select(registered_models.c.name).where(registered_models.c.name == name)
            ).first()
            if exists is None:
                conn.execute(
                    insert(registered_models).values(
                        name=name, description="", training_spec=record.training_spec or {}, created_at=now
                    )
                )
            elif record.training_spec is not None:
                conn.execute(
                    update(registered_models)
                    .where(registered_models.c.name == name)
                    .values(training_spec=record.training_spec)
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
                "run_id": record.run_id,
                "dataset_id": record.dataset_id,
                "artifact_digest": stored[MODEL_FILE_NAME].digest,
                "flavor": model_file.flavor,
                "inputs": [column.name for column in model_file.signature.inputs],
                "features": list(model_file.features),
                "feature_service": model_file.feature_service,
                "code_version": record.code_version or {},
                "library_versions": _library_versions(model_file),
                "metrics": record.metrics or {},
                "model_file": model_file.to_dict(),
                "gate": None,
                "created_at": now,
            }
            conn.execute(insert(model_versions).values(**row))
            add_refs(conn, f"model:{name}/{version}", stored, now)
            if tags:
                conn.execute(
                    insert(model_version_tags),
                    [{"model_name": name, "version": version, "key": k, "value": v} for k, v in tags.items()],
                )
            self.metadata.record_event(
                conn,
                kind="model.registered",
                subject=f"model:{name}/{version}",
                actor=actor,
                reason=reason or f"registered version {version} of '{name}'",
                data={"run_id": record.run_id, "dataset_id": record.dataset_id, "metrics": row["metrics"]},
            )
        return row

    def register(
        self,
        trained: TrainedModel,
        *,
        feature_service: str | None = None,
        promotion_policy: dict[str, Any] | None = None,
        onnx: bool = False,
        tags: Mapping[str, str] | None = None,
        actor: str = "loopml",
        reason: str = "",
    ) -> ModelVersion:
        """Register a trained model with its lineage; `onnx` also stores a checked ONNX copy."""
        model_file, files = package(
            trained, feature_service=feature_service, promotion_policy=promotion_policy, onnx=onnx
        )
        record = VersionRecord(
            run_id=trained.run_id,
            dataset_id=trained.snapshot.id,
            code_version=trained.code_version,
            metrics={k: v for k, v in trained.metrics.items() if not math.isnan(v)},
            training_spec=trained.spec.spec(),
        )
        return self.register_files(
            model_file,
            files,
            record,
            tags=tags,
            actor=actor,
            reason=reason or f"registered from run {trained.run_id}",
        )

    # reading
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
        if not spec:
            raise NotFoundError(
                f"Model '{name}' was registered without a training spec (imported?); it cannot be retrained."
            )
        return TrainingSpec.from_spec(spec)

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

    def files(self, version: ModelVersion) -> dict[str, StoredFile]:
        """The version's manifest: file path -> stored file."""
        with self.metadata.begin() as conn:
            return refs_of(conn, version.owner)

    def read_files(self, version: ModelVersion) -> dict[str, bytes]:
        """Every file of a version, each verified against its checksum."""
        return {path: self.artifacts.get(f.digest) for path, f in self.files(version).items()}

    def reference_profile(self, version: ModelVersion) -> ReferenceProfile | None:
        """The profile of the version's training inputs and held-out scores, stored when it was registered
        (None for a version registered without one: imported, or older than profiles)."""
        stored = self.files(version).get(REFERENCE_FILE)
        return ReferenceProfile.from_json(self.artifacts.get(stored.digest)) if stored else None

    def model_file(self, version: ModelVersion) -> ModelFile:
        """The version's model file, validated."""
        if version.model_file is None:
            raise ValidationError(
                f"Model {version.ref} has no model file in the metadata store: its schema predates migration "
                "0004. Open the project once with this loopml version (any `loopml` command) to upgrade it."
            )
        return ModelFile.from_dict(version.model_file, source=f"{MODEL_FILE_NAME} of {version.ref}")

    def load(self, version: ModelVersion, *, flavor: str | None = None) -> Any:
        """The model of a version, after every file's checksum was verified and its model file validated."""
        return load_model(self.read_files(version), self.model_file(version), prefer=flavor)

    # aliases
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
        aliases.check_alias(alias)
        self.get_version(name, version)
        with self.metadata.begin() as conn:
            aliases.move_alias(
                self.metadata, conn, name, alias, version, actor=actor, reason=reason, evidence=evidence
            )

    def remove_alias(self, name: str, alias: str, *, actor: str = "loopml", reason: str) -> None:
        with self.metadata.begin() as conn:
            aliases.move_alias(self.metadata, conn, name, alias, None, actor=actor, reason=reason)

    def alias_at(self, name: str, alias: str, moment: datetime) -> int | None:
        """Which version `alias` pointed at, at `moment` (None if it pointed nowhere)."""
        with self.metadata.begin() as conn:
            return aliases.version_at(conn, name, alias, moment)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasPeriod]:
        """Every period of an alias (or of all the model's aliases): version, from, to, who and why."""
        with self.metadata.begin() as conn:
            return aliases.periods(conn, name, alias)

    # tags
    def set_tag(self, name: str, key: str, value: str, *, version: int | None = None) -> None:
        """Tag a model (or one of its versions); tags are labels, not history: the value is replaced."""
        _check_tag(key, value)
        if version is None:
            self._require_model(name)
        else:
            self.get_version(name, version)
        table, scope, where = _tag_scope(name, version)
        with self.metadata.begin() as conn:
            conn.execute(delete(table).where(*where, table.c.key == key))
            conn.execute(insert(table).values(**scope, key=key, value=value))

    def delete_tag(self, name: str, key: str, *, version: int | None = None) -> None:
        table, _, where = _tag_scope(name, version)
        with self.metadata.begin() as conn:
            conn.execute(delete(table).where(*where, table.c.key == key))

    def tags(self, name: str, *, version: int | None = None) -> dict[str, str]:
        table, _, where = _tag_scope(name, version)
        with self.metadata.begin() as conn:
            rows = conn.execute(select(table.c.key, table.c.value).where(*where).order_by(table.c.key)).all()
        return dict(rows)

    # gate
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

    # deletion
    def delete_version(
        self, name: str, version: int, *, actor: str = "loopml", reason: str = ""
    ) -> list[str]:
        """Delete a version's metadata and files together; refuse while an alias or endpoint uses it.

        Returns the digests of the files removed (files shared with another version stay).
        """
        target = self.get_version(name, version)
        self._refuse_if_used(name, version)
        with self.metadata.begin() as conn:
            unused = self._delete_version_rows(conn, target, actor, reason)
        return delete_unreferenced(self.metadata, self.artifacts, unused)

    def delete_model(self, name: str, *, actor: str = "loopml", reason: str = "") -> list[str]:
        """Delete a model with every version and file; refuse while an alias or endpoint uses any of it."""
        self._require_model(name)
        self._refuse_if_used(name, None)
        unused: list[str] = []
        versions = self.list_versions(name)
        with self.metadata.begin() as conn:
            for target in versions:
                unused += self._delete_version_rows(conn, target, actor, reason)
            conn.execute(delete(registered_model_tags).where(registered_model_tags.c.model_name == name))
            # a model registered again under this name starts a new history; the events keep the old one
            conn.execute(delete(alias_history).where(alias_history.c.model_name == name))
            conn.execute(delete(registered_models).where(registered_models.c.name == name))
            self.metadata.record_event(
                conn,
                kind="model.deleted",
                subject=f"model:{name}",
                actor=actor,
                reason=reason or f"deleted model '{name}'",
                data={},
            )
        return delete_unreferenced(self.metadata, self.artifacts, unused)

    def _refuse_if_used(self, name: str, version: int | None) -> None:
        held = sorted(a for a, v in self.aliases(name).items() if version is None or v == version)
        users = [f"alias '{a}'" for a in held]
        for check in self.usage_checks:
            users += check(name, version)
        if users:
            what = f"{name}/{version}" if version is not None else f"model '{name}'"
            raise ValidationError(
                f"Cannot delete {what}: still used by {', '.join(users)}. Move or remove those first "
                f"(`loopml models alias`, `loopml deploy`)."
            )

    def _delete_version_rows(
        self, conn: Connection, target: ModelVersion, actor: str, reason: str
    ) -> list[str]:
        conn.execute(
            delete(model_version_tags).where(
                model_version_tags.c.model_name == target.model_name,
                model_version_tags.c.version == target.version,
            )
        )
        conn.execute(
            delete(model_versions).where(
                model_versions.c.model_name == target.model_name, model_versions.c.version == target.version
            )
        )
        unused = release(conn, target.owner)
        self.metadata.record_event(
            conn,
            kind="model.version_deleted",
            subject=f"model:{target.ref}",
            actor=actor,
            reason=reason or f"deleted version {target.version} of '{target.model_name}'",
            data={"artifact_digest": target.artifact_digest, "files_deleted": len(unused)},
        )
        self.metadata.bump_change_counter(conn)
        return unused

    def _require_model(self, name: str) -> None:
        if name not in self.list_models():
            raise NotFoundError(f"No registered model named '{name}'; see `loopml models list`.")


def _tag_scope(name: str, version: int | None) -> tuple[Table, dict[str, Any], list[Any]]:
    """The tag table of a model (version None) or of one version, its key columns and the rows' condition."""
    table = registered_model_tags if version is None else model_version_tags
    scope = {"model_name": name} if version is None else {"model_name": name, "version": version}
    return table, scope, [table.c[column] == value for column, value in scope.items()]


def _check_tag(key: str, value: str) -> None:
    check_key(key, "tag")
    if not isinstance(value, str):
        raise ValidationError(f"Tag '{key}' must have a string value, got {type(value).__name__}.")


def _library_versions(model_file: ModelFile) -> dict[str, str]:
    """Python and each pinned requirement's version, as recorded in the model file."""
    pinned = dict(line.split("==", 1) for line in model_file.requirements if "==" in line)
    return {"python": model_file.python_version or "unknown", **pinned}


def check_model_name(name: str) -> None:
    """Names appear in references ('name@alias', 'name/3'): no '@' or '/', at most 200 characters."""
    if not _MODEL_NAME.match(name):
        raise ValidationError(
            f"Model name {name!r} is invalid: use 1-200 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (pass --name to choose one)."
        )


def _is_conflict(exc: Exception) -> bool:
    """A lost race for a version number (or a new model's row), or for SQLite's write lock: worth a retry."""
    if isinstance(exc, IntegrityError):
        text = str(exc.orig)
        return ("UNIQUE" in text or "duplicate key" in text) and (
            "model_versions" in text or "registered_models" in text
        )
    return "locked" in str(exc)


def versions_from_runs(conn: Connection, run_ids: list[str]) -> list[str]:
    """A tracker usage check: the model versions registered from any of these runs."""
    rows = conn.execute(
        select(model_versions.c.model_name, model_versions.c.version, model_versions.c.run_id).where(
            model_versions.c.run_id.in_(run_ids)
        )
    ).all()
    return [f"model version {name}/{version} (registered from run {run})" for name, version, run in rows]
