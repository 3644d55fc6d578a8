"""`loopml models`: list, show, alias and its history, tags, delete, import and export."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project, parse_time
from loopml.errors import NotFoundError
from loopml.registry.interop import export_version, import_model
from loopml.registry.lineage import lineage

app = typer.Typer(help="Registered models, their versions and aliases.", no_args_is_help=True)


@app.command("list")
def list_models(
    name: str | None = typer.Argument(None, help="List the versions of this model instead."),
    project_dir: Path = ProjectOption,
) -> None:
    """List registered models with their versions and aliases (or one model's versions)."""
    project = open_project(project_dir)
    registry = project.registry
    if name is not None:
        held: dict[int, list[str]] = {}
        for alias_name, number in registry.aliases(name).items():
            held.setdefault(number, []).append(alias_name)
        table = Table("version", "created", "flavor", "run", "metrics", "aliases", "gate")
        for version in registry.list_versions(name):
            gate = version.gate
            table.add_row(
                str(version.version),
                version.created_at.strftime("%Y-%m-%d %H:%M"),
                version.flavor,
                (version.run_id or "-")[:8],
                ", ".join(f"{k}={v:.4g}" for k, v in sorted(version.metrics.items())[:3]),
                ", ".join(sorted(held.get(version.version, []))),
                "-" if gate is None else ("passed" if gate["passed"] else "failed"),
            )
        console.print(table)
        return
    table = Table("model", "versions", "aliases")
    for model in registry.list_models():
        versions = registry.list_versions(model)
        aliases = ", ".join(f"{a} → v{v}" for a, v in sorted(registry.aliases(model).items()))
        table.add_row(model, str(len(versions)), aliases)
    console.print(table)


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION."),
    model_file_only: bool = typer.Option(
        False, "--model-file", help="Print only the version's loopml-model.yaml."
    ),
    project_dir: Path = ProjectOption,
) -> None:
    """Show a version: its loopml-model.yaml, lineage, files, aliases, tags, metrics and gate result."""
    project = open_project(project_dir)
    registry = project.registry
    version = registry.resolve(ref)
    model_file = registry.model_file(version)
    if model_file_only:
        console.print(model_file.to_yaml().decode(), end="", markup=False, highlight=False)
        return
    details = {
        "model": version.model_name,
        "version": version.version,
        "created_at": version.created_at.isoformat(),
        "aliases": sorted(a for a, v in registry.aliases(version.model_name).items() if v == version.version),
        "tags": registry.tags(version.model_name, version=version.version),
        "metrics": version.metrics,
        "gate": version.gate,
        "lineage": lineage(project.metadata, version),
        "files": {path: {"sha256": f.digest, "bytes": f.size} for path, f in registry.files(version).items()},
        "loopml-model.yaml": model_file.to_dict(),
    }
    console.print(yaml.safe_dump(details, sort_keys=False), end="", markup=False, highlight=False)


@app.command()
def alias(
    name: str,
    alias_name: str = typer.Argument(..., metavar="ALIAS"),
    version: int | None = typer.Argument(None, help="The version to point at (omit with --remove)."),
    reason: str = typer.Option(..., "--reason", help="Why: recorded in the alias history."),
    remove: bool = typer.Option(False, "--remove", help="Remove the alias instead of moving it."),
    project_dir: Path = ProjectOption,
) -> None:
    """Point ALIAS of model NAME at VERSION, or remove it (recorded in the alias history and as an event)."""
    project = open_project(project_dir)
    if remove:
        if version is not None:
            raise typer.BadParameter("--remove takes no VERSION", param_hint="VERSION")
        held = project.registry.aliases(name)
        if alias_name not in held:
            raise NotFoundError(
                f"Model '{name}' has no alias '{alias_name}' (it has: {sorted(held) or 'none'})."
            )
        project.registry.remove_alias(name, alias_name, actor="cli", reason=reason)
        console.print(f"{name}@{alias_name} removed")
        return
    if version is None:
        raise typer.BadParameter("give the VERSION to point the alias at, or --remove", param_hint="VERSION")
    project.registry.set_alias(name, alias_name, version, actor="cli", reason=reason)
    console.print(f"{name}@{alias_name} → v{version}")


