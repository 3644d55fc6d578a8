"""Experiment tracking: runs with params, metrics, code version and the data snapshot they used."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from loopml.errors import NotFoundError
from loopml.storage.metadata import MetadataStore
from loopml.training.tables import run_metrics, run_params, runs


@dataclass(frozen=True)
class Run:
    id: str
    pipeline: str
    status: str
    code_version: dict[str, Any]
    dataset_id: str | None
    started_at: datetime
    ended_at: datetime | None
    params: dict[str, str]
    metrics: dict[str, float]


def code_version(directory: Path) -> dict[str, Any]:
    """The git commit (and whether the tree was dirty) of `directory`, or what is known without git."""
    import loopml

    version: dict[str, Any] = {"loopml": loopml.__version__, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return version
    version.update(git_commit=commit, git_dirty=bool(status.strip()))
    return version


class Tracker:
    """Writes runs to the metadata store."""

    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata

    def start_run(
        self,
        pipeline: str,
        params: dict[str, Any],
        code: dict[str, Any],
        *,
        name: str | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        run_id = str(uuid.uuid4())
        with self.metadata.begin() as conn:
            conn.execute(
                insert(runs).values(
                    id=run_id,
                    pipeline=pipeline,
                    name=name,
                    parent_run_id=parent_run_id,
                    status="running",
                    code_version=code,
                    started_at=self.metadata.clock.now(),
                )
            )
            if params:
                conn.execute(
                    insert(run_params),
                    [{"run_id": run_id, "key": k, "value": str(v)} for k, v in params.items()],
                )
            self.metadata.record_event(
                conn,
                kind="run.started",
                subject=f"run:{run_id}",
                reason=f"pipeline '{pipeline}' started",
                data={"pipeline": pipeline, "code_version": code},
            )
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        if not metrics:
            return
        now = self.metadata.clock.now()
        with self.metadata.begin() as conn:
            conn.execute(
                insert(run_metrics),
                [
                    {"run_id": run_id, "key": k, "value": float(v), "step": step, "ts": now}
                    for k, v in metrics.items()
                ],
            )

    def set_dataset(self, run_id: str, dataset_id: str) -> None:
        with self.metadata.begin() as conn:
            conn.execute(update(runs).where(runs.c.id == run_id).values(dataset_id=dataset_id))

    def end_run(self, run_id: str, status: str = "finished", error: str | None = None) -> None:
        with self.metadata.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(status=status, ended_at=self.metadata.clock.now(), error=error)
            )
            self.metadata.record_event(
                conn,
                kind=f"run.{status}",
                subject=f"run:{run_id}",
                reason=error or f"run {status}",
                data={"status": status},
            )

    def get_run(self, run_id: str) -> Run:
        with self.metadata.begin() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
            if row is None:
                raise NotFoundError(f"No run with id '{run_id}'.")
            params = dict(
                conn.execute(
                    select(run_params.c.key, run_params.c.value).where(run_params.c.run_id == run_id)
                ).all()
            )
            metrics = dict(
                conn.execute(
                    select(run_metrics.c.key, run_metrics.c.value)
                    .where(run_metrics.c.run_id == run_id)
                    .order_by(run_metrics.c.step)
                ).all()
            )
        fields = {
            k: v for k, v in row._mapping.items() if k not in {"error", "name", "parent_run_id", "environment"}
        }
        return Run(**fields, params=params, metrics=metrics)
