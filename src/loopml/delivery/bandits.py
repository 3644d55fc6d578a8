"""Multi-armed bandits over an endpoint's versions: traffic moves to the arm whose predictions earn more reward.

Each arm is an experiment route of the endpoint (sticky by unit id). The reward of a prediction is its label
(0/1: a click, a repaid loan). Every tick recounts each arm's pulls (labelled predictions) and rewards from
the log since the bandit started, so its state survives any restart (the log is the state; the table keeps
the last counts and weights to show), then sets the arms' weights:

- Thompson sampling: each arm's share is the probability that it is the best, under Beta(1 + rewards,
  1 + failures) posteriors (Monte Carlo, a seeded generator: the same counts give the same weights);
- epsilon-greedy: the arm with the best mean reward gets 1 − ε, the rest share ε.

Every arm keeps at least `min_share`, so a loser is still measured and a change in the world is noticed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import insert, select, update

from loopml.delivery.tables import bandits
from loopml.errors import NotFoundError, ValidationError
from loopml.serving.endpoints import EXPERIMENT, Route, get_endpoint, set_routes
from loopml.serving.prediction_log import read_labelled_predictions

if TYPE_CHECKING:
    from loopml.project import Project

THOMPSON, EPSILON_GREEDY = "thompson", "epsilon_greedy"
RUNNING, STOPPED = "running", "stopped"
DRAWS = 20_000


@dataclass(frozen=True)
class BanditSpec:
    arms: dict[str, int]  # route name -> version of the endpoint's model
    policy: str = THOMPSON
    epsilon: float = 0.1
    min_share: float = 0.02

    def __post_init__(self) -> None:
        if len(self.arms) < 2:
            raise ValidationError(f"A bandit needs at least two arms, got {sorted(self.arms)}.")
        if self.policy not in (THOMPSON, EPSILON_GREEDY):
            raise ValidationError(
                f"Unknown bandit policy {self.policy!r}; use {THOMPSON!r} or {EPSILON_GREEDY!r}."
            )
        if not 0 <= self.epsilon <= 1:
            raise ValidationError(f"epsilon is a share in [0, 1], got {self.epsilon}.")
        if not 0 <= self.min_share * len(self.arms) <= 1:
            raise ValidationError(f"min_share {self.min_share} times {len(self.arms)} arms exceeds 100%.")


@dataclass(frozen=True)
class ArmStats:
    name: str
    version: int
    pulls: int
    rewards: float
    weight: float  # percent of traffic

    @property
    def mean(self) -> float:
        return self.rewards / self.pulls if self.pulls else 0.0


def allocation(spec: BanditSpec, pulls: dict[str, int], rewards: dict[str, float]) -> dict[str, float]:
    """Percent of traffic per arm for these counts."""
    names = list(spec.arms)
    if not any(pulls.values()):
        shares = np.full(len(names), 1 / len(names))  # no evidence yet: an equal split
    elif spec.policy == THOMPSON:
        seed = sum(pulls.values()) * 1_000_003 + int(sum(rewards.values()))
        rng = np.random.default_rng(seed)
        draws = np.column_stack(
            [rng.beta(1 + rewards[n], 1 + max(pulls[n] - rewards[n], 0.0), DRAWS) for n in names]
        )
        shares = np.bincount(draws.argmax(axis=1), minlength=len(names)) / DRAWS
    else:
        means = np.array([rewards[n] / pulls[n] if pulls[n] else 0.0 for n in names])
        shares = np.full(len(names), spec.epsilon / len(names))
        shares[int(means.argmax())] += 1 - spec.epsilon
    floored = spec.min_share + (1 - spec.min_share * len(names)) * shares  # every arm keeps its floor
    weights = np.round(floored * 100, 1)
    weights[int(weights.argmax())] += round(100 - weights.sum(), 1)  # the rounding goes to the leader
    return {name: float(w) for name, w in zip(names, weights, strict=True)}


def start_bandit(
    project: Project, endpoint: str, spec: BanditSpec, *, actor: str = "loopml"
) -> list[ArmStats]:
    """Route the endpoint's traffic to the arms, equally at first."""
    current = get_endpoint(project.metadata, endpoint)
    for version in spec.arms.values():
        project.registry.get_version(current.model_name, version)
    taken = [r.name for r in current.routes if r.name in spec.arms or r.mode == EXPERIMENT]
    if taken:
        raise ValidationError(
            f"Endpoint '{endpoint}' already has experiment route(s) {taken}; remove them first."
        )
    now = project.clock.now()
    weights = allocation(spec, dict.fromkeys(spec.arms, 0), dict.fromkeys(spec.arms, 0.0))
    arms = [ArmStats(n, v, 0, 0.0, weights[n]) for n, v in spec.arms.items()]
    with project.metadata.begin() as conn:
        existing = conn.execute(select(bandits).where(bandits.c.endpoint == endpoint)).first()
        if existing is not None and existing.state == RUNNING:
            raise ValidationError(f"Endpoint '{endpoint}' already runs a bandit; stop it first.")
        values = {
            "spec": asdict(spec),
            "state": RUNNING,
            "arms": [asdict(a) for a in arms],
            "started_at": now,
            "updated_at": now,
        }
        if existing is None:
            conn.execute(insert(bandits).values(endpoint=endpoint, **values))
        else:
            conn.execute(update(bandits).where(bandits.c.endpoint == endpoint).values(**values))
        _set_weights(project, conn, endpoint, current.model_name, arms, actor)
        project.metadata.record_event(
            conn,
            kind="bandit.started",
            subject=f"endpoint:{endpoint}",
            actor=actor,
            reason=f"{spec.policy} over {sorted(spec.arms)}",
            data={"spec": asdict(spec)},
        )
    return arms


