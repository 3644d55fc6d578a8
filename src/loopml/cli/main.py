"""`loopml`: one command for the whole loop."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import typer
from rich.table import Table

from loopml.cli import endpoints, features, models, monitor, rollout, runs
from loopml.cli.batch import batch_score
from loopml.cli.common import ProjectOption, console, err_console, open_project, parse_duration, parse_time
from loopml.cli.definitions import collect
from loopml.cli.endpoints import deploy
from loopml.cli.feedback import feedback
from loopml.cli.materialize import materialize
from loopml.cli.serve import serve
from loopml.cli.train import train
from loopml.config import write_config
from loopml.delivery.bandits import tick_bandits
from loopml.delivery.rollouts import notify, tick_rollouts
from loopml.errors import LoopmlError, ValidationError
from loopml.features import Entity, FeatureService, FeatureView, OnDemandFeatureView
from loopml.features.registry import AppliedChange
from loopml.loop.controller import Controller
from loopml.loop.lock import ControllerLock
from loopml.loop.policy import (
    DriftRetrainPolicy,
    apply_policies,
    get_policy,
    list_policies,
    plan_policies,
    request_retrain,
)

app = typer.Typer(
    help="loopml: features, training, registry, serving, monitoring and automatic retraining in one loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.add_typer(runs.app, name="runs")
app.add_typer(endpoints.app, name="endpoints")
app.add_typer(monitor.app, name="monitor")
app.add_typer(rollout.app, name="rollout")
app.add_typer(rollout.bandit_app, name="bandit")
app.add_typer(rollout.experiment_app, name="experiment")
app.add_typer(features.features_app, name="features")
app.add_typer(features.datasets_app, name="datasets")
policy_app = typer.Typer(help="Retraining policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Where to create the project."),
    name: str | None = typer.Option(None, help="Project name (default: the directory's name)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing loopml.yaml."),
) -> None:
    """Create loopml.yaml with embedded defaults (SQLite, local files) under .loopml/."""
    path = write_config(directory, name or directory.resolve().name, overwrite=force)
    open_project(directory).close()
    console.print(f"Created {path}; stores live under {directory / '.loopml'}")


@app.command()
def apply(
    files: list[Path] | None = typer.Argument(None, help="Definition files (default: the project's *.py)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and change nothing."),
    prune: bool | None = typer.Option(
        None,
        "--prune/--no-prune",
        help="Delete stored definitions and policies absent from the files (default: prune when reading the "
        "whole project, not when files are named).",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Apply a plan that deletes without asking first."),
    project_dir: Path = ProjectOption,
) -> None:
    """Register entities, feature views, feature services and policies defined in Python: prints the plan, then applies."""
    project = open_project(project_dir)
    kinds = (Entity, FeatureView, OnDemandFeatureView, FeatureService)
    found = collect(project.path, (*kinds, DriftRetrainPolicy), files)
    objects = [o for o in found if isinstance(o, kinds)]
    policies = [o for o in found if isinstance(o, DriftRetrainPolicy)]
    if not objects and not policies:
        console.print(
            "No Entity, FeatureView, FeatureService or DriftRetrainPolicy found; define them in a .py file of the project."
        )
        raise typer.Exit(1)
    prune = not files if prune is None else prune
    changes = [(c.action, c.kind, c.name, _version_change(c)) for c in project.plan(objects, prune=prune)]
    changes += [
        (c.action, "policy", c.name, "") for c in plan_policies(project.metadata, policies, prune=prune)
    ]
    _print_plan(changes)
    if dry_run or all(action == "unchanged" for action, *_ in changes):
        return
    deletes = [f"{kind} '{name}'" for action, kind, name, _ in changes if action == "delete"]
    if deletes and not yes and not _confirm(f"Delete {', '.join(deletes)}?"):
        console.print("Nothing applied. Pass --yes to apply a plan that deletes without being asked.")
        raise typer.Exit(1)
    project.apply(objects, actor="cli", prune=prune)
    apply_policies(project.metadata, policies, prune=prune, actor="cli")
    console.print("Applied.")


def _confirm(question: str) -> bool:
    """Ask on the terminal; no answer (no terminal, end of input, Ctrl-C) is a no."""
    try:
        return typer.confirm(
            f"{question} Deleted definitions stop being listed and served; their versions are kept.",
            default=False,
        )
    except typer.Abort:
        return False


PLAN_MARKS = {
    "create": ("+", "green"),
    "update": ("~", "yellow"),
    "delete": ("-", "red"),
    "unchanged": (" ", "dim"),
}


def _version_change(change: AppliedChange) -> str:
    if change.action == "update":
        return f"v{change.version - 1} → v{change.version}"
    if change.action == "delete":
        return f"v{change.version} (versions kept)"
    return f"v{change.version}"


def _print_plan(changes: list[tuple[str, str, str, str]]) -> None:
    """Terraform-like: + create, ~ update, - delete, then a summary line."""
    table = Table("", "action", "kind", "name", "version", box=None)
    for action, kind, name, version in changes:
        mark, colour = PLAN_MARKS[action]
        table.add_row(mark, action, kind, name, version, style=colour)
    console.print(table)
    counts = Counter(action for action, *_ in changes)
    console.print(
        f"Plan: {counts['create']} to create, {counts['update']} to update, {counts['delete']} to delete, "
        f"{counts['unchanged']} unchanged."
    )


app.command()(materialize)


app.command()(train)


app.command()(deploy)
app.command()(feedback)
app.command("batch-score")(batch_score)
app.command()(serve)


@app.command()
def events(
    kind: str | None = typer.Option(None, help="Only this kind, e.g. alias.moved."),
    subject: str | None = typer.Option(None, help="Subjects starting with this, e.g. model:fraud."),
    model: str | None = typer.Option(None, help="Events of this model (its versions and aliases)."),
    endpoint: str | None = typer.Option(None, help="Events of this endpoint (routes, rollouts, bandits)."),
    since: str | None = typer.Option(None, help="From this ISO time."),
    until: str | None = typer.Option(None, help="Up to this ISO time."),
    limit: int = typer.Option(50, min=1, help="Show the newest N, oldest first."),
    project_dir: Path = ProjectOption,
) -> None:
    """The event log: every state change with who, when, what and why."""
    prefixes = [p for p in (subject, model and f"model:{model}", endpoint and f"endpoint:{endpoint}") if p]
    if len(prefixes) > 1:
        raise ValidationError("Give one of --subject, --model and --endpoint.")
    project = open_project(project_dir)
    found = project.metadata.events(
        kind=kind,
        subject_prefix=prefixes[0] if prefixes else None,
        since=None if since is None else parse_time(since, project),
        until=None if until is None else parse_time(until, project),
        last=limit,
    )
    table = Table("time", "actor", "kind", "subject", "why")
    for e in found:
        table.add_row(e.ts.strftime("%Y-%m-%d %H:%M:%S"), e.actor, e.kind, e.subject, e.reason)
    console.print(table)


@policy_app.command("list")
def policy_list(project_dir: Path = ProjectOption) -> None:
    """List retraining policies and their state."""
    project = open_project(project_dir)
    table = Table("policy", "model", "endpoint", "drift share >", "last retrain")
    for policy, state in list_policies(project.metadata):
        table.add_row(
            policy.name,
            policy.model_name,
            policy.endpoint,
            str(policy.drift_share_threshold),
            state.get("last_retrain_at", "-"),
        )
    console.print(table)


@policy_app.command("show")
def policy_show(name: str, project_dir: Path = ProjectOption) -> None:
    """A policy's settings, triggers, rollout and state."""
    policy, state = get_policy(open_project(project_dir).metadata, name)
    table = Table("setting", "value")
    for key, value in policy.spec().items():
        table.add_row(key, str(value))
    for key, value in state.items():
        table.add_row(f"state: {key}", str(value))
    console.print(table)


