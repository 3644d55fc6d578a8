"""Data: immutable dataset snapshots with content hashes, the lineage of every training set."""

from loopml.data.snapshots import Snapshot, content_hash, load_snapshot, save_snapshot

__all__ = ["Snapshot", "content_hash", "load_snapshot", "save_snapshot"]
