"""Bandits: traffic goes to the better arm within a stated number of rewards; state survives a restart."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from loopml.delivery.bandits import (
    EPSILON_GREEDY,
    THOMPSON,
    BanditSpec,
    allocation,
    start_bandit,
    stop_bandit,
    tick_bandit,
)
from loopml.errors import ValidationError
from loopml.project import Project
from loopml.serving.endpoints import get_endpoint
from loopml.serving.prediction_log import (
    LABEL_SCHEMA,
    LABELS,
    PREDICTION_SCHEMA,
    PREDICTIONS,
    append_by_day,
    record_table,
)

RATES = {"a": 0.05, "b": 0.10}


def simulate(spec: BanditSpec, rounds: int, per_round: int, seed: int) -> tuple[dict[str, float], int]:
    """Send `per_round` requests a round by the current weights; return the last weights and the rewards seen."""
    rng = np.random.default_rng(seed)
    pulls, rewards = dict.fromkeys(spec.arms, 0), dict.fromkeys(spec.arms, 0.0)
    weights = allocation(spec, pulls, rewards)
    for _ in range(rounds):
        arms = rng.choice(list(weights), size=per_round, p=np.array(list(weights.values())) / 100)
        for arm in spec.arms:
            n = int((arms == arm).sum())
            pulls[arm] += n
            rewards[arm] += float((rng.random(n) < RATES[arm]).sum())
        weights = allocation(spec, pulls, rewards)
    return weights, int(sum(rewards.values()))


def test_thompson_sends_most_traffic_to_the_better_arm_within_250_rewards() -> None:
    spec = BanditSpec({"a": 1, "b": 2}, policy=THOMPSON)
    for seed in range(50):
        weights, seen = simulate(spec, rounds=20, per_round=100, seed=seed)  # 2,000 requests, 5% vs 10%
        assert seen <= 250, seen
        assert weights["b"] >= 80.0, (seed, weights)


def test_epsilon_greedy_gives_the_leader_one_minus_epsilon() -> None:
    spec = BanditSpec({"a": 1, "b": 2, "c": 3}, policy=EPSILON_GREEDY, epsilon=0.3, min_share=0.0)
    weights = allocation(spec, {"a": 100, "b": 100, "c": 100}, {"a": 5.0, "b": 12.0, "c": 8.0})
    assert weights == {"a": 10.0, "b": 80.0, "c": 10.0}
    assert (
        sum(allocation(BanditSpec({"a": 1, "b": 2}), {"a": 0, "b": 0}, {"a": 0.0, "b": 0.0}).values()) == 100
    )


def test_every_arm_keeps_its_floor_and_the_same_counts_give_the_same_weights() -> None:
    spec = BanditSpec({"a": 1, "b": 2}, min_share=0.05)
    counts = ({"a": 5_000, "b": 5_000}, {"a": 250.0, "b": 500.0})
    weights = allocation(spec, *counts)
    assert weights["a"] >= 5.0 and weights == allocation(spec, *counts)


def logged(project: Project, arm: str, version: int, n: int, rate: float, rng: np.random.Generator) -> None:
    now = project.clock.now()
    ids = [f"{arm}-{now.timestamp()}-{i}" for i in range(n)]
    rows = [
        {
            "prediction_id": i,
            "ts": now - timedelta(minutes=30),
            "endpoint": "toy",
            "model_name": "toy",
            "model_version": version,
            "route": arm,
            "served": True,
            "output": 0.5,
        }
        for i in ids
    ]
    append_by_day(project.offline, PREDICTIONS, record_table(rows, PREDICTION_SCHEMA))
    labels = [
        {"prediction_id": i, "label": float(rng.random() < rate), "ts": now - timedelta(minutes=5)}
        for i in ids
    ]
    append_by_day(project.offline, LABELS, record_table(labels, LABEL_SCHEMA))


def test_a_bandit_routes_the_endpoint_and_a_restart_keeps_its_counts(candidate: Project, clock) -> None:
    spec = BanditSpec({"a": 1, "b": 2})
    start_bandit(candidate, "toy", spec)
    routes = {r.name: (r.version, r.weight, r.mode) for r in get_endpoint(candidate.metadata, "toy").routes}
    assert routes["a"] == (1, 50.0, "experiment") and routes["b"] == (2, 50.0, "experiment")
    clock.advance(timedelta(hours=1))
    rng = np.random.default_rng(5)
    logged(candidate, "a", 1, 1_500, 0.05, rng)
    logged(candidate, "b", 2, 1_500, 0.12, rng)
    arms = {a.name: a for a in tick_bandit(candidate, "toy")}
    assert arms["a"].pulls == arms["b"].pulls == 1_500 and arms["b"].weight > 90
    again = Project(candidate.path, clock=clock)  # a restarted controller
    try:
        assert [a.weight for a in tick_bandit(again, "toy")] == [a.weight for a in arms.values()]
    finally:
        again.close()
    weights = {r.name: r.weight for r in get_endpoint(candidate.metadata, "toy").routes}
    assert weights["b"] == arms["b"].weight and sum(w for n, w in weights.items() if n != "primary") == 100
    updates = [
        e for e in candidate.metadata.events(subject_prefix="endpoint:toy") if e.kind == "bandit.updated"
    ]
    assert len(updates) == 1  # the restart changed nothing, so said nothing
    stop_bandit(candidate, "toy")
    assert {r.name for r in get_endpoint(candidate.metadata, "toy").routes} == {"primary"}


def test_bad_bandits_are_refused() -> None:
    with pytest.raises(ValidationError, match="at least two arms"):
        BanditSpec({"a": 1})
    with pytest.raises(ValidationError, match="Unknown bandit policy"):
        BanditSpec({"a": 1, "b": 2}, policy="ucb")
