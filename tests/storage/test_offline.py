from pathlib import Path

import pandas as pd
import pytest

from loopml.errors import ValidationError
from loopml.storage.offline import OfflineStore


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


def test_duckdb_connections_follow_the_configured_limits(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path / "offline", memory_limit="512MB", temp_directory=tmp_path / "spill")
    with store.connect() as conn:
        settings = dict(
            conn.execute(
                "SELECT name, value FROM duckdb_settings() WHERE name IN ('memory_limit', 'TimeZone', 'temp_directory')"
            ).fetchall()
        )
    assert settings["TimeZone"] == "UTC"
    assert settings["memory_limit"] == "488.2 MiB"  # 512 MB, shown in MiB
    assert settings["temp_directory"] == str(tmp_path / "spill")
