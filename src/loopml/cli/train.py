"""`loopml train`: run a pipeline of steps, or train a TrainingSpec's model and register the version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import typer
from rich.table import Table

from loopml.cli.common import ProjectOption, console, err_console, open_project
from loopml.cli.definitions import collect
from loopml.errors import NotFoundError, ValidationError
from loopml.project import Project
from loopml.training.pipeline import TrainingSpec
from loopml.training.runner import PipelineRun, StepFailedError, get_pipeline_run
from loopml.training.steps import Pipeline

STATUS_STYLES = {"ran": "green", "cached": "cyan", "kept": "cyan", "failed": "red", "not run": "dim"}


def train(
    name: str = typer.Argument(
        ...,
        help="A Pipeline's name, or the model_name of a TrainingSpec (with --data), in the project's .py files.",
    ),
    data: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="TrainingSpec only: Parquet file of labelled entity rows (keys, timestamp, request inputs, label).",
    ),
    alias: str | None = typer.Option(None, help="TrainingSpec only: point this alias at the new version."),
    param: list[str] | None = typer.Option(
        None,
        "--param",
        help="Pipeline parameter NAME=VALUE (repeatable); wins over loopml.yaml's pipelines.NAME.params.",
    ),
    resume: str | None = typer.Option(
        None, "--resume", help="Resume this failed pipeline run: its succeeded steps are kept."
    ),
    project_dir: Path = ProjectOption,
) -> None:
    """Run a pipeline (cached steps are skipped), or train a TrainingSpec model on --data and register it."""
    project = open_project(project_dir)
    found = collect(project.path, (Pipeline, TrainingSpec))
    if data is not None:
        if param or resume:
            raise ValidationError("--param and --resume are for pipelines; a TrainingSpec takes --data only.")
        _train_spec(project, [s for s in found if isinstance(s, TrainingSpec)], name, data, alias)
        return
    pipelines = [p for p in found if isinstance(p, Pipeline) and p.name == name]
    if not pipelines:
        if any(isinstance(s, TrainingSpec) and s.model_name == name for s in found):
            raise ValidationError(
                f"'{name}' is a TrainingSpec; train it with --data FILE (labelled entity rows)."
            )
        known = sorted(p.name for p in found if isinstance(p, Pipeline))
        raise NotFoundError(
            f"No Pipeline named '{name}' in {project.path}/*.py (pipelines found: {known or 'none'}); "
            "define one there, or pass --data FILE to train a TrainingSpec."
        )
    if len(pipelines) > 1:
        raise ValidationError(f"Pipeline '{name}' is defined {len(pipelines)} times in {project.path}/*.py.")
    if alias:
        raise ValidationError(
            "--alias is for a TrainingSpec trained with --data; a pipeline's steps register models."
        )
    _run_pipeline(project, pipelines[0], param or [], resume)


def _run_pipeline(project: Project, pipeline: Pipeline, args: list[str], resume: str | None) -> None:
    if resume and args:
        raise ValidationError(f"--resume reuses run {resume}'s parameters; drop --param, or start a new run.")
    params = None if resume else pipeline.parse_param_args(args)  # loopml.yaml's come in under them
    try:
        run = project.run_pipeline(
            pipeline,
            params,
            resume=resume,
            progress=console.is_terminal,
        )
    except StepFailedError as exc:
        failed = get_pipeline_run(project.metadata, exc.pipeline_run_id, executed=exc.executed)
        _print_steps(pipeline, failed)
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    _print_steps(pipeline, run)
    console.print(f"Pipeline run {run.id} of '{pipeline.name}' {run.status}; tracked run {run.run_id}.")


def _print_steps(pipeline: Pipeline, run: PipelineRun) -> None:
    table = Table("step", "status", "outputs", "seconds", box=None)
    for s in pipeline.steps:
        result = run.steps.get(s.name)
        status = _status(run, s.name)
        seconds = ""
        if result is not None and result.ended_at is not None and status == "ran":
            seconds = f"{(result.ended_at - result.started_at).total_seconds():.2f}"
        outputs = ", ".join(f"{o}={r.digest[:10]}" for o, r in result.outputs.items()) if result else ""
        table.add_row(s.name, status, outputs, seconds, style=STATUS_STYLES[status])
    console.print(table)


def _status(run: PipelineRun, step: str) -> str:
    result = run.steps.get(step)
    if result is None or result.status == "running":
        return "not run"
    if result.status in ("failed", "cached"):
        return result.status
    return "ran" if step in run.executed else "kept"


def _train_spec(project: Project, specs: list[Any], model: str, data: Path, alias: str | None) -> None:
    """Train a TrainingSpec's model on labelled rows and register the version (optionally aliased)."""
    specs = [s for s in specs if s.model_name == model]
    if not specs:
        raise NotFoundError(
            f"No TrainingSpec with model_name '{model}' in {project.path}/*.py; define one there."
        )
    with console.status(f"training {model}"):
        trained = project.train(specs[0], _read_rows(data))
        version = project.registry.register(trained, actor="cli")
    console.print(
        f"Registered {version.ref}: " + ", ".join(f"{k}={v:.4f}" for k, v in version.metrics.items())
    )
    if alias:
        project.registry.set_alias(
            model, alias, version.version, actor="cli", reason="set by `loopml train --alias`"
        )
        console.print(f"{model}@{alias} → v{version.version}")


def _read_rows(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors for a file that is not Parquet derive from these
        raise ValidationError(
            f"--data {path} is not a readable Parquet file ({exc}); write it with to_parquet."
        ) from exc
