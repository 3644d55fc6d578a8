"""`loopml monitor`: drift, data quality and performance of deployed models, alerts, gauges and reports."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from prometheus_client import start_http_server
from rich.table import Table

from loopml.cli.common import ProjectOption, console, open_project, parse_duration, parse_time
from loopml.errors import ValidationError
from loopml.monitoring.alerts import AlertManager, Sink, WebhookSink
from loopml.monitoring.drift import CRITICAL, WARNING, DriftSettings
from loopml.monitoring.metrics import MonitorMetrics
from loopml.monitoring.model_drift import model_drift
from loopml.monitoring.monitor import Monitor, MonitorSettings, WindowResult
from loopml.monitoring.report import render_report, write_json
from loopml.monitoring.windows import WindowSpec
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


SinceOption = typer.Option("7d", help="How far back from --at to monitor (e.g. 6h, 7d).")
AtOption = typer.Option(None, help="End of the range (ISO time); default now.")
WindowOption = typer.Option("1d", help="Tumbling windows of this length (e.g. 1h, 1d).")
StepOption = typer.Option(None, help="Rolling windows: start one every STEP (each --window long).")
CountOption = typer.Option(None, help="Windows of this many predictions instead of time windows.")


@app.command()
def run(
    endpoint: str,
    since: str = SinceOption,
    at: str | None = AtOption,
    window: str = WindowOption,
    step: str | None = StepOption,
    count: int | None = CountOption,
    webhook: list[str] = typer.Option([], help="POST alerts as JSON to this URL (repeatable)."),
    cooldown: str = typer.Option("6h", help="Send an alert that keeps firing again only after this long."),
    metrics_file: Path | None = typer.Option(
        None, help="Write the model-health gauges here (textfile format)."
    ),
    metrics_port: int | None = typer.Option(None, help="Serve the gauges on this port (with --every)."),
    every: str | None = typer.Option(None, help="Run again every DURATION until interrupted."),
    project_dir: Path = ProjectOption,
) -> None:
    """Monitor an endpoint: drift, data quality and performance per window; alerts; gauges."""
    project = open_project(project_dir)
    settings = MonitorSettings(window=_window_spec(window, step, count))
    sinks: list[Sink] = [WebhookSink(url) for url in webhook]  # the console gets them below
    manager = AlertManager(project.metadata, sinks, cooldown=parse_duration(cooldown))
    metrics = MonitorMetrics()
    if metrics_port is not None:
        start_http_server(metrics_port, registry=metrics.registry)
    while True:
        end = parse_time(at, project)
        with console.status(f"monitoring {endpoint} ({settings.window.describe()})"):
            results = Monitor(project, settings).run(endpoint, end - parse_duration(since), end)
            notifications = manager.evaluate(results, settings)
        metrics.update(results, manager.firing())
        if metrics_file is not None:
            metrics.write(metrics_file)
        console.print(_summary(endpoint, results))
        for n in notifications:
            console.print(f"[bold]{n.event}[/] {n.alert.severity} {n.alert.key}: {n.alert.message}")
        if every is None:
            return
        time.sleep(parse_duration(every).total_seconds())


@app.command()
def status(endpoint: str | None = typer.Argument(None), project_dir: Path = ProjectOption) -> None:
    """The alerts firing now, worst first, and why."""
    project = open_project(project_dir)
    firing = AlertManager(project.metadata).firing(endpoint)
    if not firing:
        console.print("No alert is firing" + (f" for endpoint '{endpoint}'." if endpoint else "."))
        return
    table = Table("severity", "endpoint", "version", "check", "feature", "why", "since", "last sent")
    for alert in firing:
        table.add_row(
            alert["severity"],
            alert["endpoint"],
            f"{alert['model_name']}/{alert['version']}",
            alert["check_name"],
            alert["feature"],
            alert["message"],
            f"{alert['first_fired_at']:%Y-%m-%d %H:%M}",
            f"{alert['notified_at']:%Y-%m-%d %H:%M}" if alert["notified_at"] else "-",
            style={CRITICAL: "red", WARNING: "yellow"}.get(alert["severity"]),
        )
    console.print(table)


@app.command()
def report(
    endpoint: str,
    since: str = SinceOption,
    at: str | None = AtOption,
    window: str = WindowOption,
    step: str | None = StepOption,
    count: int | None = CountOption,
    out: Path = typer.Option(Path("monitor-report.html"), help="The HTML report to write."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results as JSON here."),
    project_dir: Path = ProjectOption,
) -> None:
    """Write a self-contained HTML report (and optionally JSON) of an endpoint's monitoring."""
    project = open_project(project_dir)
    settings = MonitorSettings(window=_window_spec(window, step, count))
    end = parse_time(at, project)
    monitor = Monitor(project, settings)
    with console.status(f"monitoring {endpoint}"):
        results = monitor.run(endpoint, end - parse_duration(since), end)
    firing = AlertManager(project.metadata).firing(endpoint)
    references = {
        (r.model_name, r.version): monitor.reference(project.registry.get_version(r.model_name, r.version))
        for r in results
    }
    title = f"loopml monitoring: endpoint {endpoint}, {end - parse_duration(since):%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"
    out.write_text(render_report(title, results, references, firing))
    console.print(f"wrote {out}")
    if json_out is not None:
        write_json(json_out, results, firing)
        console.print(f"wrote {json_out}")


def _window_spec(window: str, step: str | None, count: int | None) -> WindowSpec:
    if count is not None:
        return WindowSpec.count(count)
    if step is not None:
        return WindowSpec.rolling(parse_duration(window), parse_duration(step))
    return WindowSpec.tumbling(parse_duration(window))


def _summary(endpoint: str, results: list[WindowResult]) -> Table:
    table = Table(
        "version",
        "window",
        "predictions",
        "drift share",
        "severity",
        "quality failures",
        "labels",
        "model metric",
        title=f"{endpoint}: {len(results)} window(s)",
    )
    for r in results:
        metric = r.performance.metrics.get(r.metric) if r.performance.metrics else None
        table.add_row(
            f"{r.model_name}/{r.version}",
            f"{r.start:%m-%d %H:%M} to {r.end:%m-%d %H:%M}",
            str(r.predictions),
            f"{r.drift.share:.2f}",
            r.drift.severity,
            str(sum(not c.passed for c in r.quality)),
            f"{r.performance.coverage:.0%} ({r.performance.status})",
            "-" if metric is None else f"{r.metric} {metric:.3f}",
        )
    return table
