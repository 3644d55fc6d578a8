"""Registrations of one model from many writers at once: every one gets its own version number."""

import threading
from pathlib import Path

from sklearn.dummy import DummyClassifier

from loopml.registry.model_dir import build_model_file
from loopml.registry.models import ModelRegistry
from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import MetadataStore
from tests.helpers import SPEC


def test_concurrent_registrations_get_distinct_consecutive_versions(
    metadata: MetadataStore, tmp_path: Path
) -> None:
    registry = ModelRegistry(metadata, ArtifactStore(tmp_path / "artifacts"))
    model_file, files = build_model_file(
        DummyClassifier().fit([[0], [1]], [0, 1]), model_name=SPEC.model_name
    )
    start, versions, errors = threading.Barrier(6), [], []

    def register() -> None:
        start.wait()
        try:
            for _ in range(4):
                versions.append(registry.register_files(model_file, files).version)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(versions) == list(range(1, 25))
    assert [v.version for v in registry.list_versions(SPEC.model_name)] == list(range(1, 25))
    assert len(metadata.events(kind="model.registered")) == 24
