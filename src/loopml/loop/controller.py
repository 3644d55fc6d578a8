"""The controller: each tick evaluates every policy against what the store and the logs say now.

All state lives in the metadata store (policy state, aliases, events), so a controller can stop between
ticks and a new one continues where it left off. Every decision, including "do nothing", is an event with
its reason and the numbers behind it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from loopml.errors import NotFoundError
from loopml.loop.policy import DriftRetrainPolicy, list_policies, update_state
from loopml.loop.retrain import prepare_retrain, retrain_and_gate
from loopml.monitoring.drift import DriftSettings
from loopml.monitoring.model_drift import model_drift

if TYPE_CHECKING:
    from loopml.project import Project

logger = logging.getLogger(__name__)

NONE, SKIPPED, DEFERRED, PROMOTED, REJECTED, FAILED = (
    "none",
    "skipped",
    "deferred",
    "promoted",
    "rejected",
    "failed",
)


@dataclass(frozen=True)
class Decision:
    policy: str
    action: str
    reason: str
    evidence: dict[str, Any]


class Controller:
    """Evaluates policies one tick at a time (`loopml controller` runs ticks on an interval)."""

    def __init__(self, project: Project) -> None:
        self.project = project

    def tick(self) -> list[Decision]:
        """Evaluate every policy once; a policy that fails is recorded as failed and the others still run."""
        now = self.project.clock.now()
        decisions = []
        for policy, state in list_policies(self.project.metadata):
            try:
                decision = self._evaluate(policy, state, now)
            except Exception as exc:  # one broken policy must not stop the reconciler
                logger.exception("Policy %s failed", policy.name)
                decision = Decision(policy.name, FAILED, f"{type(exc).__name__}: {exc}", {})
            with self.project.metadata.begin() as conn:
                self.project.metadata.record_event(
                    conn,
                    kind=f"policy.{decision.action}",
                    subject=f"policy:{decision.policy}",
                    actor="controller",
                    reason=decision.reason,
                    data=decision.evidence,
                )
            decisions.append(decision)
        return decisions

    def _evaluate(self, policy: DriftRetrainPolicy, state: dict[str, Any], now: datetime) -> Decision:
        def decide(action: str, reason: str, **evidence: Any) -> Decision:
            return Decision(policy.name, action, reason, evidence)

        try:
            champion = self.project.registry.resolve(f"{policy.model_name}@champion")
        except NotFoundError as exc:
            return decide(SKIPPED, str(exc))
        report = model_drift(
            self.project.metadata,
            self.project.offline,
            champion,
            policy.endpoint,
            now - policy.drift_window,
            now,
            settings=DriftSettings(
                p_value_warning=policy.p_value_threshold,
                p_value_critical=min(policy.p_value_threshold, DriftSettings.p_value_critical),
            ),
            reference_window=policy.reference_window,
        )
        rows = max((f.n_current for f in report.features), default=0)
        drift = {
            "champion_version": champion.version,
            "drift_share": report.share,
            "window_rows": rows,
            "drifted_features": report.drifted_features,
            "p_values": {f.feature: f.p_value for f in report.features},
            "features": {
                f.feature: {"method": f.method, "statistic": f.statistic, "severity": f.severity}
                for f in report.features
            },
        }
        if rows < policy.min_window_rows:
            return decide(
                SKIPPED,
                f"only {rows} predictions in the drift window (need {policy.min_window_rows})",
                **drift,
            )
        if report.share <= policy.drift_share_threshold:
            return decide(
                NONE,
                f"drift share {report.share:.2f} is within the threshold {policy.drift_share_threshold}",
                **drift,
            )
        last = state.get("last_retrain_at")
        if last is not None and now - datetime.fromisoformat(last) < policy.cooldown:
            return decide(
                DEFERRED,
                f"drift share {report.share:.2f} but retrained at {last}, within the cooldown",
                **drift,
            )

        data = prepare_retrain(self.project, policy, now)
        if isinstance(data, str):
            return decide(DEFERRED, f"drift share {report.share:.2f}; retrain postponed: {data}", **drift)
        # Recorded before training: a retrain that fails still waits out the cooldown instead of repeating.
        update_state(self.project.metadata, policy.name, last_retrain_at=now)
        outcome = retrain_and_gate(self.project, policy, champion, data, report.share)
        action = PROMOTED if outcome.gate.passed else REJECTED
        return decide(
            action,
            f"drift share {report.share:.2f} ({', '.join(report.drifted_features)}); retrained "
            f"v{outcome.candidate.version}: {outcome.gate.reason}",
            candidate_version=outcome.candidate.version,
            **drift,
            **outcome.evidence,
        )
