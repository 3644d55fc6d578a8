"""`loopml materialize`: offline → online, with a progress bar per view and a summary of the runs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project, parse_duration, parse_time
from loopml.errors import MaterializationError
from loopml.features.runs import FAILED, MaterializationRun


def materialize(
    end: str | None = typer.Option(
        None, help="Load values with event time up to this ISO time (default now)."
    ),
    start: str | None = typer.Option(None, help="From this ISO time (default: end minus each view's ttl)."),
    incremental: bool = typer.Option(
        False,
        "--incremental",
        help="Continue each view from the end of its last successful run; a view whose definition changed "
        "since starts over from end minus ttl.",
    ),
    lookback: str | None = typer.Option(
        None,
        help="With --incremental, re-read this much before where the last run ended, for rows that arrived "
        "late (e.g. 1h).",
    ),
    view: list[str] | None = typer.Option(None, "--view", help="Only this feature view (repeatable)."),
    project_dir: Path = ProjectOption,
) -> None:
    """Copy feature values from the offline sources into the online store, recording a run per view."""
    project = open_project(project_dir)
    bars = _ProgressBars()
    try:
        with bars.progress:
            written = project.materialize(
                end=parse_time(end, project),
                start=None if start is None else parse_time(start, project),
                views=view or None,
                incremental=incremental,
                lookback=timedelta(0) if lookback is None else parse_duration(lookback),
                progress=bars,
            )
    except MaterializationError:
        _print_summary(bars.finished, {})
        raise
    _print_summary(bars.finished, written)


class _ProgressBars:
    """One rich progress bar per view, counting the rows written batch by batch."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f} rows"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[int, TaskID] = {}
        self.finished: list[MaterializationRun] = []

    def view_started(self, run: MaterializationRun) -> None:
        self.tasks[run.id] = self.progress.add_task(f"{run.view} v{run.view_version}", total=None)

    def rows_written(self, run: MaterializationRun, rows: int) -> None:
        self.progress.advance(self.tasks[run.id], rows)

    def view_finished(self, run: MaterializationRun) -> None:
        mark = "[red]✗[/]" if run.status == FAILED else "[green]✓[/]"
        self.progress.update(
            self.tasks[run.id],
            total=run.rows,
            completed=run.rows,
            description=f"{mark} {run.view} v{run.view_version}",
        )
        self.finished.append(run)


def _print_summary(runs: list[MaterializationRun], written: dict[str, int]) -> None:
    if runs:
        table = Table("view", "from", "to", "rows", "status", "seconds")
        for run in runs:
            table.add_row(
                f"{run.view} v{run.view_version}",
                f"{run.start:%Y-%m-%d %H:%M:%S}",
                f"{run.end:%Y-%m-%d %H:%M:%S}",
                f"{run.rows:,}",
                run.status,
                f"{run.seconds or 0.0:.1f}",
                style="red" if run.status == FAILED else None,
            )
        console.print(table)
    ran = {run.view for run in runs}
    current = [name for name in written if name not in ran]
    if current:
        console.print(f"Up to date (earlier runs cover event time up to the end): {', '.join(current)}")
