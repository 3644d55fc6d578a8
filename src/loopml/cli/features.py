"""`loopml features` and `loopml datasets`: what is defined and what was built from it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project, parse_time
from loopml.data.snapshots import get_snapshot, list_snapshots
from loopml.features.registry import definition_versions, list_definitions
from loopml.features.runs import FAILED, RUNNING, list_runs
from loopml.features.skew import (
    DEFAULT_MAX_LOOKUPS,
    OFFLINE_MISSING,
    ONLINE_MISSING,
    ONLINE_NEWER,
    STALE,
    VALUE_DIFFERS,
    SkewReport,
    skew_report,
)

features_app = typer.Typer(help="Entities, feature views and feature services.", no_args_is_help=True)
datasets_app = typer.Typer(help="Dataset snapshots (training sets).", no_args_is_help=True)
KINDS = {"entity": "entity", "view": "feature_view", "service": "feature_service"}


@features_app.command("list")
def list_features(project_dir: Path = ProjectOption) -> None:
    """List applied entities, feature views and feature services with their newest version."""
    project = open_project(project_dir)
    table = Table("kind", "name", "version", "applied", "details")
    for d in list_definitions(project.metadata):
        table.add_row(
            d.kind, d.name, str(d.version), d.created_at.strftime("%Y-%m-%d %H:%M"), _details(d.kind, d.spec)
        )
    console.print(table)


@features_app.command()
def show(
    name: str,
    kind: str = typer.Option("view", help="entity, view or service."),
    project_dir: Path = ProjectOption,
) -> None:
    """Show a definition's newest spec and the history of its versions."""
    if kind not in KINDS:
        raise typer.BadParameter(f"kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    project = open_project(project_dir)
    versions = definition_versions(project.metadata, KINDS[kind], name)
    console.print(yaml.safe_dump(versions[-1].spec, sort_keys=False), end="")
    console.print("versions: " + ", ".join(f"v{v.version} ({v.created_at:%Y-%m-%d %H:%M})" for v in versions))
    if versions[-1].deleted_at is not None:
        console.print(
            f"deleted: {versions[-1].deleted_at:%Y-%m-%d %H:%M} (by `loopml apply`; versions are kept)"
        )


@features_app.command()
def runs(
    view: str | None = typer.Argument(None, help="Only this feature view's runs."),
    limit: int = typer.Option(20, min=1, help="Show the newest N runs."),
    project_dir: Path = ProjectOption,
) -> None:
    """Materialisation history: each run's view version, event-time range, rows, status and error."""
    project = open_project(project_dir)
    table = Table("run", "view", "mode", "from", "to", "rows", "status", "started", "seconds", "error")
    found = list_runs(project.metadata, view, last=limit)
    if not found:
        console.print(
            f"No materialisation runs{f' of {view!r}' if view else ''} yet; run `loopml materialize`."
        )
        return
    for run in found:
        table.add_row(
            str(run.id),
            f"{run.view} v{run.view_version}",
            "incremental" if run.incremental else "range",
            f"{run.start:%Y-%m-%d %H:%M:%S}",
            f"{run.end:%Y-%m-%d %H:%M:%S}",
            f"{run.rows:,}",
            run.status,
            f"{run.started_at:%Y-%m-%d %H:%M}",
            "-" if run.seconds is None else f"{run.seconds:.1f}",
            run.error or "",
            style={FAILED: "red", RUNNING: "yellow"}.get(run.status),
        )
    console.print(table)


@features_app.command()
def skew(
    since: str | None = typer.Option(
        None, help="Start of the window (ISO time); default --days before --until."
    ),
    until: str | None = typer.Option(None, help="End of the window (ISO time); default now."),
    days: float | None = typer.Option(
        None, min=0, help="Window length in days when --since is not given [1]."
    ),
    feature: list[str] | None = typer.Option(
        None, "--feature", "-f", help="A 'view:feature' to check (repeatable); default every logged feature."
    ),
    service: str | None = typer.Option(None, help="Check the features of this feature service."),
    max_lookups: int = typer.Option(
        DEFAULT_MAX_LOOKUPS, min=1, help="Replay a uniform sample of this many lookups when more were logged."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    project_dir: Path = ProjectOption,
) -> None:
    """Training/serving skew: replay logged online lookups offline and report mismatches per feature."""
    if since is not None and days is not None:
        raise typer.BadParameter("--since and --days both set the window's start; pass one of them.")
    if feature and service:
        raise typer.BadParameter("--feature and --service both choose the features; pass one of them.")
    project = open_project(project_dir)
    end = parse_time(until, project)
    start = (
        parse_time(since, project) if since is not None else end - timedelta(days=1 if days is None else days)
    )
    chosen = project.get_feature_service(service) if service else feature or None
    report = skew_report(project, start, end, chosen, max_lookups=max_lookups)
    if as_json:
        console.print_json(data=report.to_dict())
        return
    if report.lookups == 0:
        console.print(
            f"No feature lookups were logged from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}: serving logs "
            "the reads of POST /v1/features/online and of model endpoints. Widen the window with --since or "
            "--days."
        )
        return
    _print_skew(report)


@datasets_app.command("list")
def list_datasets(
    name: str | None = typer.Option(None, help="Only snapshots of this name."),
    project_dir: Path = ProjectOption,
) -> None:
    """List dataset snapshots, newest first."""
    project = open_project(project_dir)
    table = Table("id", "name", "rows", "from", "to", "content hash", "created")
    for s in list_snapshots(project.metadata, name):
        table.add_row(
            s.id,
            s.name,
            str(s.n_rows),
            _time(s.time_start),
            _time(s.time_end),
            s.content_hash[:12],
            s.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@datasets_app.command("show")
def show_dataset(snapshot_id: str, project_dir: Path = ProjectOption) -> None:
    """Show a snapshot: shape, time range, columns, hashes and what it was built from."""
    project = open_project(project_dir)
    s = get_snapshot(project.metadata, snapshot_id)
    details = {
        "id": s.id,
        "name": s.name,
        "rows": s.n_rows,
        "time_start": _time(s.time_start),
        "time_end": _time(s.time_end),
        "content_hash": s.content_hash,
        "file_sha256": s.file_sha256,
        "path": s.path,
        "columns": s.columns,
        "spec": s.spec,
        "created_at": s.created_at.isoformat(),
    }
    console.print(yaml.safe_dump(details, sort_keys=False), end="")


def _print_skew(report: SkewReport) -> None:
    sampled = f", a sample of {report.replayed} replayed" if report.replayed < report.lookups else ""
    console.print(
        f"{report.lookups} feature lookups from {report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M}"
        f"{sampled}, recomputed offline as of their lookup time"
    )
    table = Table(
        "feature",
        "lookups",
        "compared",
        "mismatches",
        "rate",
        "online missing",
        "offline missing",
        "stale",
        "value differs",
        "online newer",
    )
    for f in report.features:
        table.add_row(
            f.feature,
            str(f.lookups),
            str(f.compared),
            str(f.mismatches),
            f"{f.mismatch_rate:.1%}",
            *(
                str(f.reasons[r])
                for r in (ONLINE_MISSING, OFFLINE_MISSING, STALE, VALUE_DIFFERS, ONLINE_NEWER)
            ),
            style="red" if f.mismatches else None,
        )
    console.print(table)
    if not report.samples:
        return
    examples = Table(
        "feature", "lookup time", "entity", "online (status, event time)", "offline (event time)", "why"
    )
    for m in report.samples:
        examples.add_row(
            m.feature,
            f"{m.lookup_ts:%Y-%m-%d %H:%M:%S}",
            ", ".join(f"{k}={v}" for k, v in m.entities.items()),
            f"{m.online_value} ({m.online_status}, {_time(m.online_event_ts)})",
            f"{m.offline_value} ({_time(m.offline_event_ts)})",
            m.reason,
        )
    console.print("Examples:")
    console.print(examples)


def _details(kind: str, spec: dict[str, Any]) -> str:
    if kind == "feature_view":
        return f"{', '.join(f['name'] for f in spec['schema'])}; ttl {spec['ttl_seconds'] / 3600:g} h"
    if kind == "feature_service":
        return ", ".join(spec["features"])
    return f"join keys {', '.join(spec['join_keys'])}"


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M")
