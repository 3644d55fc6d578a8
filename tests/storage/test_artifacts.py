import hashlib
from pathlib import Path

import pytest

from loopml.errors import ArtifactCorruptedError, NotFoundError, ValidationError
from loopml.storage.artifacts import ArtifactStore


def test_put_returns_sha256_and_get_returns_the_bytes(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    digest = store.put(b"model bytes")
    assert digest == hashlib.sha256(b"model bytes").hexdigest()
    assert store.get(digest) == b"model bytes"
    assert store.put(b"model bytes") == digest


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    digest = store.put(b"original")
    Path(store.path_of(digest)).write_bytes(b"tampered")
    with pytest.raises(ArtifactCorruptedError, match=f"sha256:{digest}.*corrupted"):
        store.get(digest)


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    for i in range(5):
        store.put(f"blob {i}".encode())
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 5


def test_missing_and_malformed_digests_have_clear_errors(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(NotFoundError, match="No artifact"):
        store.get("0" * 64)
    with pytest.raises(ValidationError, match="not a sha256 digest"):
        store.get("../../etc/passwd")


def test_fsspec_url(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}/blobs")
    assert store.get(store.put(b"x")) == b"x"
    assert (tmp_path / "blobs" / "sha256").is_dir()
