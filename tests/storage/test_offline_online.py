from pathlib import Path

import pandas as pd
import pytest

from loopml.errors import ConfigError, ValidationError
from loopml.storage.offline import OfflineStore
from loopml.storage.online import OnlineStore


def test_offline_append_and_read_back(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    assert store.read("events").empty
    store.append("events", pd.DataFrame({"a": [1, 2]}), partition="date=2026-01-01")
    store.append("events", pd.DataFrame({"a": [3]}), partition="date=2026-01-02")
    assert sorted(store.read("events").a) == [1, 2, 3]
    assert not list(tmp_path.rglob("*.tmp"))


def test_offline_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        OfflineStore(tmp_path).dataset_dir("../outside")


def test_online_last_write_wins_by_event_time(tmp_path: Path) -> None:
    store = OnlineStore(f"sqlite:///{tmp_path / 'online.db'}")
    store.write("v", [("k", 100.0, 100.0, {"x": 1})])
    store.write("v", [("k", 50.0, 200.0, {"x": 0})])  # older event arriving late: ignored
    assert store.read([("v", "k")])[("v", "k")].values == {"x": 1}
    store.write("v", [("k", 100.0, 150.0, {"x": 2})])  # same event time, newer creation: wins
    store.write("v", [("k", 200.0, 200.0, {"x": 3})])
    row = store.read([("v", "k")])[("v", "k")]
    assert (row.event_ts, row.values) == (200.0, {"x": 3})


def test_online_reads_many_keys_at_once_and_omits_absent_ones(tmp_path: Path) -> None:
    store = OnlineStore(f"sqlite:///{tmp_path / 'online.db'}")
    store.write("a", [("1", 1.0, 1.0, {"x": 1}), ("2", 1.0, 1.0, {"x": 2})])
    store.write("b", [("1", 1.0, 1.0, {"y": None})])
    found = store.read([("a", "1"), ("a", "2"), ("b", "1"), ("b", "9")])
    assert set(found) == {("a", "1"), ("a", "2"), ("b", "1")}
    assert found[("b", "1")].values == {"y": None}
    assert store.count("a") == 2


def test_online_rejects_unknown_backends() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        OnlineStore("memcached://x")
