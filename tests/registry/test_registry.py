from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from loopml.errors import ArtifactCorruptedError, NotFoundError, ValidationError
from loopml.project import Project
from tests.helpers import SPEC, build_world


@pytest.fixture
def two_versions(project: Project):
    events = build_world(project)
    trained = project.train(SPEC, events)
    return trained, project.registry.register(trained), project.registry.register(trained, reason="again")


def test_versions_are_numbered_and_carry_lineage(project: Project, two_versions) -> None:
    trained, v1, v2 = two_versions
    assert (v1.version, v2.version) == (1, 2)
    assert v1.run_id == trained.run_id and v1.dataset_id == trained.snapshot.id
    assert v1.inputs == ["amount", "channel", "risk"] and v1.features == ["users:risk"]
    assert project.registry.resolve("toy/2") == v2
    assert project.registry.training_spec("toy") == SPEC
    loaded = project.registry.load(v1)
    frame = project.get_historical_features(build_world(project).head(20), ["users:risk"])
    np.testing.assert_allclose(
        loaded.predict_proba(frame[v1.inputs]), trained.estimator.predict_proba(frame[v1.inputs])
    )


def test_alias_moves_are_events_and_history_answers_at_time_t(project: Project, clock, two_versions) -> None:
    registry = project.registry
    registry.set_alias("toy", "champion", 1, actor="alice", reason="first")
    t1 = clock.now()
    clock.advance(timedelta(days=1))
    registry.set_alias("toy", "champion", 2, actor="bob", reason="better", evidence={"auc": 0.9})
    registry.set_alias("toy", "champion", 2, actor="bob", reason="no-op")  # unchanged: no event
    assert registry.resolve("toy@champion").version == 2
    moves = project.metadata.events(kind="alias.moved")
    assert [(e.actor, e.data["from_version"], e.data["to_version"]) for e in moves] == [
        ("alice", None, 1),
        ("bob", 1, 2),
    ]
    assert moves[1].data["auc"] == 0.9
    assert registry.alias_at("toy", "champion", t1) == 1
    assert registry.alias_at("toy", "champion", clock.now()) == 2
    assert registry.alias_at("toy", "champion", t1 - timedelta(seconds=1)) is None
    counter = project.metadata.change_counter()
    registry.remove_alias("toy", "champion", reason="retired")
    assert registry.get_alias("toy", "champion") is None
    assert project.metadata.change_counter() == counter + 1


def test_bad_references_and_aliases(project: Project, two_versions) -> None:
    with pytest.raises(NotFoundError, match="no version 9"):
        project.registry.resolve("toy/9")
    with pytest.raises(NotFoundError, match="no alias 'prod'"):
        project.registry.resolve("toy@prod")
    with pytest.raises(ValidationError, match="name@alias"):
        project.registry.resolve("toy")
    with pytest.raises(ValidationError, match="Alias"):
        project.registry.set_alias("toy", "bad alias!", 1, reason="x")


def test_loading_a_tampered_model_is_refused(project: Project, two_versions) -> None:
    _, v1, _ = two_versions
    Path(project.artifacts.path_of(v1.artifact_digest)).write_bytes(b"not a model")
    with pytest.raises(ArtifactCorruptedError):
        project.registry.load(v1)
