"""`loopml monitor`: drift of a deployed model against its training data."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project, parse_duration, parse_time
from loopml.errors import ValidationError
from loopml.monitoring.drift import CRITICAL, WARNING, DriftSettings
from loopml.monitoring.model_drift import model_drift
from loopml.serving.endpoints import get_endpoint, route_versions

app = typer.Typer(help="Drift and health of deployed models.", no_args_is_help=True)


@app.command()
def drift(
    endpoint: str,
    window: str = typer.Option("1d", help="How far back from --at to read predictions (e.g. 6h, 2d)."),
    at: str | None = typer.Option(None, help="End of the window (ISO time); default now."),
    threshold: float = typer.Option(
        0.05, help="p-value below which a p-value test warns (critical below 0.01 or this, if lower)."
    ),
    project_dir: Path = ProjectOption,
) -> None:
    """Per-feature drift between the served model's training set and recent predictions."""
    project = open_project(project_dir)
    served = route_versions(project.registry, get_endpoint(project.metadata, endpoint))
    if "primary" not in served:
        raise ValidationError(f"Endpoint '{endpoint}' serves no version: its primary route's alias is unset.")
    version = served["primary"]
    end = parse_time(at, project)
    report = model_drift(
        project.metadata,
        project.offline,
        version,
        endpoint,
        end - parse_duration(window),
        end,
        settings=DriftSettings(p_value_warning=threshold, p_value_critical=min(threshold, 0.01)),
        reference=project.registry.reference_profile(version),
    )
    table = Table(
        "feature",
        "method",
        "statistic",
        "p-value",
        "warning",
        "critical",
        "reference",
        "current",
        "severity",
        "why",
    )
    for f in report.features:
        style = {CRITICAL: "red", WARNING: "yellow"}.get(f.severity)
        table.add_row(
            f.feature,
            f.method,
            _num(f.statistic),
            _num(f.p_value),
            _num(f.warning),
            _num(f.critical),
            str(f.n_reference),
            str(f.n_current),
            f.severity,
            f.reason,
            style=style,
        )
    console.print(
        f"{version.ref} on endpoint '{endpoint}', predictions from {end - parse_duration(window):%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"
    )
    console.print(table)
    console.print(
        f"drift share: {report.share:.2f} ({len(report.drifted_features)} of {len(report.evaluated)} features)"
    )
    if report.prediction is not None:
        output = report.prediction
        console.print(
            f"output drift ({output.method}): {_num(output.statistic)}, {output.severity}"
            + (f" ({output.reason})" if output.reason else "")
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
