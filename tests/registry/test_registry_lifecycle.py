"""The registry's life cycle on SQLite and PostgreSQL: model files, alias history, tags, lineage, deletion."""

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.errors import ArtifactCorruptedError, ValidationError
from loopml.project import Project
from loopml.registry.lineage import lineage
from loopml.registry.model_file import MODEL_FILE_NAME, ModelFile
from loopml.serving.endpoints import deploy
from tests.helpers import SPEC, build_world


@pytest.fixture
def registered(any_project: Project):
    events = build_world(any_project)
    trained = any_project.train(SPEC, events)
    v1 = any_project.registry.register(trained, feature_service=None)
    v2 = any_project.registry.register(trained, reason="again")
    return any_project, trained, events, v1, v2


def test_every_version_carries_a_valid_model_file_with_its_lineage(registered) -> None:
    project, trained, events, v1, _ = registered
    files = project.registry.read_files(v1)
    assert (
        MODEL_FILE_NAME in files and v1.artifact_digest == project.registry.files(v1)[MODEL_FILE_NAME].digest
    )
    model_file = ModelFile.from_yaml(files[MODEL_FILE_NAME])
    assert model_file == project.registry.model_file(v1)
    assert "sklearn" in model_file.flavors
    assert [c.name for c in model_file.signature.inputs] == v1.inputs == ["amount", "channel", "risk"]
    assert model_file.features == ("users:risk",)
    assert model_file.data_version["dataset_id"] == trained.snapshot.id
    assert model_file.run_id == trained.run_id
    assert set(model_file.baseline["inputs"]) == {"amount", "channel", "risk"}
    assert len(model_file.input_example) == 5
    assert any(line.startswith("scikit-learn==") for line in model_file.requirements)
    found = lineage(project.metadata, v1)
    assert found["run"]["id"] == trained.run_id and found["run"]["status"] == "finished"
    assert found["training_set"]["id"] == trained.snapshot.id
    assert found["training_set"]["feature_view_versions"] == {"users": 1}
    frame = project.get_historical_features(events.head(20), ["users:risk"])
    np.testing.assert_allclose(
        project.registry.load(v1).predict_proba(frame[v1.inputs]),
        trained.estimator.predict_proba(frame[v1.inputs]),
    )


def test_alias_history_answers_which_version_held_it_at_any_time(registered, clock) -> None:
    project, _, _, v1, v2 = registered
    registry = project.registry
    registry.set_alias("toy", "champion", v1.version, actor="alice", reason="first")
    t1 = clock.now()
    clock.advance(timedelta(hours=5))
    registry.set_alias("toy", "champion", v2.version, actor="bob", reason="better auc")
    t2 = clock.now()
    clock.advance(timedelta(hours=5))
    registry.remove_alias("toy", "champion", actor="carol", reason="retired")
    t3 = clock.now()
    assert registry.alias_at("toy", "champion", t1 - timedelta(seconds=1)) is None
    assert registry.alias_at("toy", "champion", t1) == 1
    assert registry.alias_at("toy", "champion", t2 - timedelta(seconds=1)) == 1
    assert registry.alias_at("toy", "champion", t2) == 2
    assert registry.alias_at("toy", "champion", t3) is None
    periods = registry.alias_history("toy", "champion")
    assert [(p.version, p.valid_from, p.valid_to, p.actor, p.reason) for p in periods] == [
        (1, t1, t2, "alice", "first"),
        (2, t2, t3, "bob", "better auc"),
    ]


def test_tags_on_models_and_versions(registered) -> None:
    project, _, _, v1, _ = registered
    registry = project.registry
    registry.set_tag("toy", "team", "risk")
    registry.set_tag("toy", "reviewed", "yes", version=v1.version)
    registry.set_tag("toy", "reviewed", "no", version=v1.version)
    assert registry.tags("toy") == {"team": "risk"}
    assert registry.tags("toy", version=v1.version) == {"reviewed": "no"}
    assert registry.tags("toy", version=2) == {}
    registry.delete_tag("toy", "reviewed", version=v1.version)
    assert registry.tags("toy", version=v1.version) == {}
    with pytest.raises(ValidationError, match="Tag key"):
        registry.set_tag("toy", " padded ", "x")


def test_deleting_a_version_removes_its_files_unless_another_version_shares_them(registered) -> None:
    project, _, _, v1, v2 = registered
    registry = project.registry
    shared = {f.digest for f in registry.files(v1).values()} & {f.digest for f in registry.files(v2).values()}
    assert shared, "the same estimator's files are stored once"
    registry.delete_version("toy", v1.version, reason="superseded")
    assert all(project.artifacts.exists(d) for d in shared)  # v2 still uses them
    assert [v.version for v in registry.list_versions("toy")] == [2]
    registry.delete_version("toy", v2.version)
    leftover = [p for p in Path(project.artifacts.root).rglob("*") if p.is_file()]
    assert leftover == []
    assert registry.list_versions("toy") == []
    kinds = [e.kind for e in project.metadata.events(subject_prefix="model:toy/")]
    assert kinds.count("model.version_deleted") == 2


def test_deletion_is_refused_while_an_alias_or_endpoint_uses_it(registered) -> None:
    project, _, _, v1, v2 = registered
    registry = project.registry
    registry.set_alias("toy", "champion", v2.version, reason="test")
    with pytest.raises(ValidationError, match=r"toy/2: still used by alias 'champion'"):
        registry.delete_version("toy", v2.version)
    deploy(project.metadata, registry, "scoring", "toy")
    with pytest.raises(ValidationError, match=r"endpoint 'scoring'"):
        registry.delete_version("toy", v2.version)
    with pytest.raises(
        ValidationError, match=r"model 'toy': still used by alias 'champion', endpoint 'scoring'"
    ):
        registry.delete_model("toy")
    registry.delete_version("toy", v1.version)  # unused: fine
    assert project.artifacts.exists(v2.artifact_digest)
    assert registry.load(v2) is not None


def test_a_tampered_file_is_refused_on_load(registered) -> None:
    project, _, _, v1, _ = registered
    for path, stored in project.registry.files(v1).items():
        if path != MODEL_FILE_NAME:
            blob = Path(project.artifacts.path_of(stored.digest))
            blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ArtifactCorruptedError, match="corrupted"):
        project.registry.load(v1)


def test_models_cli_shows_the_model_file_history_and_deletes(registered) -> None:
    project, _, _, v1, v2 = registered
    runner = CliRunner()
    where = ["--project", str(project.path)]
    environ = {"LOOPML_METADATA__URL": str(project.metadata.engine.url.render_as_string(hide_password=False))}
    result = runner.invoke(app, ["models", "show", "toy/1", "--model-file", *where], env=environ)
    assert result.exit_code == 0, result.output
    assert ModelFile.from_yaml(result.output.encode()) == project.registry.model_file(v1)
    result = runner.invoke(
        app, ["models", "alias", "toy", "champion", "2", "--reason", "from cli", *where], env=environ
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["models", "history", "toy", "champion", *where], env=environ)
    assert "from cli" in result.output and "v2" in result.output
    result = runner.invoke(app, ["models", "delete", "toy/2", "--yes", *where], env=environ)
    assert result.exit_code != 0 and "still used by alias 'champion'" in str(
        result.exception or result.output
    )
    result = runner.invoke(app, ["models", "delete", "toy/1", "--yes", *where], env=environ)
    assert result.exit_code == 0, result.output
    assert [v.version for v in project.registry.list_versions("toy")] == [v2.version]
