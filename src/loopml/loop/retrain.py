"""Retrain → gate → promote, on labelled predictions read back from the endpoint's own log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import pandas as pd

from loopml.delivery.rollouts import RolloutSpec, start_rollout
from loopml.loop.policy import DriftRetrainPolicy
from loopml.registry.models import ModelVersion
from loopml.serving.prediction_log import read_labelled_predictions
from loopml.training.evaluation import predict_scores
from loopml.training.gate import GateResult, evaluate_candidate
from loopml.training.pipeline import TrainingSpec

if TYPE_CHECKING:
    from loopml.project import Project


@dataclass(frozen=True)
class RetrainData:
    """Labelled predictions split into rows to fit on and the newest rows the gate judges on."""

    spec: TrainingSpec
    fit_rows: pd.DataFrame
    gate_rows: pd.DataFrame
    evidence: dict[str, Any]


@dataclass(frozen=True)
class RetrainOutcome:
    candidate: ModelVersion
    gate: GateResult
    evidence: dict[str, Any]


def labelled_entity_frame(labelled: pd.DataFrame, spec: TrainingSpec) -> pd.DataFrame:
    """Entity keys, request-time inputs, prediction time and label of each labelled prediction."""
    entities = pd.DataFrame.from_records([orjson.loads(text) for text in labelled["entities"]])
    inputs = pd.DataFrame.from_records([orjson.loads(text) for text in labelled["inputs"]])
    frame = pd.concat([entities, inputs[list(spec.request_features)]], axis=1)
    frame[spec.timestamp_field] = pd.to_datetime(labelled["ts"], utc=True).to_numpy()
    frame[spec.label] = labelled["label"].to_numpy()
    return frame


def score_version(
    project: Project, version: ModelVersion, entity_df: pd.DataFrame, timestamp_field: str
) -> pd.Series:
    """Scores of a registered version on entity rows, features fetched point-in-time as at serving."""
    frame = (
        project.get_historical_features(entity_df, features=version.features, timestamp_field=timestamp_field)
        if version.features
        else entity_df
    )
    estimator = project.registry.load(version)
    return pd.Series(predict_scores(estimator, frame[version.inputs]), index=entity_df.index)


def prepare_retrain(project: Project, policy: DriftRetrainPolicy, now: datetime) -> RetrainData | str:
    """The data a retrain would use, or why there is not enough of it yet."""
    spec = project.registry.training_spec(policy.model_name)
    labelled = read_labelled_predictions(
        project.offline, policy.endpoint, now - policy.training_window, now, labels_until=now
    )
    if len(labelled) == 0:
        return "no labelled predictions to train on yet"
    frame = labelled_entity_frame(labelled, spec)
    evaluation_start = frame[spec.timestamp_field].max() - policy.evaluation_window
    fit_rows = frame[frame[spec.timestamp_field] < evaluation_start].reset_index(drop=True)
    gate_rows = frame[frame[spec.timestamp_field] >= evaluation_start].reset_index(drop=True)
    positives = int(gate_rows[spec.label].sum())
    if len(gate_rows) < policy.min_evaluation_rows or positives < policy.min_evaluation_positives:
        return (
            f"too little labelled data to judge a candidate: {len(gate_rows)} recent rows with {positives} "
            f"positives (need {policy.min_evaluation_rows} and {policy.min_evaluation_positives})"
        )
    if fit_rows[spec.label].nunique() < 2:
        return "the training rows hold a single class; waiting for more labels"
    evidence = {
        "labelled_rows": len(frame),
        "training_rows": len(fit_rows),
        "evaluation_rows": len(gate_rows),
        "evaluation_start": evaluation_start.isoformat(),
    }
    return RetrainData(spec, fit_rows, gate_rows, evidence)


def retrain_and_gate(
    project: Project,
    policy: DriftRetrainPolicy,
    champion: ModelVersion,
    data: RetrainData,
    why: str,
) -> RetrainOutcome:
    """Train a candidate, judge it against the champion on the newest rows; if it wins, promote it, or start
    its rollout when the policy declares one."""
    actor = f"policy:{policy.name}"
    trained = project.train(data.spec, data.fit_rows)
    candidate = project.registry.register(
        trained,
        actor=actor,
        reason=f"retrained on {len(data.fit_rows)} labelled predictions after {why}",
    )
    project.registry.set_alias(
        policy.model_name,
        "challenger",
        candidate.version,
        actor=actor,
        reason="candidate awaiting the evaluation gate",
    )
    outcome = "the gate did not finish"
    try:
        gate = evaluate_candidate(
            policy.gate_policy(),
            data.gate_rows[data.spec.label].to_numpy(),
            score_version(project, candidate, data.gate_rows, data.spec.timestamp_field).to_numpy(),
            score_version(project, champion, data.gate_rows, data.spec.timestamp_field).to_numpy(),
        )
        project.registry.record_gate(policy.model_name, candidate.version, gate.to_dict(), actor=actor)
        if gate.passed and policy.rollout is not None:
            start_rollout(
                project,
                policy.endpoint,
                candidate.version,
                spec=RolloutSpec.from_dict(policy.rollout),
                actor=actor,
                reason=f"passed the gate ({gate.reason}) after {why}",
            )
            outcome = "rolling out"
        elif gate.passed:
            project.registry.set_alias(
                policy.model_name,
                "champion",
                candidate.version,
                actor=actor,
                reason=f"promoted: {gate.reason}",
                evidence={"gate": gate.to_dict(), "trigger": why},
            )
            outcome = "promoted to champion"
        else:
            outcome = f"rejected by the gate: {gate.reason}"
    finally:
        project.registry.remove_alias(policy.model_name, "challenger", actor=actor, reason=outcome)
    return RetrainOutcome(candidate, gate, {**data.evidence, "gate": gate.to_dict()})
