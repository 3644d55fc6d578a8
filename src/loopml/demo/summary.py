"""The demo's closing summary on the terminal, and the shorter configuration used by `--quick` and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loopml.demo.runner import DemoConfig, DemoResult
from loopml.demo.world import WorldConfig


def quick_config(workdir: Path) -> DemoConfig:
    """A smaller world (fewer users, fewer days after the change) that still shows the whole loop."""
    return DemoConfig(
        workdir=workdir,
        world=WorldConfig(n_users=800, n_merchants=120, transactions_per_day=260, days=79, change_day=59),
    )


def summarise(result: DemoResult, console: Console) -> None:
    versions = Table(
        "version",
        "registered",
        "training rows",
        "validation ROC AUC",
        "gate",
        "champion",
        title="Model versions",
    )
    for v in result.versions:
        gate = _gate(v["gate"], v["version"])
        auc = "" if v["validation_auc"] is None else f"{v['validation_auc']:.3f}"
        versions.add_row(
            f"v{v['version']}",
            v["created"],
            str(v["training_rows"]),
            auc,
            gate,
            "yes" if v["champion"] else "",
        )
    console.print(versions)

    first = next((d for d in result.days if d.date == result.first_drift_date), None)
    console.print(f"World changed on [bold]{result.change_date}[/].")
    if first is None:
        console.print("[red]Drift was never detected.[/]")
    else:
        evidence = first.decision.evidence
        reasons = ", ".join(
            _drift_evidence(f, evidence["features"][f], evidence["p_values"][f])
            for f in evidence["drifted_features"]
        )
        console.print(
            f"Drift detected at the end of [bold]{first.date}[/]: share {first.decision.evidence['drift_share']:.2f} "
            f"of inputs drifted: {reasons}."
        )
    promotions = ", ".join(f"v{v} on {d}" for d, v in result.promotions) or "none"
    console.print(f"Promotions by the controller: {promotions}.")
    if result.rollouts:
        rollouts = Table(
            "time", "rollout", "candidate", "decision", "candidate's traffic", "why", title="Rollouts"
        )
        for r in result.rollouts:
            if r.action in ("held", "analysed"):
                continue
            rollouts.add_row(r.time, str(r.rollout), f"v{r.candidate}", r.action, f"{r.share:g}%", r.reason)
        console.print(rollouts)

    comparison = Table(
        "version",
        "period",
        "from",
        "to",
        "rows",
        "ROC AUC",
        "average precision",
        title="Each champion on the same transactions, before and after the change",
    )
    for row in result.comparison.to_dict("records"):
        comparison.add_row(
            f"v{row['version']}",
            row["period"],
            row["from"],
            row["to"],
            str(row["rows"]),
            f"{row['roc_auc']:.3f}",
            f"{row['average_precision']:.3f}",
        )
    console.print(comparison)
    console.print(f"Finished in {result.seconds:.0f} s. Report: [bold]{result.report_path}[/]")


def _gate(gate: dict | None, version: int) -> str:
    if gate is None:
        return "first model" if version == 1 else "no gate (sent out by hand)"
    verdict = "passed" if gate["passed"] else "failed"
    if gate["champion"] is None:
        return verdict
    return f"{verdict}: {gate['candidate']:.3f} vs champion {gate['champion']:.3f}"


def _drift_evidence(feature: str, measured: dict[str, Any], p_value: float | None) -> str:
    if p_value is not None:
        return f"{feature} ({measured['method']} p={p_value:.1e})"
    return f"{feature} ({measured['method']} {measured['statistic']:.3g})"
