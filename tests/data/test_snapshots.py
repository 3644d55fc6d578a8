from pathlib import Path

import pandas as pd
import pytest

from loopml.data.snapshots import content_hash, get_snapshot, load_snapshot, save_snapshot
from loopml.errors import ArtifactCorruptedError
from loopml.project import Project


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"a": [1, 2, 3], "t": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True)}
    )


def test_content_hash_depends_on_content_only() -> None:
    assert content_hash(frame()) == content_hash(frame().set_index(pd.Index([7, 8, 9])))
    changed = frame()
    changed.loc[0, "a"] = 4
    assert content_hash(changed) != content_hash(frame())
    assert content_hash(frame().rename(columns={"a": "b"})) != content_hash(frame())


def test_snapshot_round_trip_records_shape_and_time_range(project: Project) -> None:
    snapshot = save_snapshot(
        project.metadata, project.offline, "train", frame(), timestamp_field="t", spec={"k": 1}
    )
    assert (snapshot.n_rows, snapshot.columns["a"], snapshot.spec) == (3, "int64", {"k": 1})
    assert (snapshot.time_start.day, snapshot.time_end.day) == (1, 3)
    assert get_snapshot(project.metadata, snapshot.id) == snapshot
    pd.testing.assert_frame_equal(load_snapshot(project.metadata, project.offline, snapshot.id), frame())
    assert save_snapshot(project.metadata, project.offline, "train", frame(), spec={"k": 1}).id == snapshot.id


def test_tampered_snapshot_is_refused(project: Project) -> None:
    snapshot = save_snapshot(project.metadata, project.offline, "train", frame())
    path = Path(project.offline.dataset_dir(snapshot.path))
    changed = frame()
    changed.loc[0, "a"] = 99
    changed.to_parquet(path)
    with pytest.raises(ArtifactCorruptedError, match="modified after it was saved"):
        load_snapshot(project.metadata, project.offline, snapshot.id)


def test_same_content_from_other_definitions_is_a_new_snapshot_sharing_the_file(project: Project) -> None:
    first = save_snapshot(
        project.metadata, project.offline, "train", frame(), spec={"feature_view_versions": {"v": 1}}
    )
    again = save_snapshot(
        project.metadata, project.offline, "train", frame(), spec={"feature_view_versions": {"v": 1}}
    )
    other = save_snapshot(
        project.metadata, project.offline, "train", frame(), spec={"feature_view_versions": {"v": 2}}
    )
    assert again.id == first.id
    assert other.id != first.id and other.spec == {"feature_view_versions": {"v": 2}}
    assert (other.path, other.file_sha256, other.content_hash) == (
        first.path,
        first.file_sha256,
        first.content_hash,
    )
    pd.testing.assert_frame_equal(load_snapshot(project.metadata, project.offline, other.id), frame())
