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
