"""Training: pipelines that turn a point-in-time training set into a tracked, evaluated model."""

from loopml.training.gate import GateResult, evaluate_gate
from loopml.training.pipeline import TrainedModel, TrainingSpec, train
from loopml.training.tracking import Tracker

__all__ = ["GateResult", "Tracker", "TrainedModel", "TrainingSpec", "evaluate_gate", "train"]
