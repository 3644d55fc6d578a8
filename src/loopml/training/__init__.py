"""Training: pipelines that turn a point-in-time training set into a tracked, evaluated model."""

from loopml.training.gate import GateCheck, GateResult, evaluate_candidate
from loopml.training.gate_policy import GatePolicy, MetricThreshold
from loopml.training.pipeline import TrainedModel, TrainingSpec, train
from loopml.training.run_search import Run, search_runs
from loopml.training.runner import (
    PipelineRun,
    StepFailedError,
    StepResult,
    delete_pipeline_run,
    get_pipeline_run,
    list_pipeline_runs,
    log_metric,
    log_metrics,
    run_pipeline,
)
from loopml.training.steps import Pipeline, config_params, layered_params, step
from loopml.training.tracking import Tracker
from loopml.training.trials import TrialResult, grid, run_trials

__all__ = [
    "GateCheck",
    "GatePolicy",
    "GateResult",
    "MetricThreshold",
    "Pipeline",
    "PipelineRun",
    "Run",
    "StepFailedError",
    "StepResult",
    "Tracker",
    "TrainedModel",
    "TrainingSpec",
    "TrialResult",
    "config_params",
    "delete_pipeline_run",
    "evaluate_candidate",
    "get_pipeline_run",
    "grid",
    "layered_params",
    "list_pipeline_runs",
    "log_metric",
    "log_metrics",
    "run_pipeline",
    "run_trials",
    "search_runs",
    "step",
    "train",
]
