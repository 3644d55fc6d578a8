"""loopml: the closed loop of a production model in one install.

import loopml
project = loopml.Project(".")
report = loopml.monitoring.compare(reference_df, current_df)
"""

__version__ = "0.1.0"

from loopml import monitoring
from loopml.clock import Clock, SimulatedClock, SystemClock
from loopml.errors import LoopmlError
from loopml.features import Entity, FeatureService, FeatureView, Field, ParquetSource
from loopml.loop import Controller, DriftRetrainPolicy
from loopml.project import Project
from loopml.training import TrainingSpec

__all__ = [
    "Clock",
    "Controller",
    "DriftRetrainPolicy",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "LoopmlError",
    "ParquetSource",
    "Project",
    "SimulatedClock",
    "SystemClock",
    "TrainingSpec",
    "__version__",
    "monitoring",
]
