"""Model flavors: how each kind of model becomes files and comes back as something with predict(frame).

Every flavor module offers save(model) -> (files, config), load(files, config, columns=...) and
check_config(config). Loaded models predict on a pandas DataFrame, and classifiers also give
predict_proba(frame) as an (n, n_classes) array, so one scoring path serves every flavor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from loopml.errors import ValidationError
from loopml.registry.flavors import lightgbm, onnx, pyfunc, sklearn, xgboost

if TYPE_CHECKING:
    from loopml.registry.model_file import ModelFile

FLAVORS: dict[str, ModuleType] = {
    "sklearn": sklearn,
    "lightgbm": lightgbm,
    "xgboost": xgboost,
    "onnx": onnx,
    "pyfunc": pyfunc,
}
# Loading prefers the library that trained the model; ONNX, when present beside it, is the portable fallback.
LOAD_ORDER = ("lightgbm", "xgboost", "sklearn", "pyfunc", "onnx")
# Detection order matters: LGBM*/XGB* estimators are scikit-learn estimators too.
_DETECT_ORDER = ("pyfunc", "lightgbm", "xgboost", "onnx", "sklearn")


def flavor_for(model: Any) -> str:
    """The flavor that stores `model`."""
    for name in _DETECT_ORDER:
        if FLAVORS[name].matches(model):
            return name
    raise ValidationError(
        f"loopml cannot store a {type(model).__module__}.{type(model).__qualname__}: it stores scikit-learn "
        "estimators and pipelines, LightGBM and XGBoost models, ONNX ModelProtos and subclasses of "
        "loopml.registry.flavors.pyfunc.PythonModel. Wrap other models in a PythonModel."
    )


def save_model(
    model: Any,
    *,
    artifacts: Mapping[str, Path | str] | None = None,
    code_paths: Sequence[Path | str] = (),
) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """The model's files (relative path -> bytes) and its flavors section; artifacts/code_paths are pyfunc's."""
    name = flavor_for(model)
    if name == "pyfunc":
        files, config = pyfunc.save(model, artifacts=artifacts, code_paths=code_paths)
    else:
        if artifacts or code_paths:
            raise ValidationError(
                f"artifacts and code_paths apply to PythonModel models, not to {name} ones."
            )
        files, config = FLAVORS[name].save(model)
    return files, {name: config}


def load_model(
    files: Mapping[str, bytes],
    model_file: ModelFile,
    prefer: str | None = None,
    *,
    allow_version_mismatch: bool = False,
) -> Any:
    """Load the model with `prefer` if given, else with the first flavor of LOAD_ORDER it has."""
    name = pick_flavor(model_file, prefer)
    return FLAVORS[name].load(
        files,
        model_file.flavors[name],
        columns=model_file.signature.input_names,
        allow_version_mismatch=allow_version_mismatch,
    )


def pick_flavor(model_file: ModelFile, prefer: str | None = None) -> str:
    loadable = [name for name in LOAD_ORDER if name in model_file.flavors]
    if prefer is not None:
        if prefer not in loadable:
            raise ValidationError(
                f"Model {model_file.model_name!r} has no {prefer!r} flavor; it can be loaded as "
                f"{loadable or 'nothing loopml knows'} (flavors: {sorted(model_file.flavors)})."
            )
        return prefer
    if not loadable:
        raise ValidationError(
            f"Model {model_file.model_name!r} has no flavor loopml can load (it has {sorted(model_file.flavors)}; "
            f"loopml loads {', '.join(LOAD_ORDER)})."
        )
    return loadable[0]


def check_config(name: str, config: Any) -> list[str]:
    """Problems with a known flavor's config as 'flavors.<name>.<key> ...' phrases; unknown flavors pass."""
    flavor = FLAVORS.get(name)
    return [f"flavors.{name}{problem}" for problem in flavor.check_config(config)] if flavor else []


def requirements(flavors: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    """Pinned pip lines for the libraries the flavors recorded, without duplicates."""
    lines: dict[str, str] = {}
    for name, config in flavors.items():
        if name in FLAVORS:
            for line in FLAVORS[name].requirements(config):
                lines.setdefault(line.split("==")[0].lower(), line)
    return tuple(sorted(lines.values()))
