"""Storage: small interfaces with an embedded default and a production backend, chosen by URL."""

from loopml.storage.artifacts import ArtifactStore
from loopml.storage.metadata import METADATA, MetadataStore
from loopml.storage.offline import OfflineStore
from loopml.storage.online import OnlineStore

__all__ = ["METADATA", "ArtifactStore", "MetadataStore", "OfflineStore", "OnlineStore"]
