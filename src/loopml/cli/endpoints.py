"""`loopml deploy` and `loopml endpoints`: what each endpoint routes to, and how it serves."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project
from loopml.errors import ValidationError
from loopml.serving.endpoints import (
    CANARY,
    EXPERIMENT,
    PRIMARY,
    SHADOW,
    Route,
    configure,
    get_endpoint,
    list_endpoints,
    route_versions,
    undeploy,
)
from loopml.serving.endpoints import (
    deploy as deploy_route,
)

app = typer.Typer(help="Endpoints: routes, versions served, serving settings.", no_args_is_help=True)


def deploy(
    endpoint: str,
    model: str = typer.Option(
        ..., "--model", "-m", help="NAME@ALIAS, NAME/VERSION, or NAME (= NAME@champion)."
    ),
    canary: float | None = typer.Option(
        None, help="Send this percent of traffic to the model (0 removes it)."
    ),
    shadow: float | None = typer.Option(
        None, help="Mirror this percent of traffic to it; answers are only logged."
    ),
    arm: str | None = typer.Option(None, help="An experiment arm of this name, taking --weight percent."),
    weight: float | None = typer.Option(None, help="The experiment arm's percent of traffic (0 removes it)."),
    reason: str = typer.Option("", help="Why (kept with the event)."),
    project_dir: Path = ProjectOption,
) -> None:
    """Create an endpoint or change a route; running servers pick the change up within a second.

    Without --canary/--shadow/--arm the model becomes the primary route (a canary of the same model is promoted).
    """
    modes = [(CANARY, canary), (SHADOW, shadow), (EXPERIMENT, weight if arm else None)]
    chosen = [(mode, value) for mode, value in modes if value is not None]
    if (weight is None) != (arm is None):
        raise ValidationError(
            "An experiment arm needs both --arm NAME and --weight N (percent; 0 removes it)."
        )
    if len(chosen) > 1:
        raise ValidationError("Give at most one of --canary N, --shadow N or --arm NAME --weight N.")
    mode, percent = chosen[0] if chosen else (PRIMARY, None)
    name, alias, version = parse_model_ref(model)
    project = open_project(project_dir)
    deployed = deploy_route(
        project.metadata,
        project.registry,
        endpoint,
        name,
        alias,
        version=version,
        mode=mode,
        weight=percent,
        route=arm,
        actor="cli",
        reason=reason,
    )
    console.print(f"endpoint '{endpoint}' → " + ", ".join(_route_text(r) for r in deployed.routes))


@app.command("list")
def list_command(project_dir: Path = ProjectOption) -> None:
    """Every endpoint with its routes and the versions they serve now."""
    project = open_project(project_dir)
    table = Table("endpoint", "route", "mode", "weight", "target", "version")
    for endpoint in list_endpoints(project.metadata):
        versions = route_versions(project.registry, endpoint)
        for route in endpoint.routes:
            served = versions.get(route.name)
            table.add_row(
                endpoint.name,
                route.name,
                route.mode,
                f"{route.weight:g}%",
                route.target,
                f"v{served.version}" if served else "unset",
            )
    console.print(table)


@app.command()
def show(endpoint: str, project_dir: Path = ProjectOption) -> None:
    """One endpoint: routes, versions, serving settings."""
    project = open_project(project_dir)
    found = get_endpoint(project.metadata, endpoint)
    versions = route_versions(project.registry, found)
    console.print(
        f"[bold]{found.name}[/] (salt {found.salt!r}, updated {found.updated_at:%Y-%m-%d %H:%M:%S})"
    )
    for route in found.routes:
        served = versions.get(route.name)
        console.print(f"  {_route_text(route)}: " + (served.ref if served else "alias unset"))
    console.print(f"  settings: {found.settings}")


@app.command("config")
def config_command(
    endpoint: str,
    cache_max_age: float | None = typer.Option(
        None, help="Answer from the prediction cache within this age (s)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Stop answering from the prediction cache."),
    max_batch_size: int | None = typer.Option(None, help="Adaptive batching: rows per model call (0 = off)."),
    max_batch_wait_ms: float | None = typer.Option(
        None, help="Adaptive batching: longest wait to fill a batch."
    ),
    batch_timeout_ms: float | None = typer.Option(None, help="Adaptive batching: answer 503 past this wait."),
    nan_policy: str | None = typer.Option(None, help="stored (default), reject or allow."),
    project_dir: Path = ProjectOption,
) -> None:
    """Change an endpoint's serving settings."""
    changes = {
        "cache_max_age_seconds": cache_max_age,
        "max_batch_size": max_batch_size,
        "max_batch_wait_ms": max_batch_wait_ms,
        "batch_timeout_ms": batch_timeout_ms,
        "nan_policy": nan_policy,
    }
    given = {k: v for k, v in changes.items() if v is not None}
    if no_cache:
        given["cache_max_age_seconds"] = None
    if not given:
        raise ValidationError("Give at least one setting to change (see --help).")
    project = open_project(project_dir)
    console.print(f"{endpoint}: {configure(project.metadata, endpoint, actor='cli', **given).settings}")


@app.command()
def delete(
    endpoint: str,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    project_dir: Path = ProjectOption,
) -> None:
    """Delete an endpoint; servers stop serving it within a second."""
    if not yes and not typer.confirm(f"Delete endpoint '{endpoint}'?"):
        raise typer.Exit(1)
    undeploy(open_project(project_dir).metadata, endpoint, actor="cli")
    console.print(f"Deleted endpoint '{endpoint}'")


def parse_model_ref(text: str) -> tuple[str, str | None, int | None]:
    """'name@alias' / 'name/3' / 'name' as (name, alias, version)."""
    if "@" in text:
        name, alias = text.split("@", 1)
        return name, alias, None
    name, sep, number = text.partition("/")
    if not sep:
        return name, "champion", None
    if not number.isdigit():
        raise ValidationError(f"Model reference {text!r} must be NAME@ALIAS, NAME/VERSION or NAME.")
    return name, None, int(number)


def _route_text(route: Route) -> str:
    return f"{route.name} {route.target} ({route.mode}, {route.weight:g}%)"
