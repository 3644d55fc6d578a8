"""`loopml rollout`, `loopml bandit`, `loopml experiment`: progressive delivery from the command line."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project, parse_duration, parse_time
from loopml.delivery.analysis import AnalysisSettings
from loopml.delivery.bandits import (
    EPSILON_GREEDY,
    THOMPSON,
    BanditSpec,
    start_bandit,
    stop_bandit,
    tick_bandit,
)
from loopml.delivery.experiments import ExperimentSettings, endpoint_experiment
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


bandit_app = typer.Typer(help="Bandits: traffic to the versions whose predictions earn the most reward.")
experiment_app = typer.Typer(help="A/B experiments between two routes of an endpoint.")


@bandit_app.command(name="start")
def bandit_start(
    endpoint: str,
    arm: list[str] = typer.Option(..., help="NAME=VERSION, once per arm (at least two)."),
    policy: str = typer.Option(THOMPSON, help=f"{THOMPSON} or {EPSILON_GREEDY}."),
    epsilon: float = typer.Option(0.1, help="Exploration share for epsilon-greedy."),
    min_share: float = typer.Option(0.02, help="Least share of traffic every arm keeps."),
    project_dir: Path = ProjectOption,
) -> None:
    """Split ENDPOINT's traffic over the arms, equally at first; `loopml controller` moves it by rewards."""
    arms = {}
    for text in arm:
        name, sep, version = text.partition("=")
        if not sep or not version.isdigit():
            raise ValidationError(f"--arm takes NAME=VERSION (such as b=7), got {text!r}.")
        arms[name] = int(version)
    started = start_bandit(open_project(project_dir), endpoint, BanditSpec(arms, policy, epsilon, min_share))
    console.print(", ".join(f"{a.name}: v{a.version} {a.weight:g}%" for a in started))


@bandit_app.command(name="status")
def bandit_status(endpoint: str, project_dir: Path = ProjectOption) -> None:
    """Recount the rewards now and show each arm's weight."""
    table = Table("arm", "version", "pulls", "rewards", "mean", "weight")
    for a in tick_bandit(open_project(project_dir), endpoint):
        table.add_row(
            a.name, str(a.version), str(a.pulls), f"{a.rewards:g}", f"{a.mean:.4f}", f"{a.weight:g}%"
        )
    console.print(table)


@bandit_app.command(name="stop")
def bandit_stop(endpoint: str, project_dir: Path = ProjectOption) -> None:
    """Take the arms' routes away; the primary serves again."""
    stop_bandit(open_project(project_dir), endpoint)
    console.print(f"bandit on '{endpoint}' stopped")


@experiment_app.command(name="analyse")
def experiment_analyse(
    endpoint: str,
    treatment: str = typer.Option(..., help="The treatment route (an experiment arm)."),
    control: str = typer.Option("primary", help="The control route."),
    since: str = typer.Option("14d", help="Predictions from this long before --at."),
    at: str | None = typer.Option(None, help="End of the range (ISO time); default now."),
    min_effect: float = typer.Option(0.02, help="Smallest difference worth detecting."),
    alpha: float = typer.Option(0.05, help="Significance level."),
    power: float = typer.Option(0.8, help="Power of the planned sample."),
    project_dir: Path = ProjectOption,
) -> None:
    """The A/B test of two routes: effect, confidence interval, p-value, planned sample and decision."""
    project = open_project(project_dir)
    end = parse_time(at, project)
    result = endpoint_experiment(
        project.offline,
        endpoint,
        control,
        treatment,
        end - parse_duration(since),
        end,
        labels_until=project.clock.now(),
        settings=ExperimentSettings(alpha=alpha, power=power, min_effect=min_effect),
    )
    for arm in (result.control, result.treatment):
        console.print(f"{arm.name}: {arm.n} outcomes, mean {arm.mean:.4g}")
    console.print(
        f"effect {result.effect:.4g} ({1 - alpha:.0%} CI {result.ci_low:.4g} to {result.ci_high:.4g}), "
        f"p={result.p_value:.3g}, planned {result.required_n} per arm"
    )
    console.print(f"[bold]{result.decision}[/]: {result.reason}")
