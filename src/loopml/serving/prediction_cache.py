"""Cached predictions in the online store: batch scoring fills them, endpoints answer from them while fresh.

An entry belongs to one model version and one entity (the join keys of the model's feature views), so an
endpoint that moves to another version never answers with the old version's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from loopml.features.online import entity_key
from loopml.registry.models import ModelVersion
from loopml.storage.online import OnlineStore

HIT, MISS, STALE = "hit", "miss", "stale"


def namespace(version: ModelVersion) -> str:
    return f"prediction:{version.model_name}/{version.version}"


def write_cached(
    online: OnlineStore,
    version: ModelVersion,
    keys: Sequence[Sequence[object]],
    outputs: Sequence[float],
    *,
    scored_at: datetime,
) -> int:
    """Store one prediction per entity (its join key values in order); returns how many were written."""
    ts = scored_at.timestamp()
    rows = [
        (entity_key(key), ts, ts, {"output": float(output)})
        for key, output in zip(keys, outputs, strict=True)
    ]
    return online.write(namespace(version), rows)


async def read_cached(
    online: OnlineStore,
    version: ModelVersion,
    keys: Sequence[Sequence[object]],
    *,
    now: datetime,
    max_age_seconds: float,
) -> tuple[list[float | None], list[str]]:
    """The cached output of each entity (None when absent or older than `max_age_seconds`) and why."""
    name = namespace(version)
    wanted = [(name, entity_key(key)) for key in keys]
    found = (await online.alookup(wanted)).rows
    now_ts = now.timestamp()
    outputs: list[float | None] = []
    results = []
    for key in wanted:
        row = found.get(key)
        if row is None:
            outputs.append(None)
            results.append(MISS)
        elif now_ts - row.event_ts > max_age_seconds:
            outputs.append(None)
            results.append(STALE)
        else:
            outputs.append(row.values["output"])
            results.append(HIT)
    return outputs, results
