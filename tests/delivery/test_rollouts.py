"""Rollouts on a simulated clock, from logged traffic: promoted through every step when healthy, rolled back at
the next analysis when the candidate breaches, held when inconclusive, and the operator's controls."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from loopml.delivery.analysis import AnalysisSettings
from loopml.delivery.rollouts import (
    ABORTED,
    PAUSED,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    RolloutSpec,
    abort,
    active_rollout,
    list_rollouts,
    notify,
    pause,
    promote_now,
    reconcile,
    resume,
    start_rollout,
    tick_rollouts,
)
from loopml.errors import NotFoundError, ValidationError
from loopml.project import Project
from loopml.serving.endpoints import deploy, get_endpoint
from loopml.serving.prediction_log import (
    ERROR_SCHEMA,
    ERRORS,
    PREDICTION_SCHEMA,
    PREDICTIONS,
    append_by_day,
    record_table,
)

SPEC_FAST = RolloutSpec(
    steps=(5.0, 25.0, 100.0),
    min_step_minutes=10,
    min_step_requests=60,
    analysis_interval_minutes=1,
    analysis=AnalysisSettings(min_requests=60),
)
SCORES = np.linspace(0.05, 0.95, 100)


def traffic(
    project: Project,
    minutes: float,
    *,
    version: int,
    route: str,
    n: int = 100,
    latency_ms: float = 2.0,
    shift: float = 0.0,
    errors: int = 0,
    mirrors: list[str] | None = None,
) -> list[str]:
    """`n` logged predictions (and `errors` failed requests) of one version over the last `minutes`; with
    `mirrors`, shadow predictions of those served ones. Returns the prediction ids."""
    now = project.clock.now()
    times = [now - timedelta(minutes=minutes) + timedelta(minutes=minutes) * i / n for i in range(n)]
    rows = [
        {
            "prediction_id": f"{route}-{version}-{now.timestamp()}-{i}",
            "ts": ts,
            "endpoint": "toy",
            "model_name": "toy",
            "model_version": version,
            "route": route,
            "served": route != "shadow",
            "output": float(np.clip(SCORES[i % len(SCORES)] + shift, 0, 1)),
            "latency_seconds": latency_ms / 1000,
            "mirrors": mirrors[i] if mirrors else None,
        }
        for i, ts in enumerate(times)
    ]
    append_by_day(project.offline, PREDICTIONS, record_table(rows, PREDICTION_SCHEMA))
    if errors:
        failed = [
            {
                "ts": times[i],
                "endpoint": "toy",
                "model_name": "toy",
                "model_version": version,
                "route": route,
                "served": route != "shadow",
                "status": 500,
                "error": "RuntimeError: boom",
            }
            for i in range(errors)
        ]
        append_by_day(project.offline, ERRORS, record_table(failed, ERROR_SCHEMA))
    return [row["prediction_id"] for row in rows]


def step_minutes(
    project: Project, clock, minutes: float, candidate_route: str = "canary", **candidate
) -> None:
    clock.advance(timedelta(minutes=minutes))
    served = traffic(project, minutes, version=1, route="primary")
    paired = {"mirrors": served} if candidate_route == "shadow" else {}
    traffic(project, minutes, version=2, route=candidate_route, **paired, **candidate)


def routes(project: Project) -> dict[str, tuple[int | None, float]]:
    return {r.name: (r.version, r.weight) for r in get_endpoint(project.metadata, "toy").routes}


def kinds(project: Project) -> list[str]:
    return [
        e.kind
        for e in project.metadata.events(subject_prefix="endpoint:toy")
        if e.kind.startswith("rollout.")
    ]


def test_a_healthy_canary_is_promoted_through_every_step(candidate: Project, clock) -> None:
    rollout = start_rollout(candidate, "toy", 2, spec=SPEC_FAST)
    assert routes(candidate)["canary"] == (2, 5.0)
    step_minutes(candidate, clock, 5)
    [early] = tick_rollouts(candidate)
    assert early.action == "analysed" and "step not done" in early.reason  # passing, too soon to move
    step_minutes(candidate, clock, 6)
    [advanced] = tick_rollouts(candidate)
    assert advanced.action == "advanced" and routes(candidate)["canary"] == (2, 25.0)
    assert advanced.evidence["verdict"] == "pass"
    step_minutes(candidate, clock, 11)
    [promoted] = tick_rollouts(candidate)
    assert promoted.action == PROMOTED
    assert candidate.registry.get_alias("toy", "champion") == 2
    assert set(routes(candidate)) == {"primary"}
    assert list_rollouts(candidate)[0].state == PROMOTED and list_rollouts(candidate)[0].id == rollout.id
    assert kinds(candidate) == ["rollout.started", "rollout.analysed", "rollout.advanced", "rollout.promoted"]
    assert tick_rollouts(candidate) == []


@pytest.mark.parametrize(
    ("breach", "check"),
    [({"latency_ms": 40.0}, "p99_latency"), ({"errors": 20}, "error_rate"), ({"shift": 0.4}, "output_drift")],
)
def test_a_canary_that_breaches_is_rolled_back_at_the_next_analysis(
    candidate: Project, clock, breach, check
) -> None:
    start_rollout(candidate, "toy", 2, spec=SPEC_FAST)
    step_minutes(candidate, clock, 1, **breach)
    [decision] = tick_rollouts(candidate)
    assert decision.action == ROLLED_BACK and f"{check} fail" in decision.reason
    failed = next(c for c in decision.evidence["checks"] if c["name"] == check)
    assert failed["status"] == "fail" and failed["candidate"] is not None
    assert set(routes(candidate)) == {"primary"} and candidate.registry.get_alias("toy", "champion") == 1
    assert kinds(candidate)[-1] == "rollout.rolled_back"
    with pytest.raises(NotFoundError, match="no active rollout"):
        active_rollout(candidate, "toy")


def test_an_inconclusive_canary_holds_and_says_so_once(candidate: Project, clock) -> None:
    start_rollout(candidate, "toy", 2, spec=SPEC_FAST)
    for _ in range(3):
        clock.advance(timedelta(minutes=15))
        traffic(candidate, 15, version=1, route="primary")
        traffic(candidate, 15, version=2, route="canary", n=10)  # far fewer than 60 requests
        tick_rollouts(candidate)
    rollout = active_rollout(candidate, "toy")
    assert (rollout.state, rollout.step, rollout.last_verdict) == (RUNNING, 0, "inconclusive")
    assert kinds(candidate) == ["rollout.started", "rollout.held"]
    assert routes(candidate)["canary"] == (2, 5.0)


def test_analyses_wait_for_their_interval(candidate: Project, clock) -> None:
    start_rollout(candidate, "toy", 2, spec=SPEC_FAST)
    step_minutes(candidate, clock, 5)
    assert len(tick_rollouts(candidate)) == 1
    clock.advance(timedelta(seconds=20))
    traffic(candidate, 0.3, version=2, route="canary", latency_ms=80.0)
    assert tick_rollouts(candidate) == []  # within the interval: no analysis, however bad
    assert active_rollout(candidate, "toy").state == RUNNING


def test_a_shadow_phase_comes_first_and_never_serves(candidate: Project, clock) -> None:
    spec = RolloutSpec(**{**SPEC_FAST.__dict__, "shadow_minutes": 5.0})
    start_rollout(candidate, "toy", 2, spec=spec)
    assert routes(candidate)["shadow"] == (2, 100.0) and "canary" not in routes(candidate)
    step_minutes(candidate, clock, 11, candidate_route="shadow", latency_ms=80.0)  # scored at idle priority
    [decision] = tick_rollouts(candidate)
    assert decision.action == "advanced" and "canary step 1 of 2 (5%)" in decision.reason
    latency = next(c for c in decision.evidence["checks"] if c["name"] == "p99_latency")
    assert latency["status"] == "skipped" and "idle priority" in latency["reason"]
    assert routes(candidate) == {"primary": (None, 100.0), "canary": (2, 5.0)}


def test_paused_rollouts_hold_and_operators_can_promote_or_abort(candidate: Project, clock) -> None:
    start_rollout(candidate, "toy", 2, spec=SPEC_FAST)
    assert pause(candidate, "toy").state == PAUSED
    step_minutes(candidate, clock, 2, latency_ms=80.0)
    assert tick_rollouts(candidate) == []  # paused: even a breach moves nothing
    with pytest.raises(ValidationError, match="already paused"):
        pause(candidate, "toy")
    assert resume(candidate, "toy").state == RUNNING
    assert promote_now(candidate, "toy").action == PROMOTED
    assert candidate.registry.get_alias("toy", "champion") == 2

    start_rollout(candidate, "toy", 1, spec=SPEC_FAST)  # and back: version 1 as the candidate now
    assert abort(candidate, "toy").action == ABORTED
    assert set(routes(candidate)) == {"primary"} and candidate.registry.get_alias("toy", "champion") == 2


def test_a_decision_on_a_rollout_that_moved_meanwhile_is_dropped(candidate: Project, clock) -> None:
    start_rollout(candidate, "toy", 2, spec=SPEC_FAST)
    stale = active_rollout(candidate, "toy")
    abort(candidate, "toy")
    step_minutes(candidate, clock, 2, latency_ms=80.0)
    assert reconcile(candidate, stale) is None  # no second ending, no event, and its route stays gone
    assert kinds(candidate) == ["rollout.started", "rollout.aborted"]
    assert set(routes(candidate)) == {"primary"}


def test_bad_rollouts_are_refused_with_what_to_do(candidate: Project) -> None:
    with pytest.raises(ValidationError, match="end at 100"):
        RolloutSpec(steps=(5.0, 50.0))
    with pytest.raises(ValidationError, match="already serves"):
        start_rollout(candidate, "toy", 1)
    start_rollout(candidate, "toy", 2, spec=SPEC_FAST)
    with pytest.raises(ValidationError, match="already has route"):
        start_rollout(candidate, "toy", 2)
    abort(candidate, "toy")
    deploy(candidate.metadata, candidate.registry, "toy", "toy", version=1)
    with pytest.raises(ValidationError, match="must follow it"):
        start_rollout(candidate, "toy", 2)


@pytest.mark.parametrize("stage", ["advanced", "promoted", "rolled_back"])
def test_a_crash_inside_a_transition_leaves_nothing_half_done_and_a_restart_finishes_it(
    candidate: Project, clock, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    spec = SPEC_FAST if stage != "promoted" else RolloutSpec(**{**SPEC_FAST.__dict__, "steps": (5.0, 100.0)})
    start_rollout(candidate, "toy", 2, spec=spec)
    step_minutes(candidate, clock, 11, **({"latency_ms": 60.0} if stage == "rolled_back" else {}))

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed after the route and alias writes, before the commit")

    before = (
        routes(candidate),
        candidate.registry.get_alias("toy", "champion"),
        len(candidate.metadata.events()),
    )
    row_before = active_rollout(candidate, "toy")
    monkeypatch.setattr("loopml.delivery.rollouts._event", crash)
    with pytest.raises(RuntimeError, match="killed"):
        tick_rollouts(candidate)
    monkeypatch.undo()
    after = (
        routes(candidate),
        candidate.registry.get_alias("toy", "champion"),
        len(candidate.metadata.events()),
    )
    assert after == before and active_rollout(candidate, "toy") == row_before

    [decision] = tick_rollouts(candidate)  # the restarted controller
    assert decision.action == stage
    assert kinds(candidate).count(f"rollout.{stage}") == 1
    moved = [e for e in candidate.metadata.events() if e.kind == "alias.moved" and "rollout" in e.reason]
    assert len(moved) == (1 if stage == "promoted" else 0)
    assert candidate.registry.get_alias("toy", "champion") == (2 if stage == "promoted" else 1)


def test_a_shadow_that_answers_the_same_requests_differently_is_rolled_back(
    candidate: Project, clock
) -> None:
    spec = RolloutSpec(**{**SPEC_FAST.__dict__, "shadow_minutes": 5.0})
    start_rollout(candidate, "toy", 2, spec=spec)
    clock.advance(timedelta(minutes=11))
    served = traffic(candidate, 11, version=1, route="primary")
    # The same score distribution (no output drift) but shuffled against the requests: decisions flip.
    reordered = served[50:] + served[:50]
    traffic(candidate, 11, version=2, route="shadow", mirrors=reordered)
    [decision] = tick_rollouts(candidate)
    assert decision.action == ROLLED_BACK and "paired_outputs fail" in decision.reason
    paired = next(c for c in decision.evidence["checks"] if c["name"] == "paired_outputs")
    drift = next(c for c in decision.evidence["checks"] if c["name"] == "output_drift")
    assert paired["candidate"] > 0.3 and drift["status"] == "pass"


def test_holds_and_rollbacks_are_sent_to_a_webhook(candidate: Project, clock, webhook) -> None:
    url, received = webhook
    start_rollout(candidate, "toy", 2, spec=SPEC_FAST)
    clock.advance(timedelta(minutes=2))
    traffic(candidate, 2, version=1, route="primary")
    traffic(candidate, 2, version=2, route="canary", n=5)
    notify(url, tick_rollouts(candidate))
    step_minutes(candidate, clock, 2, latency_ms=80.0)
    notify(url, tick_rollouts(candidate))
    assert [body["rollouts"][0]["action"] for body in received] == ["held", ROLLED_BACK]
    assert "p99_latency fail" in received[1]["rollouts"][0]["reason"]
    assert received[1]["rollouts"][0]["evidence"]["verdict"] == "fail"
