"""`loopml models`: list, show, alias and alias history."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project, parse_time

app = typer.Typer(help="Registered models, their versions and aliases.", no_args_is_help=True)


@app.command("list")
def list_models(project_dir: Path = ProjectOption) -> None:
    """List registered models with their versions and aliases."""
    project = open_project(project_dir)
    table = Table("model", "versions", "aliases")
    for name in project.registry.list_models():
        versions = project.registry.list_versions(name)
        aliases = ", ".join(f"{a} → v{v}" for a, v in sorted(project.registry.aliases(name).items()))
        table.add_row(name, str(len(versions)), aliases)
    console.print(table)


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION."), project_dir: Path = ProjectOption
) -> None:
    """Show a version: lineage, inputs, metrics and gate result."""
    project = open_project(project_dir)
    version = project.registry.resolve(ref)
    details = {
        "model": version.model_name,
        "version": version.version,
        "created_at": version.created_at.isoformat(),
        "run_id": version.run_id,
        "dataset_id": version.dataset_id,
        "artifact": f"sha256:{version.artifact_digest}",
        "flavor": version.flavor,
        "inputs": version.inputs,
        "features": version.features,
        "code_version": version.code_version,
        "library_versions": version.library_versions,
        "metrics": version.metrics,
        "gate": version.gate,
    }
    console.print(yaml.safe_dump(details, sort_keys=False), end="")


@app.command()
def alias(
    name: str,
    alias_name: str = typer.Argument(..., metavar="ALIAS"),
    version: int = typer.Argument(...),
    reason: str = typer.Option(..., "--reason", help="Why: recorded in the alias history."),
    project_dir: Path = ProjectOption,
) -> None:
    """Point ALIAS of model NAME at VERSION (recorded as an event)."""
    project = open_project(project_dir)
    project.registry.set_alias(name, alias_name, version, actor="cli", reason=reason)
    console.print(f"{name}@{alias_name} → v{version}")


@app.command()
def history(
    name: str,
    alias_name: str = typer.Argument("champion", metavar="ALIAS"),
    at: str | None = typer.Option(None, "--at", help="Only say which version held the alias at this time."),
    project_dir: Path = ProjectOption,
) -> None:
    """Every move of an alias: who, when, why; or which version held it at a time."""
    project = open_project(project_dir)
    if at is not None:
        version = project.registry.alias_at(name, alias_name, parse_time(at, project))
        console.print(f"{name}@{alias_name} at {at}: {'v' + str(version) if version else 'unset'}")
        return
    table = Table("time", "from", "to", "actor", "why")
    for event in project.metadata.events(subject_prefix=f"model:{name}@{alias_name}"):
        if event.subject != f"model:{name}@{alias_name}":
            continue
        table.add_row(
            event.ts.strftime("%Y-%m-%d %H:%M:%S"),
            _v(event.data.get("from_version")),
            _v(event.data.get("to_version")),
            event.actor,
            event.reason,
        )
    console.print(table)


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"
