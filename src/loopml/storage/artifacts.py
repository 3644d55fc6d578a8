"""ArtifactStore: immutable blobs addressed by their sha256, on any fsspec filesystem.

Writes go to a temporary name and are renamed into place, so a reader never sees half a file; every read
recomputes the checksum and refuses a blob that no longer matches its address.
"""

from __future__ import annotations

import hashlib
import re
import uuid

import fsspec

from loopml.errors import ArtifactCorruptedError, NotFoundError, ValidationError

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ArtifactStore:
    """Content-addressed blob store rooted at a directory or fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)

    def put(self, data: bytes) -> str:
        """Store `data` and return its sha256 digest; storing the same bytes twice is free."""
        digest = hashlib.sha256(data).hexdigest()
        final = self._path(digest)
        if self.fs.exists(final):
            return digest
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{final}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(temporary, "wb") as handle:
            handle.write(data)
        self.fs.mv(temporary, final)
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes stored under `digest`, verified against it."""
        path = self._path(digest)
        if not self.fs.exists(path):
            raise NotFoundError(
                f"No artifact sha256:{digest} in {self.url}; was it deleted or written elsewhere?"
            )
        with self.fs.open(path, "rb") as handle:
            data = handle.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactCorruptedError(
                f"Artifact sha256:{digest} at {path} is corrupted: its content hashes to sha256:{actual}. "
                "Refusing to use it; restore the file from a backup or re-register the model."
            )
        return data

    def delete(self, digest: str) -> None:
        """Remove a blob; removing one that is already gone is not an error."""
        path = self._path(digest)
        if self.fs.exists(path):
            self.fs.rm(path)

    def exists(self, digest: str) -> bool:
        return self.fs.exists(self._path(digest))

    def path_of(self, digest: str) -> str:
        """Where the blob lives (for tooling and tests, not for reading around the checksum)."""
        return self._path(digest)

    def _path(self, digest: str) -> str:
        if not _DIGEST.match(digest):
            raise ValidationError(f"'{digest}' is not a sha256 digest (64 lower-case hex characters).")
        return f"{self.root}/sha256/{digest[:2]}/{digest[2:]}"
