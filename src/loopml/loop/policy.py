"""Retraining policies: when to retrain a model, on which data, and how a candidate must prove itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update

from loopml.delivery.rollouts import RolloutSpec
from loopml.errors import NotFoundError, ValidationError
from loopml.features.definitions import check_identifier
from loopml.loop.tables import policies
from loopml.storage.metadata import MetadataStore
from loopml.training.gate_policy import GatePolicy, MetricThreshold

_DURATIONS = ("drift_window", "reference_window", "training_window", "evaluation_window", "cooldown", "every")


@dataclass(frozen=True)
class DriftRetrainPolicy:
    """Retrain when a trigger fires; a candidate that passes the gate is promoted, or rolled out.

    Triggers: the share of drifted inputs above `drift_share_threshold` in each of the last
    `consecutive_windows` drift windows; the champion's live `metric` on the last drift window's labels below
    `metric_floor`; a schedule (`every`); a manual request (`loopml policy trigger`). With `rollout` (a
    RolloutSpec as a dict) a candidate goes through shadow and canary steps before the alias moves; the
    policy waits while a rollout of the endpoint is in progress (one retrain per model at a time).

    Drift compares the newest `reference_window` of the champion's training snapshot (what the world looked
    like when it was trained) with the endpoint's last `drift_window` of predictions. The candidate trains
    on labelled predictions of the last `training_window`, except the newest `evaluation_window`, on which
    candidate and champion are scored side by side; with too little labelled data there, no candidate is
    trained at all. The gate (`gate_policy`) asks the candidate's `metric` to beat the champion's by at
    least `min_delta` in the metric's direction (negative: a bounded regression is allowed).
    """

    name: str
    model_name: str
    endpoint: str
    drift_share_threshold: float = 0.3
    p_value_threshold: float = 0.01
    drift_window: timedelta = timedelta(days=2)
    reference_window: timedelta = timedelta(days=7)
    min_window_rows: int = 200
    training_window: timedelta = timedelta(days=30)
    evaluation_window: timedelta = timedelta(days=3)
    min_evaluation_rows: int = 200
    min_evaluation_positives: int = 10
    cooldown: timedelta = timedelta(days=3)
    metric: str = "roc_auc"
    min_delta: float = 0.0
    consecutive_windows: int = 1
    metric_floor: float | None = None
    every: timedelta | None = None
    rollout: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_identifier("Policy", self.name)
        if not 0 <= self.drift_share_threshold < 1:
            raise ValidationError(
                f"drift_share_threshold must be in [0, 1), got {self.drift_share_threshold}."
            )
        if not 0 < self.p_value_threshold < 1:
            raise ValidationError(f"p_value_threshold must be in (0, 1), got {self.p_value_threshold}.")
        if self.evaluation_window >= self.training_window:
            raise ValidationError("evaluation_window must be shorter than training_window.")
        self.gate_policy()  # an unknown metric or a bad min_delta fails here, not at the first retrain
        if self.consecutive_windows < 1:
            raise ValidationError(f"consecutive_windows must be at least 1, got {self.consecutive_windows}.")
        if self.every is not None and self.every <= timedelta(0):
            raise ValidationError(f"every must be a positive duration, got {self.every}.")
        if self.rollout is not None:
            RolloutSpec.from_dict(self.rollout)  # a bad rollout fails here too

    def gate_policy(self) -> GatePolicy:
        """The evaluation gate a retrained candidate must pass before it replaces the champion."""
        return GatePolicy(
            [MetricThreshold(self.metric, min_absolute_change=self.min_delta)],
            min_rows=self.min_evaluation_rows,
            min_positive=self.min_evaluation_positives,
        )

    def spec(self) -> dict[str, Any]:
        spec = asdict(self)
        for key in _DURATIONS:
            spec[key] = spec[key].total_seconds() if spec[key] is not None else None
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> DriftRetrainPolicy:
        values = dict(spec)
        for key in _DURATIONS:
            if values.get(key) is not None:
                values[key] = timedelta(seconds=values[key])
        return cls(**values)


def save_policy(metadata: MetadataStore, policy: DriftRetrainPolicy, *, actor: str = "loopml") -> None:
    now = metadata.clock.now()
    with metadata.begin() as conn:
        exists = conn.execute(select(policies.c.name).where(policies.c.name == policy.name)).first()
        if exists is None:
            conn.execute(
                insert(policies).values(
                    name=policy.name,
                    kind="drift_retrain",
                    spec=policy.spec(),
                    state={},
                    created_at=now,
                    updated_at=now,
                )
            )
        else:
            conn.execute(
                update(policies)
                .where(policies.c.name == policy.name)
                .values(spec=policy.spec(), updated_at=now)
            )
        metadata.record_event(
            conn,
            kind="policy.saved",
            subject=f"policy:{policy.name}",
            actor=actor,
            reason=f"policy '{policy.name}' for model '{policy.model_name}' saved",
            data=policy.spec(),
        )


@dataclass(frozen=True)
class PolicyChange:
    name: str
    action: str  # "create", "update", "unchanged" or "delete"


def plan_policies(
    metadata: MetadataStore, wanted: list[DriftRetrainPolicy], *, prune: bool = False
) -> list[PolicyChange]:
    """What `apply_policies` would do to each policy; with `prune`, stored ones absent from `wanted` go."""
    with metadata.begin() as conn:
        stored = {row.name: row.spec for row in conn.execute(select(policies.c.name, policies.c.spec))}
    changes = []
    for policy in wanted:
        if policy.name not in stored:
            changes.append(PolicyChange(policy.name, "create"))
        else:
            changes.append(
                PolicyChange(policy.name, "unchanged" if stored[policy.name] == policy.spec() else "update")
            )
    if prune:
        names = {policy.name for policy in wanted}
        changes += [PolicyChange(name, "delete") for name in sorted(stored) if name not in names]
    return changes


def apply_policies(
    metadata: MetadataStore, wanted: list[DriftRetrainPolicy], *, prune: bool = False, actor: str = "loopml"
) -> list[PolicyChange]:
    """Save new and changed policies and, with `prune`, delete stored ones absent from `wanted`."""
    changes = plan_policies(metadata, wanted, prune=prune)
    by_name = {policy.name: policy for policy in wanted}
    for change in changes:
        if change.action in ("create", "update"):
            save_policy(metadata, by_name[change.name], actor=actor)
        elif change.action == "delete":
            delete_policy(metadata, change.name, actor=actor)
    return changes


def delete_policy(metadata: MetadataStore, name: str, *, actor: str = "loopml") -> None:
    """Remove a policy and its state; the controller stops acting on it. The event keeps its last spec."""
    with metadata.begin() as conn:
        spec = conn.execute(select(policies.c.spec).where(policies.c.name == name)).scalar()
        if spec is None:
            raise NotFoundError(f"No policy named '{name}'; see `loopml policy list`.")
        conn.execute(delete(policies).where(policies.c.name == name))
        metadata.record_event(
            conn,
            kind="policy.deleted",
            subject=f"policy:{name}",
            actor=actor,
            reason=f"policy '{name}' deleted",
            data=spec,
        )


def list_policies(metadata: MetadataStore) -> list[tuple[DriftRetrainPolicy, dict[str, Any]]]:
    """Every policy with its state."""
    with metadata.begin() as conn:
        rows = conn.execute(select(policies.c.spec, policies.c.state).order_by(policies.c.name)).all()
    return [(DriftRetrainPolicy.from_spec(row.spec), row.state) for row in rows]


def get_policy(metadata: MetadataStore, name: str) -> tuple[DriftRetrainPolicy, dict[str, Any]]:
    with metadata.begin() as conn:
        row = conn.execute(select(policies.c.spec, policies.c.state).where(policies.c.name == name)).first()
    if row is None:
        raise NotFoundError(f"No policy named '{name}'; see `loopml policy list`.")
    return DriftRetrainPolicy.from_spec(row.spec), row.state


def request_retrain(metadata: MetadataStore, name: str, *, actor: str = "loopml", reason: str = "") -> None:
    """Ask the controller to retrain at its next tick, whatever the triggers say (the cool-down included)."""
    get_policy(metadata, name)
    update_state(metadata, name, requested=True)
    with metadata.begin() as conn:
        metadata.record_event(
            conn,
            kind="policy.requested",
            subject=f"policy:{name}",
            actor=actor,
            reason=reason or "retrain requested",
        )


def update_state(metadata: MetadataStore, name: str, **changes: Any) -> None:
    with metadata.begin() as conn:
        state = conn.execute(select(policies.c.state).where(policies.c.name == name)).scalar() or {}
        state.update({k: v.isoformat() if isinstance(v, datetime) else v for k, v in changes.items()})
        conn.execute(
            update(policies)
            .where(policies.c.name == name)
            .values(state=state, updated_at=metadata.clock.now())
        )
