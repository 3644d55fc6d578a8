"""The card-fraud world behind `loopml demo`: the whole loop on a simulated clock."""

from loopml.demo.runner import DemoConfig, DemoResult, run_demo
from loopml.demo.summary import quick_config, summarise

__all__ = ["DemoConfig", "DemoResult", "quick_config", "run_demo", "summarise"]
