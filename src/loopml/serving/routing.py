"""Which route answers a request: sticky buckets from a salted hash of the unit id.

A unit (user, session, account) hashes with the endpoint's salt into one of 10,000 buckets. Canary and
experiment routes own consecutive bucket ranges from 0, so a unit on a 5% canary stays on it at 25%; the primary
owns the rest. Shadow routes sample units with their own salt, independent of that split. A request without a
unit id gets a random bucket.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from loopml.serving.endpoints import CANARY, EXPERIMENT, PRIMARY, SHADOW, Route

BUCKETS = 10_000
Served = TypeVar("Served")


def bucket(salt: str, unit_id: str) -> int:
    """The unit's bucket in [0, 10,000): the same for the same salt and id in every process."""
    digest = hashlib.blake2b(f"{salt}\x1f{unit_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class RoutedTo(Generic[Served]):
    """A route with what serves it (a loaded model in the server; None while it cannot be loaded)."""

    route: Route
    served: Served | None


class RouteTable(Generic[Served]):
    """An endpoint's routes as bucket ranges; immutable, so a swap is one assignment."""

    def __init__(self, salt: str, routes: Sequence[RoutedTo[Served]]) -> None:
        self.salt = salt
        self.routes = tuple(routes)
        self._ranges: list[tuple[int, int, RoutedTo[Served]]] = []  # [low, high) bucket ranges
        upper = 0
        for routed in (r for r in routes if r.route.mode == CANARY):
            width = round(routed.route.weight * BUCKETS / 100)
            self._ranges.append((upper, min(upper + width, BUCKETS), routed))
            upper += width
        lower = BUCKETS
        for routed in sorted((r for r in routes if r.route.mode == EXPERIMENT), key=lambda r: r.route.name):
            width = round(routed.route.weight * BUCKETS / 100)
            self._ranges.append((max(lower - width, upper), lower, routed))
            lower -= width
        primary = [r for r in routes if r.route.mode == PRIMARY]
        if primary:
            self._ranges.append((upper, max(lower, upper), primary[0]))
        self._shadows = [
            (round(r.route.weight * BUCKETS / 100), f"{salt}\x1fshadow\x1f{r.route.name}", r)
            for r in routes
            if r.route.mode == SHADOW
        ]

    @property
    def primary(self) -> RoutedTo[Served] | None:
        return next((r for r in self.routes if r.route.mode == PRIMARY and r.served is not None), None)

    def choose(self, unit_id: str | None) -> RoutedTo[Served] | None:
        """The route that answers this unit; a route whose model is not loaded falls back to the primary."""
        point = bucket(self.salt, unit_id) if unit_id is not None else random.randrange(BUCKETS)
        for low, high, routed in self._ranges:
            if low <= point < high:
                return routed if routed.served is not None else self.primary
        return None

    def shadows(self, unit_id: str | None) -> list[RoutedTo[Served]]:
        """The shadow routes this request is mirrored to."""
        chosen = []
        for threshold, salt, routed in self._shadows:
            point = bucket(salt, unit_id) if unit_id is not None else random.randrange(BUCKETS)
            if point < threshold and routed.served is not None:
                chosen.append(routed)
        return chosen
