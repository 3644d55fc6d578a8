"""`loopml feedback FILE`: attach labels to logged predictions in bulk, from a CSV or Parquet file."""

from __future__ import annotations

from pathlib import Path

import typer

from loopml.cli.common import ProjectOption, console, open_project
from loopml.serving.feedback import record_feedback_file


def feedback(
    file: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="CSV or Parquet file with the columns prediction_id,label and optionally ts (default: now).",
    ),
    project_dir: Path = ProjectOption,
) -> None:
    """Record labels for logged predictions from a file; the latest label of a prediction (by ts) wins."""
    project = open_project(project_dir)
    try:
        written = record_feedback_file(project.offline, file, clock=project.clock)
    finally:
        project.close()
    noun = "label" if written == 1 else "labels"
    console.print(f"Recorded [bold]{written:,}[/] {noun} from {file}")
