"""`loopml features` and `loopml datasets`: what is defined and what was built from it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project
from loopml.data.snapshots import get_snapshot, list_snapshots
from loopml.features.registry import definition_versions, list_definitions

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


def _details(kind: str, spec: dict[str, Any]) -> str:
    if kind == "feature_view":
        return f"{', '.join(f['name'] for f in spec['schema'])}; ttl {spec['ttl_seconds'] / 3600:g} h"
    if kind == "feature_service":
        return ", ".join(spec["features"])
    return f"join keys {', '.join(spec['join_keys'])}"


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M")
