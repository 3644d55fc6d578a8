from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from loopml.features import Entity, FeatureView, Field, ParquetSource
from loopml.project import Project

USER = Entity("user", join_keys=["user_id"])


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def write_source(project: Project, name: str, frame: pd.DataFrame) -> str:
    path = Path(project.path) / "data" / name
    path.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path / "part-0.parquet", index=False)
    return f"data/{name}/*.parquet"


@pytest.fixture
def user_view(project: Project) -> FeatureView:
    """Scores of two users with a correction (same event time, later creation) and a late backfill."""
    rows = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2],
            "event_timestamp": [
                ts("2026-01-01 00:00"),
                ts("2026-01-02 00:00"),
                ts("2026-01-02 00:00"),
                ts("2026-01-03 00:00"),
                ts("2026-01-01 12:00"),
            ],
            "created_timestamp": [
                ts("2026-01-01 00:00"),
                ts("2026-01-02 00:00"),
                ts("2026-01-02 06:00"),
                ts("2026-01-05 00:00"),
                ts("2026-01-01 12:00"),
            ],
            "score": [1.0, 2.0, 2.5, 3.0, 10.0],
            "label": ["a", "b", "c", "d", "z"],
        }
    )
    view = FeatureView(
        "user_scores",
        [USER],
        ParquetSource(write_source(project, "user_scores", rows), "event_timestamp", "created_timestamp"),
        [Field("score"), Field("label", "string")],
        ttl=timedelta(days=1),
    )
    project.apply([USER, view])
    return view


@pytest.fixture
def online_project(tmp_path, clock, online_backend) -> Project:
    """A project whose online store is SQLite or the real Redis (the test runs on both)."""
    from loopml.config import write_config

    write_config(tmp_path, "test", overwrite=True)
    project = Project(tmp_path, clock=clock, environ=online_backend)
    yield project
    project.close()
