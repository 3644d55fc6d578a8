"""Features: declarative definitions, point-in-time correct training sets, and the online store."""

from loopml.features.definitions import Aggregation, Entity, FeatureService, FeatureView, Field, ParquetSource
from loopml.features.online import OnlineFeatures

__all__ = [
    "Aggregation",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "OnlineFeatures",
    "ParquetSource",
]
