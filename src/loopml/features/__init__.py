"""Features: declarative definitions, point-in-time correct training sets, and the online store."""

from loopml.features.definitions import Entity, FeatureView, Field, ParquetSource
from loopml.features.online import OnlineFeatures

__all__ = ["Entity", "FeatureView", "Field", "OnlineFeatures", "ParquetSource"]
