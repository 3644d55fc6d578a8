"""What every command shares: the console, the project option, and parsing of times and durations."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console

from loopml.clock import Clock, FileClock, as_utc
from loopml.errors import ValidationError
from loopml.project import Project

# Piped output (logs, CI) gets room for tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

ProjectOption = typer.Option(Path("."), "--project", "-p", help="Project directory (holds loopml.yaml).")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def open_project(path: Path, clock_file: Path | None = None) -> Project:
    clock: Clock | None = FileClock(clock_file) if clock_file else None
    return Project(path, clock=clock)


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValidationError(
            f"Duration {text!r} is not understood; write a number and a unit: 90s, 15m, 6h, 2d, 1w."
        )
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def parse_time(text: str | None, project: Project) -> datetime:
    """An ISO timestamp (UTC unless it says otherwise), or 'now' by the project's clock."""
    if text is None or text == "now":
        return project.clock.now()
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError as exc:
        raise ValidationError(
            f"Time {text!r} is not ISO 8601; write e.g. 2026-03-01 or 2026-03-01T12:00:00."
        ) from exc
