"""Serving: endpoints routed to model versions, features fetched online, every prediction logged."""

from loopml.serving.endpoints import Endpoint

__all__ = ["Endpoint"]
