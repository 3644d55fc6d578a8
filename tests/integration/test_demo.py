"""The shortened demo end to end: drift after the change (not before), promotions through rollouts, the automatic
rollback of a wrong candidate, a better model, all asserted from the events."""

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
    by_rollouts = [e for e in moves if e.actor == "controller" and e.reason.startswith("rollout ")]
    assert by_rollouts, "no rollout ever promoted a model"
    for move in by_rollouts:  # each promoted candidate had passed the gate, then every rollout step
        version = project.registry.get_version("fraud-detector", move.data["to_version"])
        assert version.gate["passed"] and version.gate["candidate"] > version.gate["champion"]
        assert move.ts.date().isoformat() > result.change_date
    promoted = [e for e in project.metadata.events(kind="rollout.promoted")]
    assert [e.data["candidate_version"] for e in promoted] == [m.data["to_version"] for m in by_rollouts]
    assert all(e.data["verdict"] == "pass" for e in promoted)
    champion = project.registry.get_alias("fraud-detector", "champion")
    assert champion == by_rollouts[-1].data["to_version"] and champion > 1

    # The wrong candidate (inverted labels) went to the canary and came back on its own, never champion.
    wrong = [
        int(e.subject.rsplit("/", 1)[1])
        for e in project.metadata.events(kind="model.registered")
        if e.reason.endswith("inverted labels")
    ]
    assert wrong, "the demo never sent out its wrong candidate"
    rolled_back = [
        e for e in project.metadata.events(kind="rollout.rolled_back") if e.data["candidate_version"] in wrong
    ]
    assert rolled_back and "output_drift fail" in rolled_back[0].reason
    assert all(e.actor == "controller" for e in rolled_back)
    assert not any(m.data["to_version"] in wrong for m in moves)
    assert any(r.action == "rolled_back" and r.candidate in wrong for r in result.rollouts)

    after = result.comparison[result.comparison.period == "after the change"].set_index("version")
    assert after.loc[champion, "roc_auc"] > after.loc[1, "roc_auc"]
    assert after.loc[champion, "rows"] >= 200
    assert result.report_path.exists()
    html = result.report_path.read_text()
    assert "<svg" in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
