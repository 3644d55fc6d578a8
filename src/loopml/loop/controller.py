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

from loopml.delivery.rollouts import list_rollouts
from loopml.errors import NotFoundError
from loopml.loop.policy import DriftRetrainPolicy, list_policies, update_state
from loopml.loop.retrain import prepare_retrain, retrain_and_gate
from loopml.monitoring.drift import DriftReport, DriftSettings
from loopml.monitoring.model_drift import model_drift
from loopml.monitoring.performance import SCORED, PerformanceSettings, performance
from loopml.registry.models import ModelVersion
from loopml.serving.prediction_log import read_labelled_predictions

if TYPE_CHECKING:
    from loopml.project import Project

logger = logging.getLogger(__name__)

NONE, SKIPPED, DEFERRED, PROMOTED, ROLLING_OUT, REJECTED, FAILED = (
    "none",
    "skipped",
    "deferred",
    "promoted",
    "rolling_out",
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
        reports = [
            self._drift(policy, champion, now - policy.drift_window * i)
            for i in range(policy.consecutive_windows)
        ]
        report = reports[0]
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
        if policy.consecutive_windows > 1:
            drift["window_shares"] = [r.share for r in reports]
        active = list_rollouts(self.project, endpoint=policy.endpoint, active_only=True)
        if active:
            return decide(DEFERRED, f"{active[0].describe()} is in progress: one retrain at a time", **drift)
        triggers, quiet = self._triggers(policy, state, reports, rows, now, drift)
        if not triggers:
            return decide(*quiet, **drift)
        last = state.get("last_retrain_at")
        manual = triggers == ["manual request"]
        if not manual and last is not None and now - datetime.fromisoformat(last) < policy.cooldown:
            return decide(
                DEFERRED, f"{'; '.join(triggers)} but retrained at {last}, within the cooldown", **drift
            )
        data = prepare_retrain(self.project, policy, now)
        if isinstance(data, str):
            return decide(DEFERRED, f"{'; '.join(triggers)}; retrain postponed: {data}", **drift)
        # Recorded before training: a retrain that fails still waits out the cooldown instead of repeating.
        update_state(self.project.metadata, policy.name, last_retrain_at=now, requested=False)
        outcome = retrain_and_gate(self.project, policy, champion, data, "; ".join(triggers))
        if not outcome.gate.passed:
            action = REJECTED
        else:
            action = ROLLING_OUT if policy.rollout is not None else PROMOTED
        return decide(
            action,
            f"{'; '.join(triggers)}; retrained v{outcome.candidate.version}: {outcome.gate.reason}",
            candidate_version=outcome.candidate.version,
            triggers=triggers,
            **drift,
            **outcome.evidence,
        )

    def _drift(self, policy: DriftRetrainPolicy, champion: ModelVersion, end: datetime) -> DriftReport:
        """Drift of the champion in the drift window that ends at `end`."""
        return model_drift(
            self.project.metadata,
            self.project.offline,
            champion,
            policy.endpoint,
            end - policy.drift_window,
            end,
            settings=DriftSettings(
                p_value_warning=policy.p_value_threshold,
                p_value_critical=min(policy.p_value_threshold, DriftSettings.p_value_critical),
            ),
            reference_window=policy.reference_window,
        )

    def _triggers(
        self,
        policy: DriftRetrainPolicy,
        state: dict[str, Any],
        reports: list[DriftReport],
        rows: int,
        now: datetime,
        drift: dict[str, Any],
    ) -> tuple[list[str], tuple[str, str]]:
        """The triggers that fire, and (action, reason) for when none does."""
        triggers = []
        if state.get("requested"):
            triggers.append("manual request")
        if policy.every is not None:
            last = state.get("last_retrain_at")
            if last is None or now - datetime.fromisoformat(last) >= policy.every:
                triggers.append(f"schedule (every {policy.every})")
        if policy.metric_floor is not None:
            live = self._live_metric(policy, now)
            drift["live_metric"] = live
            if live is not None and live < policy.metric_floor:
                triggers.append(f"live {policy.metric} {live:.3f} below {policy.metric_floor}")
        if rows < policy.min_window_rows:
            quiet = (SKIPPED, f"only {rows} predictions in the drift window (need {policy.min_window_rows})")
        elif all(r.share > policy.drift_share_threshold for r in reports):
            windows = f" in each of the last {len(reports)} windows" if len(reports) > 1 else ""
            triggers.append(
                f"drift share {reports[0].share:.2f} ({', '.join(reports[0].drifted_features)}){windows}"
            )
            quiet = (NONE, "")
        else:
            quiet = (
                NONE,
                f"drift share {reports[0].share:.2f} is within the threshold {policy.drift_share_threshold}"
                + (f" in at least one of the last {len(reports)} windows" if len(reports) > 1 else ""),
            )
        return triggers, quiet

    def _live_metric(self, policy: DriftRetrainPolicy, now: datetime) -> float | None:
        labelled = read_labelled_predictions(
            self.project.offline, policy.endpoint, now - policy.drift_window, now, labels_until=now
        )
        # Labels arrive late: score whatever the window has, once it holds a quarter of the gate's minimum.
        enough = PerformanceSettings(min_coverage=0.0, min_labels=max(policy.min_evaluation_rows // 4, 1))
        result = performance(labelled, enough)
        value = result.metrics.get(policy.metric) if result.status == SCORED else None
        return float(value) if value is not None else None
