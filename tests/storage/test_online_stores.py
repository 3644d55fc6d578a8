"""One suite for every online store backend: SQLite and the real Redis must behave alike."""

import asyncio
from collections.abc import Iterator

import pytest

from loopml.errors import ConfigError, StoreUnavailableError
from loopml.storage.online import EventQuery, EventWrite, OnlineStore, RedisOnlineStore, open_online_store


@pytest.fixture
def store(online_backend: dict[str, str]) -> Iterator[OnlineStore]:
    store = open_online_store(
        online_backend["LOOPML_ONLINE__URL"], key_prefix=online_backend.get("LOOPML_ONLINE__KEY_PREFIX", "")
    )
    yield store
    store.close()


def test_last_write_wins_by_event_time_then_created_time(store: OnlineStore) -> None:
    store.write("v", [("k", 100.0, 100.0, {"x": 1})])
    store.write("v", [("k", 50.0, 200.0, {"x": 0})])  # an older event arriving late is ignored
    assert store.read([("v", "k")])[("v", "k")].values == {"x": 1}
    store.write("v", [("k", 100.0, 150.0, {"x": 2})])  # same event time, created later: wins
    store.write("v", [("k", 100.0, 120.0, {"x": 9})])  # same event time, created earlier: ignored
    store.write("v", [("k", 200.5, 200.5, {"x": 3})])
    row = store.read([("v", "k")])[("v", "k")]
    assert (row.event_ts, row.created_ts, row.values) == (200.5, 200.5, {"x": 3})


def test_reads_many_keys_across_namespaces_and_omits_absent_ones(store: OnlineStore) -> None:
    store.write("a", [("1", 1.0, 1.0, {"x": 1.5}), ("2", 1.0, 1.0, {"x": "two"})])
    store.write("b", [("1", 2.0, 2.0, {"y": None, "z": True})])
    found = store.read([("a", "1"), ("a", "2"), ("b", "1"), ("b", "9"), ("c", "1")])
    assert set(found) == {("a", "1"), ("a", "2"), ("b", "1")}
    assert found[("a", "2")].values == {"x": "two"}
    assert found[("b", "1")].values == {"y": None, "z": True}
    assert (store.count("a"), store.count("b"), store.count("c")) == (2, 1, 0)
    assert store.read([]) == {}


def test_large_batches_are_written_completely(store: OnlineStore) -> None:
    rows = [(str(i), float(i), float(i), {"i": i}) for i in range(2500)]
    assert store.write("big", rows) == 2500
    found = store.read([("big", str(i)) for i in (0, 999, 1000, 2499)])
    assert [found[("big", k)].values["i"] for k in ("0", "999", "1000", "2499")] == [0, 999, 1000, 2499]
    assert store.count("big") == 2500


def test_keys_with_separators_do_not_collide(store: OnlineStore) -> None:
    store.write("v", [("1\x1f2", 1.0, 1.0, {"x": "a"}), ("1:2", 1.0, 1.0, {"x": "b"})])
    found = store.read([("v", "1\x1f2"), ("v", "1:2")])
    assert (found[("v", "1\x1f2")].values, found[("v", "1:2")].values) == ({"x": "a"}, {"x": "b"})


def test_event_logs_append_query_replace_and_trim(store: OnlineStore) -> None:
    events = [
        ("u1", 10.0, {"a": 1.0}),
        ("u1", 20.0, {"a": 2.0}),
        ("u1", 20.0, {"a": 2.0}),
        ("u2", 15.0, {"a": None}),
    ]
    assert store.write_events("agg", EventWrite(events)) == 4
    found = store.lookup([], [EventQuery("agg", "u1", 20.0, 30.0), EventQuery("agg", "u2", 0.0, 100.0)])
    twins = [(20.0, {"a": 2.0}), (20.0, {"a": 2.0})]
    assert found.events[("agg", "u1")] == twins  # [since, until): equal events stay distinct
    assert store.lookup([], [EventQuery("agg", "u1", 0.0, 20.0)]).events[("agg", "u1")] == [
        (10.0, {"a": 1.0})
    ]
    assert found.events[("agg", "u2")] == [(15.0, {"a": None})]
    # Re-materialising [15, 25] replaces u1's events there, keeps the one at 10 and leaves u2 alone.
    store.write_events("agg", EventWrite([("u1", 21.0, {"a": 5.0})], replace=(15.0, 25.0)))
    everything = [EventQuery("agg", "u1", 0.0, 100.0), EventQuery("agg", "u2", 0.0, 100.0)]
    found = store.lookup([], everything)
    assert found.events[("agg", "u1")] == [(10.0, {"a": 1.0}), (21.0, {"a": 5.0})]
    assert found.events[("agg", "u2")] == [(15.0, {"a": None})]
    store.write_events("agg", EventWrite([("u1", 30.0, {"a": 3.0})], keep_from=21.0))
    assert [ts for ts, _ in store.lookup([], everything).events[("agg", "u1")]] == [21.0, 30.0]
    assert store.count("agg") == 2


def test_one_lookup_reads_rows_and_event_logs(store: OnlineStore) -> None:
    store.write("plain", [("u1", 5.0, 5.0, {"x": 1})])
    store.write_events("agg", EventWrite([("u1", 5.0, {"a": 1.5})]))
    found = store.lookup(
        [("plain", "u1"), ("plain", "u9")],
        [EventQuery("agg", "u1", 0.0, 6.0), EventQuery("agg", "u9", 0.0, 6.0)],
    )
    assert found.rows[("plain", "u1")].values == {"x": 1} and ("plain", "u9") not in found.rows
    assert found.events == {("agg", "u1"): [(5.0, {"a": 1.5})], ("agg", "u9"): []}


def test_the_async_lookup_reads_what_the_sync_one_reads(store: OnlineStore) -> None:
    store.write("plain", [("u1", 5.0, 5.0, {"x": 1}), ("u2", 6.0, 6.0, {"x": None})])
    store.write_events("agg", EventWrite([("u1", 5.0, {"a": 1.5}), ("u1", 7.0, {"a": 2.5})]))
    keys = [("plain", "u1"), ("plain", "u2"), ("plain", "u9")]
    logs = [EventQuery("agg", "u1", 0.0, 7.0), EventQuery("agg", "u9", 0.0, 7.0)]

    async def both() -> list:
        try:
            return [await store.alookup(keys, logs), await store.alookup([], []), await store.alookup(keys)]
        finally:
            await store.aclose()

    found, empty, rows_only = asyncio.run(both())
    assert found == store.lookup(keys, logs)
    assert found.events[("agg", "u1")] == [(5.0, {"a": 1.5})]
    assert (empty.rows, empty.events) == ({}, {})
    assert rows_only.rows == found.rows and rows_only.events == {}


def test_unknown_backends_and_unreachable_redis_are_explained() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        open_online_store("memcached://x")
    dead = RedisOnlineStore("redis://127.0.0.1:1/0", key_prefix="x:")
    with pytest.raises(StoreUnavailableError, match="check that Redis is running"):
        dead.read([("v", "k")])
    with pytest.raises(StoreUnavailableError, match="check that Redis is running"):
        asyncio.run(dead.alookup([("v", "k")]))
