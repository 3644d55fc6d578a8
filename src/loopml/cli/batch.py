"""`loopml batch-score MODEL_REF`: a model version over a Parquet dataset, optionally filling the cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from loopml.cli.common import ProjectOption, console, open_project
from loopml.serving.batch import DEFAULT_CHUNK_ROWS
from loopml.serving.batch import batch_score as run_batch


def batch_score(
    model_ref: str = typer.Argument(..., help="The model version: name@alias or name/version."),
    input_path: str = typer.Option(
        ..., "--input", "-i", help="Parquet file, directory of Parquet files, or a glob (quote it)."
    ),
    output_path: Path = typer.Option(..., "--output", "-o", help="Parquet file to write (replaced whole)."),
    fill_cache: bool = typer.Option(
        False,
        "--fill-cache",
        help="Also write each entity's prediction to the online store, for endpoints with a cache max age.",
    ),
    chunk_rows: int = typer.Option(DEFAULT_CHUNK_ROWS, min=1, help="Rows read and scored at a time."),
    nan_policy: str = typer.Option(
        "stored",
        help="Nulls: 'stored' (allowed in stored features, refused in request inputs), 'reject' or 'allow'.",
    ),
    keep: list[str] | None = typer.Option(
        None, "--keep", help="Input column to copy to the output (repeatable)."
    ),
    project_dir: Path = ProjectOption,
) -> None:
    """Score a Parquet dataset with a model version, by the server's scoring code, into a Parquet file."""
    project = open_project(project_dir)
    bar = _ProgressBar(model_ref)
    try:
        with bar.progress:
            result = run_batch(
                project,
                model_ref,
                input_path,
                output_path,
                fill_cache=fill_cache,
                chunk_rows=chunk_rows,
                nan_policy=nan_policy,
                keep=keep or (),
                progress=bar,
            )
    finally:
        project.close()
    console.print(
        f"Scored [bold]{result.rows:,}[/] rows with {result.model_name}/{result.model_version} in "
        f"{result.seconds:.2f} s ({result.rows_per_second:,.0f} rows/s) into {result.output}"
    )
    if fill_cache:
        console.print(f"Cache entries written: [bold]{result.cache_written:,}[/]")


class _ProgressBar:
    """One rich progress bar counting the rows scored, chunk by chunk."""

    def __init__(self, model_ref: str) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.model_ref = model_ref
        self.task: TaskID | None = None

    def started(self, total_rows: int) -> None:
        self.task = self.progress.add_task(f"scoring {self.model_ref}", total=total_rows)

    def rows_scored(self, rows: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, rows)

    def cache_filling(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=f"filling the cache of {self.model_ref}")
