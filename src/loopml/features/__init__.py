"""Features: declarative definitions, point-in-time correct training sets, and the online store."""

from loopml.features.definitions import Aggregation, Entity, FeatureService, FeatureView, Field
from loopml.features.on_demand import OnDemandFeatureView, on_demand_feature_view
from loopml.features.online import OnlineFeatures
from loopml.features.sources import CsvSource, DataFrameSource, ParquetSource, SqlSource

__all__ = [
    "Aggregation",
    "CsvSource",
    "DataFrameSource",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "OnDemandFeatureView",
    "OnlineFeatures",
    "ParquetSource",
    "SqlSource",
    "on_demand_feature_view",
]
