"""Features: declarative definitions, point-in-time correct training sets, and the online store."""

from loopml.features.definitions import Aggregation, Entity, FeatureService, FeatureView, Field, ParquetSource
from loopml.features.on_demand import OnDemandFeatureView, on_demand_feature_view
from loopml.features.online import OnlineFeatures

__all__ = [
    "Aggregation",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "OnDemandFeatureView",
    "OnlineFeatures",
    "ParquetSource",
    "on_demand_feature_view",
]
