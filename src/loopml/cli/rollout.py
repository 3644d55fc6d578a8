"""`loopml rollout`: start a candidate version's rollout on an endpoint, watch it, pause, resume, promote, abort."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project
from loopml.delivery.analysis import AnalysisSettings
from loopml.delivery.rollouts import (
    RolloutSpec,
    abort,
    list_rollouts,
    pause,
    promote_now,
    resume,
    start_rollout,
)
from loopml.errors import ValidationError

app = typer.Typer(help="Progressive delivery: shadow and canary steps with analysis.", no_args_is_help=True)


@app.command()
def start(
    endpoint: str,
    version: int = typer.Option(..., help="The candidate version of the endpoint's model."),
    steps: str = typer.Option("5,25,100", help="Canary traffic percentages, ending at 100 (promotion)."),
    shadow_minutes: float = typer.Option(0.0, help="Mirror all traffic to the candidate this long first."),
    min_step_minutes: float = typer.Option(10.0, help="Least time a step runs before it can pass."),
    min_step_requests: int = typer.Option(100, help="Least candidate requests a step needs to pass."),
    interval_minutes: float = typer.Option(1.0, help="Time between analyses."),
    max_p99_ratio: float = typer.Option(
        1.5, help="Candidate p99 latency allowed, as a multiple of the baseline's."
    ),
    max_error_rate_increase: float = typer.Option(0.01, help="Error rate allowed above the baseline's."),
    reason: str = typer.Option("", help="Why (kept in the events)."),
    project_dir: Path = ProjectOption,
) -> None:
    """Start rolling out VERSION on ENDPOINT; `loopml controller` moves it step by step."""
    project = open_project(project_dir)
    try:
        percentages = tuple(float(s) for s in steps.split(","))
    except ValueError:
        raise ValidationError(
            f"--steps takes comma-separated percentages such as 5,25,100, got {steps!r}."
        ) from None
    spec = RolloutSpec(
        steps=percentages,
        shadow_minutes=shadow_minutes,
        min_step_minutes=min_step_minutes,
        min_step_requests=min_step_requests,
        analysis_interval_minutes=interval_minutes,
        analysis=AnalysisSettings(
            min_requests=min(min_step_requests, AnalysisSettings.min_requests),
            max_p99_ratio=max_p99_ratio,
            max_error_rate_increase=max_error_rate_increase,
        ),
    )
    rollout = start_rollout(project, endpoint, version, spec=spec, reason=reason)
    console.print(f"started {rollout.describe()}")


@app.command()
def status(endpoint: str | None = typer.Argument(None), project_dir: Path = ProjectOption) -> None:
    """Rollouts (active first), where each stands and why."""
    project = open_project(project_dir)
    found = sorted(list_rollouts(project, endpoint=endpoint), key=lambda r: (not r.active, -r.id))
    if not found:
        console.print("No rollouts" + (f" on endpoint '{endpoint}'." if endpoint else "."))
        return
    table = Table(
        "id", "endpoint", "candidate", "baseline", "state", "phase", "traffic", "last analysis", "why"
    )
    for r in found:
        traffic = (
            "-" if not r.active else "100% mirrored" if r.phase == "shadow" else f"{r.spec.steps[r.step]:g}%"
        )
        table.add_row(
            str(r.id),
            r.endpoint,
            f"{r.model_name}/{r.candidate_version}",
            f"{r.model_name}/{r.baseline_version}",
            r.state,
            r.phase,
            traffic,
            f"{r.last_analysis_at:%Y-%m-%d %H:%M} ({r.last_verdict or '-'})" if r.last_analysis_at else "-",
            r.reason,
        )
    console.print(table)


@app.command(name="pause")
def pause_command(endpoint: str, reason: str = "", project_dir: Path = ProjectOption) -> None:
    """Hold the endpoint's rollout where it is."""
    console.print(pause(open_project(project_dir), endpoint, reason=reason).describe())


@app.command(name="resume")
def resume_command(endpoint: str, reason: str = "", project_dir: Path = ProjectOption) -> None:
    """Let a paused rollout go on."""
    console.print(resume(open_project(project_dir), endpoint, reason=reason).describe())


@app.command(name="promote")
def promote_command(endpoint: str, reason: str = "", project_dir: Path = ProjectOption) -> None:
    """Promote the candidate now: the alias moves to it and its canary route goes."""
    decision = promote_now(open_project(project_dir), endpoint, reason=reason)
    console.print(f"rollout {decision.rollout}: {decision.action}: {decision.reason}")


@app.command(name="abort")
def abort_command(endpoint: str, reason: str = "", project_dir: Path = ProjectOption) -> None:
    """End the rollout and take the candidate's traffic away."""
    decision = abort(open_project(project_dir), endpoint, reason=reason)
    console.print(f"rollout {decision.rollout}: {decision.action}: {decision.reason}")