@policy_app.command("trigger")
def policy_trigger(
    name: str,
    reason: str = typer.Option("", help="Why (kept in the events)."),
    project_dir: Path = ProjectOption,
) -> None:
    """Ask the controller to retrain at its next tick (the cool-down does not apply)."""
    request_retrain(open_project(project_dir).metadata, name, reason=reason)
    console.print(f"retrain of policy '{name}' requested; the controller acts at its next tick")


@app.command()
def controller(
    once: bool = typer.Option(False, "--once", help="Run one tick and exit."),
    interval: str = typer.Option("60s", help="Time between ticks."),
    clock_file: Path | None = typer.Option(None, help="Read simulated time from this file (demo and tests)."),
    webhook: list[str] = typer.Option(
        [], help="POST rollout decisions (holds, steps, promotions, rollbacks) here."
    ),
    project_dir: Path = ProjectOption,
) -> None:
    """Evaluate every policy and move every rollout on a schedule, each decision an event."""
    project = open_project(project_dir, clock_file)
    pause = parse_duration(interval).total_seconds()
    with ControllerLock(project.metadata) as lock:
        waiting = False
        while True:
            if lock.acquire():
                if waiting:
                    console.print("took over as the acting controller")
                    waiting = False
                for decision in Controller(project).tick():
                    console.print(f"[bold]{decision.policy}[/]: {decision.action}: {decision.reason}")
                moved = tick_rollouts(project)
                for decision in moved:
                    console.print(
                        f"[bold]rollout {decision.rollout}[/]: {decision.action}: {decision.reason}"
                    )
                for url in webhook:
                    notify(url, moved)
                for endpoint, arms in tick_bandits(project).items():
                    weights = ", ".join(f"{a.name} {a.weight:g}%" for a in arms)
                    console.print(f"[bold]bandit {endpoint}[/]: {weights}")
            elif not waiting:
                console.print("another controller is acting on this project; standing by")
                waiting = True
            if once:
                return
            time.sleep(pause)


@app.command()
def demo(
    workdir: Path = typer.Option(Path("loopml-demo"), help="Directory for the demo project (recreated)."),
    quick: bool = typer.Option(False, "--quick", help="A shorter world (fewer users and days)."),
) -> None:
    """Run the closed loop on a simulated card-fraud world and write an HTML report."""
    from loopml.demo import DemoConfig, quick_config, run_demo, summarise

    config = quick_config(workdir) if quick else DemoConfig(workdir=workdir)
    result = run_demo(config, console=console)
    summarise(result, console)


def main() -> None:
    """Entry point: run the CLI, turning loopml's own errors into a message and exit code 1."""
    try:
        app()
    except LoopmlError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
