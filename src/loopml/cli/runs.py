"""`loopml runs`: list and search runs, show one, compare several side by side, delete one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from loopml.cli.common import ProjectOption, console, err_console, open_project
from loopml.errors import LoopmlError
from loopml.project import Project
from loopml.training.run_search import (
    Run,
    get_run,
    metric_counts,
    parse_filter,
    parse_order,
    resolve_run_id,
    search_runs,
)

app = typer.Typer(help="Tracked runs: search, show, compare and delete.", no_args_is_help=True)

SHORT_ID = 8
METRIC_COLUMNS = 5
NOTABLE_PACKAGES = (
    "loopml",
    "numpy",
    "pandas",
    "scikit-learn",
    "lightgbm",
    "xgboost",
    "torch",
    "onnxruntime",
)


@contextmanager
def _project(path: Path) -> Iterator[Project]:
    """The project, closed afterwards; loopml's own errors become a message and exit code 1."""
    try:
        project = open_project(path)
    except LoopmlError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    try:
        yield project
    except LoopmlError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        project.close()


@app.command("list")
def list_runs(
    pipeline: str | None = typer.Option(None, "--pipeline", help="Only runs of this pipeline."),
    filter: str = typer.Option(
        "",
        "--filter",
        "-f",
        help="e.g. \"metrics.auc > 0.8 and params.model = 'gbm' and tags.team = 'risk'\".",
    ),
    order_by: list[str] | None = typer.Option(
        None, "--order-by", "-o", help="e.g. 'metrics.auc DESC' (repeatable); newest first by default."
    ),
    max_results: int = typer.Option(20, "--max", "-n", min=1, help="Show at most N runs."),
    project_dir: Path = ProjectOption,
) -> None:
    """Search runs by params, metrics, tags and attributes; one row per run with its main metrics."""
    with _project(project_dir) as project:
        orders = order_by or []
        found = search_runs(project.metadata, filter, orders, max_results, pipeline)
        if not found:
            console.print(
                "No runs match." if filter or pipeline else "No runs yet; train with `loopml train`."
            )
            return
        named = _named_fields(filter, orders)
        metrics = _metric_columns(found, [key for kind, key in named if kind == "metrics"])
        texts = [(kind, key) for kind, key in named if kind in ("params", "tags")]
        table = Table("run", "name", "pipeline", "status", "started", "seconds")
        for kind, key in texts:
            table.add_column(f"{kind}.{key}")
        for key in metrics:
            table.add_column(key, justify="right")
        for run in found:
            values = [
                escape((run.params if kind == "params" else run.tags).get(key, "")) for kind, key in texts
            ]
            table.add_row(
                run.id[:SHORT_ID],
                run.name or "",
                run.pipeline,
                _status(run.status),
                f"{run.started_at:%Y-%m-%d %H:%M:%S}",
                "" if run.duration_seconds is None else f"{run.duration_seconds:.1f}",
                *values,
                *(_number(run.metrics.get(key)) for key in metrics),
            )
        console.print(table)
        if found.next_offset is not None:
            console.print(f"(first {max_results} shown; raise --max or narrow --filter for more)")


@app.command()
def show(
    run_id: str = typer.Argument(..., help="A run id or a unique prefix of it (4+ characters)."),
    project_dir: Path = ProjectOption,
) -> None:
    """A run in full: params, metrics with their step counts, tags, environment, datasets and artifacts."""
    with _project(project_dir) as project:
        run = get_run(project.metadata, resolve_run_id(project.metadata, run_id))
        counts = metric_counts(project.metadata, run.id)
        header = Table.grid(padding=(0, 2))
        for label, value in _summary(run):
            header.add_row(f"[bold]{label}[/]", value)
        console.print(header)
        _print_pairs("params", run.params)
        if run.metrics:
            table = Table("metric", "latest", "values logged", title="metrics", title_justify="left")
            for key, value in run.metrics.items():
                table.add_row(key, _number(value), str(counts.get(key, 0)))
            console.print(table)
        _print_pairs("tags", run.tags)
        _print_environment(run.environment or {})
        if run.artifacts:
            table = Table("path", "bytes", "sha256", title="artifacts", title_justify="left")
            for path, stored in run.artifacts.items():
                table.add_row(path, "" if stored.size is None else f"{stored.size:,}", stored.digest[:12])
            console.print(table)


@app.command()
def compare(
    run_ids: list[str] = typer.Argument(..., help="Two or more run ids (or unique prefixes)."),
    project_dir: Path = ProjectOption,
) -> None:
    """Params and latest metrics of several runs side by side; rows that differ are highlighted."""
    if len(run_ids) < 2:
        err_console.print("[red]error:[/] compare needs at least two runs.")
        raise typer.Exit(1)
    with _project(project_dir) as project:
        found = [get_run(project.metadata, resolve_run_id(project.metadata, r)) for r in run_ids]
        table = Table("", *(f"{r.name or ''} {r.id[:SHORT_ID]}".strip() for r in found), "")
        for kind in ("params", "metrics"):
            keys = sorted({key for run in found for key in getattr(run, kind)})
            for key in keys:
                values = [getattr(run, kind).get(key) for run in found]
                cells = [
                    _number(v) if kind == "metrics" else ("" if v is None else escape(str(v))) for v in values
                ]
                differs = len(set(cells)) > 1
                table.add_row(
                    f"{kind}.{key}", *cells, "≠" if differs else "", style="bold yellow" if differs else None
                )
        table.add_row("status", *(_status(r.status) for r in found), "")
        console.print(table)


