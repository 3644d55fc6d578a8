"""The loop: policies that retrain, gate and promote models, evaluated by a tick-based controller."""

from loopml.loop.controller import Controller, Decision
from loopml.loop.policy import DriftRetrainPolicy

__all__ = ["Controller", "Decision", "DriftRetrainPolicy"]