@app.command()
def history(
    name: str,
    alias_name: str | None = typer.Argument(None, metavar="[ALIAS]", help="Default: every alias."),
    at: str | None = typer.Option(None, "--at", help="Only say which version held the alias at this time."),
    project_dir: Path = ProjectOption,
) -> None:
    """Every period an alias pointed at a version, with who moved it and why; or the holder at a time."""
    project = open_project(project_dir)
    if name not in project.registry.list_models():
        raise NotFoundError(f"No registered model named '{name}'; see `loopml models list`.")
    if at is not None:
        alias_name = alias_name or "champion"
        version = project.registry.alias_at(name, alias_name, parse_time(at, project))
        console.print(f"{name}@{alias_name} at {at}: {'v' + str(version) if version else 'unset'}")
        return
    table = Table("alias", "version", "from", "until", "actor", "why")
    for period in project.registry.alias_history(name, alias_name):
        table.add_row(
            period.alias,
            f"v{period.version}",
            period.valid_from.strftime("%Y-%m-%d %H:%M:%S"),
            period.valid_to.strftime("%Y-%m-%d %H:%M:%S") if period.valid_to else "now",
            period.actor,
            period.reason,
        )
    console.print(table)


@app.command()
def tag(
    ref: str = typer.Argument(..., help="NAME (the model), NAME/VERSION or NAME@ALIAS (its version)."),
    pairs: list[str] = typer.Argument(..., help="KEY=VALUE to set, or KEY= to delete."),
    project_dir: Path = ProjectOption,
) -> None:
    """Set or delete tags on a model or a version."""
    project = open_project(project_dir)
    pinned = "/" in ref or "@" in ref
    version = project.registry.resolve(ref) if pinned else None
    name = version.model_name if version else ref
    number = version.version if version else None
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="PAIRS")
        if value:
            project.registry.set_tag(name, key, value, version=number)
        else:
            project.registry.delete_tag(name, key, version=number)
    console.print(project.registry.tags(name, version=number))


@app.command()
def delete(
    ref: str = typer.Argument(..., help="NAME/VERSION, or NAME for the model and all its versions."),
    reason: str = typer.Option("", "--reason", help="Why: recorded in the events."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    project_dir: Path = ProjectOption,
) -> None:
    """Delete a version (or a whole model) with its files; refused while an alias or endpoint uses it."""
    project = open_project(project_dir)
    registry = project.registry
    name, sep, _ = ref.partition("/")
    what = ref if sep else f"model '{name}' and all its versions"
    if not yes and not typer.confirm(f"Delete {what} and its files?"):
        raise typer.Exit(1)
    if sep:
        version = registry.resolve(ref)
        removed = registry.delete_version(name, version.version, actor="cli", reason=reason)
    else:
        removed = registry.delete_model(name, actor="cli", reason=reason)
    console.print(f"Deleted {what}; {len(removed)} file(s) removed from the artifact store.")


@app.command("import")
def import_(
    path: Path = typer.Argument(
        ..., exists=True, file_okay=False, help="An MLflow or loopml model directory."
    ),
    name: str | None = typer.Option(None, "--name", help="Register under this model name."),
    alias_name: str | None = typer.Option(None, "--alias", help="Point this alias at the new version."),
    project_dir: Path = ProjectOption,
) -> None:
    """Register a model directory that has an MLflow MLmodel file (or a loopml-model.yaml)."""
    project = open_project(project_dir)
    version = import_model(project.registry, path, name=name, actor="cli")
    console.print(f"Registered {version.ref} ({version.flavor}) from {path}")
    if alias_name:
        project.registry.set_alias(
            version.model_name, alias_name, version.version, actor="cli", reason=f"imported from {path}"
        )
        console.print(f"{version.model_name}@{alias_name} → v{version.version}")


@app.command()
def export(
    ref: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION."),
    dest: Path = typer.Argument(..., help="A new or empty directory."),
    format: str = typer.Option("mlflow", "--format", help="mlflow (loads with mlflow.pyfunc) or loopml."),
    project_dir: Path = ProjectOption,
) -> None:
    """Write a version as a directory MLflow can load (or as a loopml model directory)."""
    project = open_project(project_dir)
    version = project.registry.resolve(ref)
    written = export_version(project.registry, version, dest, format=format)
    console.print(f"Exported {version.ref} to {written} ({format})")