@app.command()
def delete(
    run_id: str = typer.Argument(..., help="A run id or a unique prefix of it."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Delete its child runs too."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    project_dir: Path = ProjectOption,
) -> None:
    """Delete a run with its metrics, params, tags, pipeline runs and the artifact files nobody else uses."""
    with _project(project_dir) as project:
        full_id = resolve_run_id(project.metadata, run_id)
        tracker = project.tracker(capture_environment=False)
        plan = tracker.plan_deletion(full_id, recursive=recursive)
        children = len(plan.run_ids) - 1
        console.print(
            f"Run {full_id}{f' and {children} child run(s)' if children else ''}: "
            f"{len(plan.pipeline_run_ids)} pipeline run(s), {plan.artifact_paths} artifact file(s), "
            f"{len(plan.blobs)} stored blob(s) no other run or model uses."
        )
        if not yes and not typer.confirm("Delete them?", default=False):
            console.print("Nothing deleted.")
            raise typer.Exit(1)
        deleted = tracker.delete_run(full_id, recursive=recursive)
        tracker.close()
        console.print(f"Deleted {len(deleted.run_ids)} run(s) and {len(deleted.blobs)} blob(s).")


# --------------------------------------------------------------------------------------------- helpers


def _named_fields(filter: str, order_by: list[str]) -> list[tuple[str, str]]:
    """(kind, key) of the fields a search names, in order, without repeats: they get columns first."""
    named = [(c.kind, c.key) for c in parse_filter(filter)] + [
        (o.kind, o.key) for o in map(parse_order, order_by)
    ]
    return list(dict.fromkeys(named))


def _metric_columns(found: list[Run], wanted: list[str]) -> list[str]:
    """The metrics a search named, then the most common ones on the page, at most METRIC_COLUMNS."""
    common = Counter(key for run in found for key in run.metrics)
    columns = list(dict.fromkeys([*wanted, *(key for key, _ in common.most_common())]))
    return columns[: max(METRIC_COLUMNS, len(wanted))]


def _summary(run: Run) -> list[tuple[str, str]]:
    rows = [
        ("run", run.id),
        ("name", run.name or ""),
        ("pipeline", run.pipeline),
        ("status", _status(run.status)),
        ("started", f"{run.started_at:%Y-%m-%d %H:%M:%S} UTC"),
    ]
    if run.ended_at is not None:
        rows.append(("ended", f"{run.ended_at:%Y-%m-%d %H:%M:%S} UTC ({run.duration_seconds:.1f} s)"))
    if run.parent_run_id:
        rows.append(("parent", run.parent_run_id))
    if run.dataset_id:
        rows.append(("dataset", run.dataset_id))
    if run.error:
        rows.append(("error", f"[red]{escape(run.error)}[/]"))
    return rows


def _print_pairs(title: str, pairs: dict[str, str]) -> None:
    if pairs:
        table = Table("key", "value", title=title, title_justify="left")
        for key, value in pairs.items():
            table.add_row(escape(key), escape(value))
        console.print(table)


def _print_environment(environment: dict[str, Any]) -> None:
    if not environment:
        return
    table = Table.grid(padding=(0, 2))
    python = environment.get("python") or {}
    system = environment.get("platform") or {}
    git = environment.get("git")
    packages = environment.get("packages") or {}
    table.add_row("python", f"{python.get('version', '?')} ({python.get('implementation', '?')})")
    table.add_row(
        "platform", " ".join(str(system.get(k, "")) for k in ("system", "release", "machine")).strip()
    )
    if git:
        table.add_row("git", f"{str(git.get('commit'))[:12]}{' (dirty)' if git.get('dirty') else ''}")
    else:
        table.add_row("git", "not a git work tree")
    notable = ", ".join(f"{name} {packages[name]}" for name in NOTABLE_PACKAGES if name in packages)
    table.add_row("packages", f"{len(packages)} installed{': ' + notable if notable else ''}")
    for dataset in environment.get("datasets") or []:
        table.add_row(
            "dataset",
            f"{dataset.get('name')} ({dataset.get('context')}, {dataset.get('n_rows')} rows) {dataset.get('id')}",
        )
    console.print("[bold]environment[/]")
    console.print(table)


def _status(status: str) -> str:
    colour = {"finished": "green", "failed": "red", "running": "cyan", "killed": "yellow"}.get(status)
    return f"[{colour}]{status}[/]" if colour else status


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.6g}"