def tick_bandit(project: Project, endpoint: str) -> list[ArmStats]:
    """Recount rewards from the log and set the arms' weights; an event when the weights move."""
    spec, started, previous = _load(project, endpoint)
    now = project.clock.now()
    model_name = get_endpoint(project.metadata, endpoint).model_name
    pulls, rewards = _counts(project, endpoint, spec, started, now)
    weights = allocation(spec, pulls, rewards)
    arms = [ArmStats(n, v, pulls[n], rewards[n], weights[n]) for n, v in spec.arms.items()]
    with project.metadata.begin() as conn:
        conn.execute(
            update(bandits)
            .where(bandits.c.endpoint == endpoint)
            .values(arms=[asdict(a) for a in arms], updated_at=now)
        )
        if [a.weight for a in arms] != [a["weight"] for a in previous]:
            _set_weights(project, conn, endpoint, model_name, arms, "controller")
            summary = ", ".join(f"{a.name} {a.weight:g}% ({a.rewards:g}/{a.pulls})" for a in arms)
            project.metadata.record_event(
                conn,
                kind="bandit.updated",
                subject=f"endpoint:{endpoint}",
                actor="controller",
                reason=f"{spec.policy}: {summary}",
                data={"arms": [asdict(a) for a in arms]},
            )
    return arms


def tick_bandits(project: Project) -> dict[str, list[ArmStats]]:
    with project.metadata.begin() as conn:
        running = [
            row.endpoint for row in conn.execute(select(bandits.c.endpoint).where(bandits.c.state == RUNNING))
        ]
    return {endpoint: tick_bandit(project, endpoint) for endpoint in running}


def stop_bandit(project: Project, endpoint: str, *, actor: str = "loopml") -> None:
    """Take the arms' routes away (the primary serves again) and keep the counts."""
    spec, _, arms = _load(project, endpoint)
    model_name = get_endpoint(project.metadata, endpoint).model_name
    with project.metadata.begin() as conn:
        removed = [
            Route(name, model_name, None, version, EXPERIMENT, 0.0) for name, version in spec.arms.items()
        ]
        set_routes(conn, project.metadata, endpoint, removed, actor=actor, reason="bandit stopped")
        conn.execute(
            update(bandits)
            .where(bandits.c.endpoint == endpoint)
            .values(state=STOPPED, updated_at=project.clock.now())
        )
        project.metadata.record_event(
            conn,
            kind="bandit.stopped",
            subject=f"endpoint:{endpoint}",
            actor=actor,
            reason="stopped",
            data={"arms": arms},
        )


def _load(project: Project, endpoint: str) -> tuple[BanditSpec, datetime, list[dict[str, Any]]]:
    with project.metadata.begin() as conn:
        row = conn.execute(
            select(bandits).where(bandits.c.endpoint == endpoint, bandits.c.state == RUNNING)
        ).first()
    if row is None:
        raise NotFoundError(
            f"Endpoint '{endpoint}' runs no bandit; start one with `loopml bandit start {endpoint} --arm a=1 --arm b=2`."
        )
    return BanditSpec(**row.spec), row.started_at, row.arms


def _counts(
    project: Project, endpoint: str, spec: BanditSpec, started: datetime, now: datetime
) -> tuple[dict[str, int], dict[str, float]]:
    log = read_labelled_predictions(project.offline, endpoint, started, now, labels_until=now)
    pulls, rewards = {}, {}
    for name, version in spec.arms.items():
        arm = log[(log.route == name) & (log.model_version == version)] if len(log) else log
        pulls[name] = len(arm)
        rewards[name] = float(arm.label.clip(0, 1).sum()) if len(arm) else 0.0
    return pulls, rewards


def _set_weights(
    project: Project, conn: Any, endpoint: str, model_name: str, arms: list[ArmStats], actor: str
) -> None:
    routes = [Route(arm.name, model_name, None, arm.version, EXPERIMENT, arm.weight) for arm in arms]
    weights = ", ".join(f"{arm.name} {arm.weight:g}%" for arm in arms)
    set_routes(conn, project.metadata, endpoint, routes, actor=actor, reason=f"bandit: {weights}")
