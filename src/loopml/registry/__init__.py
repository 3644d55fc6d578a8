"""Registry: registered models, immutable versions with lineage, and aliases whose history is kept."""

from loopml.registry.models import ModelRegistry, ModelVersion

__all__ = ["ModelRegistry", "ModelVersion"]
