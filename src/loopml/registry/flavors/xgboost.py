"""XGBoost boosters and XGB* estimators, stored in XGBoost's UBJSON model format (no pickle).

XGBoost's own save_model keeps what its scikit-learn wrapper needs (classes, objective) inside the file, so
the wrapper is rebuilt natively; the adapter only puts the columns in training order.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loopml.errors import ValidationError
from loopml.registry.flavors._common import config_problems, input_names, jsonable, read, select

NAME = "xgboost"
FILE = "model.ubj"
MODEL_CLASSES = ("Booster", "XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor")
_PROBABILITIES = ("binary:logistic", "multi:softprob")


def matches(model: Any) -> bool:
    xgb = sys.modules.get("xgboost")
    return xgb is not None and isinstance(model, xgb.Booster | xgb.XGBModel)


def save(model: Any) -> tuple[dict[str, bytes], dict[str, Any]]:
    import xgboost as xgb

    with tempfile.TemporaryDirectory(prefix="loopml-xgb-") as tmp:
        path = Path(tmp) / FILE
        model.save_model(str(path))  # the wrapper's save_model embeds its own attributes
        data = path.read_bytes()
    booster = model.get_booster() if isinstance(model, xgb.XGBModel) else model
    config = {
        "path": FILE,
        "format": "ubj",
        "xgboost_version": xgb.__version__,
        "model_class": _model_class(model),
        "objective": json.loads(booster.save_config())["learner"]["objective"]["name"],
        "feature_names": list(booster.feature_names or []),
        "classes": jsonable(model.classes_) if isinstance(model, xgb.XGBClassifier) else None,
    }
    return {FILE: data}, config


def load(
    files: Mapping[str, bytes], config: Mapping[str, Any], *, columns: Sequence[str] = (), **_: Any
) -> XGBoostModel:
    import xgboost as xgb

    model_class = config.get("model_class", "Booster")
    model = getattr(xgb, model_class)()
    model.load_model(bytearray(read(files, config["path"], NAME)))
    names = input_names(config.get("feature_names"), columns)
    objective = config.get("objective", "")
    if model_class in ("XGBClassifier", "XGBRFClassifier") or (
        model_class == "Booster" and objective in _PROBABILITIES
    ):
        return XGBoostClassifier(model, names, objective)
    return XGBoostModel(model, names, objective)


class XGBoostModel:
    """An XGBoost model (wrapper or booster) fed with the model's columns in training order."""

    def __init__(self, model: Any, columns: Sequence[str], objective: str) -> None:
        self.model = model
        self.columns = list(columns)
        self.objective = objective

    def predict(self, frame: Any) -> np.ndarray:
        return np.asarray(self._run(frame, "predict"))

    def _run(self, frame: Any, method: str) -> Any:
        import xgboost as xgb

        data = select(frame, self.columns)
        if isinstance(self.model, xgb.Booster):
            return self.model.predict(xgb.DMatrix(data))
        return getattr(self.model, method)(data)


class XGBoostClassifier(XGBoostModel):
    def predict_proba(self, frame: Any) -> np.ndarray:
        scores = np.asarray(self._run(frame, "predict_proba"))
        return scores if scores.ndim == 2 else np.column_stack([1.0 - scores, scores])


def requirements(config: Mapping[str, Any]) -> list[str]:
    return [f"xgboost=={config['xgboost_version']}"] if config.get("xgboost_version") else []


def check_config(config: Any) -> list[str]:
    problems = config_problems(
        config,
        {"path": str},
        {
            "xgboost_version": str,
            "model_class": str,
            "objective": str,
            "feature_names": list,
            "classes": list,
        },
    )
    if not problems and config.get("model_class", "Booster") not in MODEL_CLASSES:
        problems.append(f".model_class is {config['model_class']!r}; use one of {', '.join(MODEL_CLASSES)}")
    return problems


def _model_class(model: Any) -> str:
    """The XGBoost class to rebuild: the model's own, or the nearest XGBoost class it derives from."""
    import xgboost as xgb

    for cls in type(model).__mro__:
        if cls.__name__ in MODEL_CLASSES and getattr(xgb, cls.__name__, None) is cls:
            return cls.__name__
    raise ValidationError(f"{type(model).__name__} is not one of XGBoost's model classes {MODEL_CLASSES}.")
