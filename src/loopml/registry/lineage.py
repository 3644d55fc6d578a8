"""Lineage of a model version: the run that trained it, its training-set snapshot, features and code."""

from __future__ import annotations

from typing import Any

from loopml.data.snapshots import get_snapshot
from loopml.errors import NotFoundError
from loopml.registry.models import ModelVersion
from loopml.storage.metadata import MetadataStore
from loopml.training.run_search import get_run


def lineage(metadata: MetadataStore, version: ModelVersion) -> dict[str, Any]:
    """Where a version came from, as far back as the records go (a deleted run reads as missing)."""
    found: dict[str, Any] = {
        "model": version.ref,
        "code_version": version.code_version,
        "feature_service": version.feature_service,
        "features": version.features,
        "run": None,
        "training_set": None,
    }
    if version.run_id is not None:
        try:
            run = get_run(metadata, version.run_id)
            found["run"] = {
                "id": run.id,
                "pipeline": run.pipeline,
                "status": run.status,
                "started_at": run.started_at.isoformat(),
                "params": run.params,
            }
        except NotFoundError:
            found["run"] = {"id": version.run_id, "missing": True}
    if version.dataset_id is not None:
        snapshot = get_snapshot(metadata, version.dataset_id)
        found["training_set"] = {
            "id": snapshot.id,
            "name": snapshot.name,
            "content_hash": snapshot.content_hash,
            "rows": snapshot.n_rows,
            "time_range": [
                t.isoformat() if t is not None else None for t in (snapshot.time_start, snapshot.time_end)
            ],
            "feature_view_versions": snapshot.spec.get("feature_view_versions", {}),
        }
    return found
