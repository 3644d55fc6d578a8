"""The repository API's unloaded endpoints: in one process, or shared by the worker processes of a server."""

from pathlib import Path

from loopml.serving.unloaded import UnloadedEndpoints


def test_in_memory_set_adds_discards_and_forgets_deleted_endpoints() -> None:
    unloaded = UnloadedEndpoints()
    unloaded.add("a")
    unloaded.add("b")
    unloaded.discard("a")
    assert "b" in unloaded and "a" not in unloaded
    unloaded.keep_only(["a"])  # b was deleted
    assert "b" not in unloaded
    assert not unloaded.changed()  # nothing else can change it


def test_a_change_by_one_worker_is_seen_by_the_others_once(tmp_path: Path) -> None:
    first, second = UnloadedEndpoints(tmp_path), UnloadedEndpoints(tmp_path)
    assert not second.changed()
    first.add("fraud")
    assert "fraud" not in second  # until its next refresh reads the file
    assert second.changed()
    assert "fraud" in second
    assert not second.changed()  # taken once

    second.add("churn")
    first.discard("fraud")  # reads churn from the file before writing: neither change is lost
    assert second.changed()
    assert "churn" in second and "fraud" not in second
    assert UnloadedEndpoints(tmp_path).changed()  # a worker started later starts with the shared set
    assert not first.changed()  # its own write is what it already holds


def test_keep_only_writes_nothing_when_every_name_is_still_deployed(tmp_path: Path) -> None:
    unloaded = UnloadedEndpoints(tmp_path)
    unloaded.add("a")
    before = (tmp_path / "unloaded.json").stat().st_mtime_ns
    unloaded.keep_only(["a", "b"])
    assert (tmp_path / "unloaded.json").stat().st_mtime_ns == before
    unloaded.keep_only(["b"])
    assert (tmp_path / "unloaded.json").read_text() == "[]"
