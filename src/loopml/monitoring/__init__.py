"""Monitoring: drift between reference data and what a model sees in production."""

from loopml.monitoring.drift import DriftReport, FeatureDrift, compare

__all__ = ["DriftReport", "FeatureDrift", "compare"]
