"""Deleting runs: a run with its descendants, pipeline runs, params, metrics, tags and artifacts.

Deleting is planned first (what would go, or why it is refused), so the CLI can show the plan before acting.
Blobs are deleted only after the rows' transaction has committed, and only if no owner references them then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, delete, select, update

from loopml.errors import NotFoundError, ValidationError
from loopml.storage.artifact_refs import artifact_refs, release
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from loopml.training.tables import (
    pipeline_runs,
    run_latest_metrics,
    run_metrics,
    run_params,
    run_tags,
    runs,
    step_runs,
)

# Who else keeps runs as lineage (e.g. model versions registered from them), asked inside the deleting
# transaction: (connection, run ids) -> a description of each user. Stages to the right of training inject it.
RunUsageCheck = Callable[[Connection, list[str]], list[str]]


@dataclass(frozen=True)
class DeletionPlan:
    """What deleting a run removes: runs (it and its descendants), pipeline runs, and blobs nobody else uses."""

    run_ids: list[str]
    pipeline_run_ids: list[str]
    artifact_paths: int
    blobs: list[str] = field(default_factory=list)


def plan_deletion(
    conn: Connection, run_id: str, recursive: bool, usage_checks: Sequence[RunUsageCheck] = ()
) -> DeletionPlan:
    """What deleting `run_id` would remove, or the ValidationError/NotFoundError it would raise."""
    if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is None:
        raise NotFoundError(f"No run with id '{run_id}'; list runs with `loopml runs list`.")
    run_ids, frontier = [run_id], [run_id]
    while frontier:
        children = list(conn.execute(select(runs.c.id).where(runs.c.parent_run_id.in_(frontier))).scalars())
        if children and not recursive:
            raise ValidationError(
                f"Run '{run_id}' has {len(children)} child run(s) ({', '.join(children[:3])}"
                f"{', ...' if len(children) > 3 else ''}); delete them with it with recursive=True "
                "(`loopml runs delete --recursive`), or delete them first."
            )
        run_ids.extend(children)
        frontier = children
    users = [user for check in usage_checks for user in check(conn, run_ids)]
    if users:
        raise ValidationError(
            f"Run '{run_id}' cannot be deleted: {', '.join(users[:5])} keep(s) it as lineage. Delete those "
            "first, or keep the run."
        )
    pipeline_run_ids = list(
        conn.execute(
            select(pipeline_runs.c.id).where(pipeline_runs.c.run_id.in_(run_ids)).order_by(pipeline_runs.c.id)
        ).scalars()
    )
    owners = [f"run:{r}" for r in run_ids] + [f"pipeline_run:{p}" for p in pipeline_run_ids]
    files = (
        conn.execute(select(artifact_refs.c.digest).where(artifact_refs.c.owner.in_(owners))).scalars().all()
    )
    shared = conn.execute(
        select(artifact_refs.c.digest).where(
            artifact_refs.c.digest.in_(set(files)), artifact_refs.c.owner.not_in(owners)
        )
    ).scalars()
    return DeletionPlan(run_ids, pipeline_run_ids, len(files), sorted(set(files) - set(shared)))


def delete_run_rows(
    metadata: MetadataStore,
    run_id: str,
    *,
    recursive: bool,
    artifacts: ArtifactStore | None,
    usage_checks: Sequence[RunUsageCheck] = (),
) -> tuple[DeletionPlan, set[str]]:
    """Delete the run's rows in one transaction; returns the plan and the digests no owner references any more.

    The blobs are left to `delete_unreferenced`, once the caller has forgotten the deleted runs.
    """
    with metadata.begin() as conn:
        plan = plan_deletion(conn, run_id, recursive, usage_checks)
        if plan.blobs and artifacts is None:
            raise ValidationError(
                f"Run '{run_id}' has artifacts; create the Tracker with artifacts=project.artifacts so their "
                "files are deleted with it (nothing was deleted)."
            )
        released = _delete_rows(conn, plan)
        metadata.record_event(
            conn,
            kind="run.deleted",
            subject=f"run:{run_id}",
            reason=f"deleted with {len(plan.run_ids) - 1} child run(s) and "
            f"{len(plan.pipeline_run_ids)} pipeline run(s)",
            data={"run_ids": plan.run_ids, "pipeline_run_ids": plan.pipeline_run_ids},
        )
    return plan, released


def _delete_rows(conn: Connection, plan: DeletionPlan) -> set[str]:
    """Delete the planned rows; returns the digests no owner references any more."""
    released: set[str] = set()
    for pipeline_run_id in plan.pipeline_run_ids:
        released.update(release(conn, f"pipeline_run:{pipeline_run_id}"))
    for run_id in plan.run_ids:
        released.update(release(conn, f"run:{run_id}"))
    if plan.pipeline_run_ids:
        conn.execute(delete(step_runs).where(step_runs.c.pipeline_run_id.in_(plan.pipeline_run_ids)))
        conn.execute(delete(pipeline_runs).where(pipeline_runs.c.id.in_(plan.pipeline_run_ids)))
    for table in (run_metrics, run_latest_metrics, run_params, run_tags):
        conn.execute(delete(table).where(table.c.run_id.in_(plan.run_ids)))
    # Unlink the runs from their parents first, so no row points at a run already gone, whatever the order.
    conn.execute(update(runs).where(runs.c.id.in_(plan.run_ids)).values(parent_run_id=None))
    conn.execute(delete(runs).where(runs.c.id.in_(plan.run_ids)))
    return released
