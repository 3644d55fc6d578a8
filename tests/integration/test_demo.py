"""The shortened demo end to end: drift after the change (not before), a promotion through events, a better model."""

from datetime import date, timedelta
from pathlib import Path

import pytest

from loopml.demo import quick_config, run_demo
from loopml.project import Project


@pytest.mark.slow
def test_quick_demo_closes_the_loop(tmp_path: Path) -> None:
    result = run_demo(quick_config(tmp_path / "demo"))

    drift_days = [d.date for d in result.days if d.decision.evidence.get("drift_share", 0) > 0.3]
    assert drift_days, "drift was never detected"
    assert all(day >= result.change_date for day in drift_days), f"drift before the change: {drift_days}"
    assert result.first_drift_date == drift_days[0]
    change = date.fromisoformat(result.change_date)
    assert date.fromisoformat(drift_days[0]) <= change + timedelta(days=3), "drift found too late"
    assert (
        "merchant_category"
        in next(d for d in result.days if d.date == drift_days[0]).decision.evidence["drifted_features"]
    )

    project = Project(tmp_path / "demo")
    moves = [
        e for e in project.metadata.events(kind="alias.moved") if e.subject == "model:fraud-detector@champion"
    ]
    by_controller = [e for e in moves if e.actor == "policy:fraud_drift"]
    assert by_controller, "the controller never promoted a model"
    assert all(
        e.data["gate"]["passed"] and e.data["gate"]["candidate"] > e.data["gate"]["champion"]
        for e in by_controller
    )
    assert all(e.ts.date().isoformat() > result.change_date for e in by_controller)
    champion = project.registry.get_alias("fraud-detector", "champion")
    assert champion == by_controller[-1].data["to_version"] and champion > 1

    after = result.comparison[result.comparison.period == "after the change"].set_index("version")
    assert after.loc[champion, "roc_auc"] > after.loc[1, "roc_auc"]
    assert after.loc[champion, "rows"] >= 200
    assert result.report_path.exists()
    html = result.report_path.read_text()
    assert "<svg" in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
