"""loopml: the closed loop of a production model in one install.

import loopml
project = loopml.Project(".")
report = loopml.monitoring.compare(reference_df, current_df)
"""

__version__ = "0.1.0"

from loopml import monitoring
from loopml.clock import Clock, SimulatedClock, SystemClock
from loopml.errors import LoopmlError
from loopml.features import (
    Aggregation,
    CsvSource,
    DataFrameSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeatureView,
    ParquetSource,
    SqlSource,
    on_demand_feature_view,
)
from loopml.loop import Controller, DriftRetrainPolicy
from loopml.project import Project
from loopml.training import TrainingSpec

__all__ = [
    "Aggregation",
    "Clock",
    "Controller",
    "CsvSource",
    "DataFrameSource",
    "DriftRetrainPolicy",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "LoopmlError",
    "OnDemandFeatureView",
    "ParquetSource",
    "Project",
    "SimulatedClock",
    "SqlSource",
    "SystemClock",
    "TrainingSpec",
    "__version__",
    "monitoring",
    "on_demand_feature_view",
]
