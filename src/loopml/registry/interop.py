"""Moving models in and out of the registry: MLflow model directories and loopml model directories."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from loopml.errors import ValidationError
from loopml.registry.flavors import load_model
from loopml.registry.mlflow_format import MLMODEL, read_mlflow_model, write_mlflow_model
from loopml.registry.model_dir import load_model_dir, write_model_dir
from loopml.registry.model_file import MODEL_FILE_NAME
from loopml.registry.models import ModelRegistry, ModelVersion, VersionRecord


def import_model(
    registry: ModelRegistry, path: Path, *, name: str | None = None, actor: str = "loopml", reason: str = ""
) -> ModelVersion:
    """Register the model in `path` (an MLflow directory with an MLmodel file, or a loopml model directory).

    The model is loaded once before anything is recorded, so a directory that cannot serve is refused.
    """
    path = Path(path)
    if (path / MLMODEL).is_file():
        model_file, files = read_mlflow_model(path, model_name=name)
        source = "MLflow"
    elif (path / MODEL_FILE_NAME).is_file():
        model_file, files = load_model_dir(path)
        source = "loopml"
        if name is not None:
            model_file = replace(model_file, model_name=name)
    else:
        raise ValidationError(
            f"{path} holds neither an MLflow model ({MLMODEL}) nor a loopml model ({MODEL_FILE_NAME}); "
            "point at the model's directory."
        )
    load_model(files, model_file)
    return registry.register_files(
        model_file,
        files,
        VersionRecord(run_id=None, metrics=None),
        actor=actor,
        reason=reason or f"imported from the {source} model at {path.resolve()}",
    )


def export_version(
    registry: ModelRegistry, version: ModelVersion, dest: Path, *, format: str = "mlflow"
) -> Path:
    """Write a version to `dest`: an MLflow model directory (loads with mlflow.pyfunc) or a loopml one."""
    files = registry.read_files(version)
    files.pop(MODEL_FILE_NAME, None)
    model_file = registry.model_file(version)
    if format == "mlflow":
        return write_mlflow_model(model_file, files, dest, clock=registry.metadata.clock)
    if format == "loopml":
        return write_model_dir(model_file, files, dest)
    raise ValidationError(f"Unknown export format {format!r}; use 'mlflow' or 'loopml'.")
