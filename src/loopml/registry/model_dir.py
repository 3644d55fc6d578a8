"""A model as a directory: loopml-model.yaml, the flavor files, and a sha256 checksum of every file.

The checksums live in a sidecar, `checksums.sha256`, in the format `sha256sum` writes (`<hex>  <path>`), so
`sha256sum -c checksums.sha256` checks a copied model without loopml. It covers loopml-model.yaml and every
flavor file; loading verifies all of them and refuses the directory on the first mismatch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from loopml.errors import ArtifactCorruptedError, ValidationError
from loopml.registry import flavors
from loopml.registry.model_file import MODEL_FILE_NAME, ModelFile
from loopml.registry.signature import Signature, infer_signature

CHECKSUMS_FILE_NAME = "checksums.sha256"
logger = logging.getLogger(__name__)


def build_model_file(
    model: Any,
    *,
    model_name: str,
    signature: Signature | None = None,
    input_example: pd.DataFrame | list[dict[str, Any]] | None = None,
    artifacts: Mapping[str, Path | str] | None = None,
    code_paths: Sequence[Path | str] = (),
    requirements: Sequence[str] | None = None,
    **fields: Any,
) -> tuple[ModelFile, dict[str, bytes]]:
    """The model's files and its model file, without writing anything (the registry stores both itself).

    The signature is inferred from a DataFrame input example when not given; requirements default to the
    pinned versions the flavor recorded. `fields` are the remaining ModelFile fields (features, run_id...).
    """
    files, flavors_config = flavors.save_model(model, artifacts=artifacts, code_paths=code_paths)
    example = _records(input_example.head(5)) if isinstance(input_example, pd.DataFrame) else input_example
    if signature is None and example:
        signature = infer_signature(pd.DataFrame(input_example))
    model_file = ModelFile(
        model_name=model_name,
        flavors=flavors_config,
        signature=signature or Signature(),
        input_example=example,
        requirements=tuple(
            requirements if requirements is not None else flavors.requirements(flavors_config)
        ),
        python_version=fields.pop("python_version", platform.python_version()),
        **{key: tuple(value) if key == "features" else value for key, value in fields.items()},
    )
    ModelFile.from_dict(model_file.to_dict())  # the same checks a reader will run, before anything is stored
    return model_file, files


def save_model_dir(model: Any, path: Path | str, *, model_name: str, **options: Any) -> ModelFile:
    """Write the model to an empty (or new) directory; options are build_model_file's."""
    model_file, files = build_model_file(model, model_name=model_name, **options)
    write_model_dir(model_file, files, path)
    return model_file


def write_model_dir(model_file: ModelFile, files: Mapping[str, bytes], path: Path | str) -> Path:
    """Write a model file and its files with their checksums, e.g. to export a registered version."""
    root = Path(path)
    if root.exists() and any(root.iterdir()):
        raise ValidationError(f"{root} is not empty; write a model directory to a new or empty directory.")
    contents = {MODEL_FILE_NAME: model_file.to_yaml(), **files}
    for relative, data in contents.items():
        target = _inside(root, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    lines = [
        f"{hashlib.sha256(data).hexdigest()}  {relative}\n" for relative, data in sorted(contents.items())
    ]
    (root / CHECKSUMS_FILE_NAME).write_text("".join(lines))
    return root


def load_model_dir(path: Path | str) -> tuple[ModelFile, dict[str, bytes]]:
    """The validated model file and the model's files, every one checked against checksums.sha256."""
    root = Path(path)
    sums_path = root / CHECKSUMS_FILE_NAME
    if not sums_path.is_file():
        raise ArtifactCorruptedError(
            f"{sums_path} is missing, so the model's files cannot be verified; export the model again."
        )
    expected = _read_checksums(sums_path)
    if MODEL_FILE_NAME not in expected:
        raise ArtifactCorruptedError(f"{sums_path} does not list {MODEL_FILE_NAME}; export the model again.")
    contents = {}
    for relative, digest in expected.items():
        file = _inside(root, relative)
        if not file.is_file():
            raise ArtifactCorruptedError(
                f"{file} is listed in {CHECKSUMS_FILE_NAME} but missing; restore it."
            )
        data = file.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactCorruptedError(
                f"{file} does not match its checksum in {CHECKSUMS_FILE_NAME} (expected sha256:{digest}, got "
                f"sha256:{actual}): the file was changed or damaged. Refusing to load it; restore it or export "
                "the model again."
            )
        contents[relative] = data
    _warn_unlisted(root, set(expected))
    model_file = ModelFile.from_yaml(contents.pop(MODEL_FILE_NAME), str(root / MODEL_FILE_NAME))
    return model_file, contents


def _read_checksums(path: Path) -> dict[str, str]:
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, separator, relative = line.partition("  ")
        if not separator or len(digest) != 64:
            raise ArtifactCorruptedError(f"{path}:{number} is not a '<sha256>  <path>' line: {line!r}.")
        sums[relative] = digest
    return sums


def _inside(root: Path, relative: str) -> Path:
    """root/relative, refusing paths that would leave the model directory."""
    target = (root / relative).resolve()
    if os.path.isabs(relative) or not target.is_relative_to(root.resolve()):
        raise ValidationError(
            f"The model file path {relative!r} points outside the model directory; refusing it."
        )
    return root / relative


def _warn_unlisted(root: Path, listed: set[str]) -> None:
    unlisted = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() not in listed | {CHECKSUMS_FILE_NAME}
    ]
    if unlisted:
        logger.warning(
            "Ignoring files not listed in %s: %s", root / CHECKSUMS_FILE_NAME, sorted(unlisted)[:20]
        )


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-friendly records: timestamps as ISO strings, NaN as None, numpy scalars as Python ones."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))
