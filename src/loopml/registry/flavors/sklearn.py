"""scikit-learn estimators and pipelines, stored with joblib: the only flavor that has to pickle.

A pickle only loads reliably into the scikit-learn version that wrote it, so the version is recorded and a
different installed version is refused (or, when asked, only logged): a silent mismatch is how models start
returning subtly wrong scores.
"""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import joblib
import sklearn
from sklearn.base import BaseEstimator

from loopml.errors import ValidationError
from loopml.registry.flavors._common import config_problems, library_versions, read, select

NAME = "sklearn"
FILE = "model.joblib"
SERIALIZATIONS = ("joblib", "pickle", "cloudpickle")
logger = logging.getLogger(__name__)


def matches(model: Any) -> bool:
    return isinstance(model, BaseEstimator)


def save(model: Any) -> tuple[dict[str, bytes], dict[str, Any]]:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    modules = {"sklearn", "numpy", "scipy", "joblib"} | _modules_inside(model)
    config = {
        "path": FILE,
        "serialization": "joblib",
        "sklearn_version": sklearn.__version__,
        "estimator_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "library_versions": library_versions(modules),
    }
    return {FILE: buffer.getvalue()}, config


def load(
    files: Mapping[str, bytes],
    config: Mapping[str, Any],
    *,
    columns: Sequence[str] = (),
    allow_version_mismatch: bool = False,
) -> Any:
    """The estimator behind an adapter that hands it its columns in training order."""
    check_version(config.get("sklearn_version"), allow_version_mismatch)
    serialization = config.get("serialization", "joblib")
    data = read(files, config["path"], NAME)
    if serialization == "joblib":
        estimator = joblib.load(io.BytesIO(data))
    elif serialization in ("pickle", "cloudpickle"):
        estimator = unpickle(data, serialization)
    else:
        raise ValidationError(
            f"flavors.sklearn.serialization is {serialization!r}; loopml reads {', '.join(SERIALIZATIONS)}."
        )
    trained = getattr(estimator, "feature_names_in_", None)
    names = [str(name) for name in trained] if trained is not None else list(columns)
    return (
        SklearnClassifier(estimator, names)
        if hasattr(estimator, "predict_proba")
        else SklearnModel(estimator, names)
    )


class SklearnModel:
    """A fitted estimator given its columns in training order; other attributes are the estimator's."""

    def __init__(self, estimator: Any, columns: Sequence[str]) -> None:
        self.estimator = estimator
        self.columns = list(columns)

    def predict(self, frame: Any) -> Any:
        return self.estimator.predict(select(frame, self.columns))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("estimator", "columns"):
            raise AttributeError(name)
        return getattr(self.estimator, name)


class SklearnClassifier(SklearnModel):
    def predict_proba(self, frame: Any) -> Any:
        return self.estimator.predict_proba(select(frame, self.columns))


def unpickle(data: bytes, serialization: str) -> Any:
    """A (cloud)pickled estimator; cloudpickle output loads with pickle once cloudpickle is importable."""
    try:
        return pickle.loads(data)
    except ModuleNotFoundError as exc:
        if exc.name == "cloudpickle":
            raise ValidationError(
                f"This {serialization} model needs the cloudpickle package to load: pip install cloudpickle."
            ) from exc
        raise ValidationError(
            f"The pickled model refers to the module {exc.name!r}, which is not installed here; install it."
        ) from exc


def check_version(recorded: str | None, allow_version_mismatch: bool) -> None:
    """Refuse a pickle written by another scikit-learn version unless the caller accepts the risk."""
    if recorded is None:
        logger.warning(
            "The sklearn model does not record the scikit-learn version that wrote it; loading it with %s.",
            sklearn.__version__,
        )
        return
    if recorded == sklearn.__version__:
        return
    message = (
        f"The model was pickled with scikit-learn {recorded} but scikit-learn {sklearn.__version__} is "
        f"installed; pickles are not portable across versions and may load wrongly or not at all. Install "
        f"scikit-learn=={recorded}, re-register the model with {sklearn.__version__}, or serve its ONNX export"
    )
    if not allow_version_mismatch:
        raise ValidationError(message + " (or pass allow_version_mismatch=True to load it anyway).")
    logger.warning("%s; loading anyway because allow_version_mismatch=True.", message)


def requirements(config: Mapping[str, Any]) -> list[str]:
    versions = dict(config.get("library_versions") or {})
    if config.get("sklearn_version"):
        versions["scikit-learn"] = config["sklearn_version"]
    return [f"{name}=={version}" for name, version in sorted(versions.items())]


def check_config(config: Any) -> list[str]:
    problems = config_problems(
        config,
        {"path": str},
        {"sklearn_version": str, "serialization": str, "library_versions": dict, "estimator_class": str},
    )
    if not problems and config.get("serialization", "joblib") not in SERIALIZATIONS:
        problems.append(
            f".serialization is {config['serialization']!r}; use one of {', '.join(SERIALIZATIONS)}"
        )
    return problems


def _modules_inside(model: Any) -> set[str]:
    """Top-level modules of the estimator and of every estimator or function nested in its parameters."""
    found = {type(model).__module__.split(".")[0]}
    if hasattr(model, "get_params"):
        for value in model.get_params(deep=True).values():
            module = getattr(value, "__module__", None) or type(value).__module__
            found.add(module.split(".")[0])
    return found - {"builtins", "__main__"}
