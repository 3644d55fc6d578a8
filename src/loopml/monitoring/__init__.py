"""Monitoring: drift between reference data and what a model sees in production."""

from loopml.monitoring.drift import DriftReport, DriftSettings, FeatureDrift, Rule, compare, compare_profiles

__all__ = ["DriftReport", "DriftSettings", "FeatureDrift", "Rule", "compare", "compare_profiles"]
