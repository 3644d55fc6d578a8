"""LightGBM boosters and LGBM* estimators, stored in LightGBM's own text model format (no pickle).

The text format loads in any later LightGBM; what the scikit-learn wrapper adds on top (class labels,
objective, feature names) is kept in the flavor config, and loading gives an adapter that predicts like the
wrapper did.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from loopml.registry.flavors._common import config_problems, input_names, jsonable, read, select

NAME = "lightgbm"
FILE = "model.txt"
SMALL_BATCH_ROWS = 64  # scored on one thread (a request, not a batch job)
_CLASSIFICATION = ("binary", "multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr")


def matches(model: Any) -> bool:
    lgb = sys.modules.get("lightgbm")
    return lgb is not None and isinstance(model, lgb.Booster | lgb.LGBMModel)


def save(model: Any) -> tuple[dict[str, bytes], dict[str, Any]]:
    import lightgbm as lgb

    booster = model.booster_ if isinstance(model, lgb.LGBMModel) else model
    text = booster.model_to_string()
    objective = _objective(text)
    if isinstance(model, lgb.LGBMClassifier):
        model_class, classes = "LGBMClassifier", jsonable(model.classes_)
    elif isinstance(model, lgb.LGBMModel):
        model_class, classes = ("LGBMRanker" if isinstance(model, lgb.LGBMRanker) else "LGBMRegressor"), None
    else:
        model_class, classes = "Booster", _booster_classes(objective, booster.num_model_per_iteration())
    config = {
        "path": FILE,
        "format": "text",
        "lightgbm_version": lgb.__version__,
        "model_class": model_class,
        "objective": objective,
        "feature_names": booster.feature_name(),
        "classes": classes,
    }
    return {FILE: text.encode()}, config


def load(
    files: Mapping[str, bytes], config: Mapping[str, Any], *, columns: Sequence[str] = (), **_: Any
) -> LightGBMModel:
    import lightgbm as lgb

    booster = lgb.Booster(model_str=read(files, config["path"], NAME).decode())
    names = input_names(config.get("feature_names"), columns)
    model_class = config.get("model_class", "Booster")
    objective = config.get("objective") or _objective(booster.model_to_string(num_iteration=1))
    if config.get("classes") is None:
        return LightGBMModel(booster, names, model_class, objective)
    return LightGBMClassifier(booster, names, model_class, objective, config["classes"])


class LightGBMModel:
    """A LightGBM booster fed with the model's columns in training order."""

    def __init__(self, booster: Any, columns: Sequence[str], model_class: str, objective: str) -> None:
        self.booster = booster
        self.columns = list(columns)
        self.model_class = model_class
        self.objective = objective

    @property
    def takes_matrix(self) -> bool:
        """Whether a float64 matrix of the columns in order scores as their frame does (no pandas categories)."""
        return not self.booster.pandas_categorical

    def predict(self, frame: Any) -> np.ndarray:
        return np.asarray(self._booster_predict(frame))

    def _booster_predict(self, frame: Any) -> Any:
        """The booster's output for the frame's rows.

        A frame of plain numbers goes in as a float64 array, which is what LightGBM turns it into itself, after
        a pandas walk that costs more than scoring a few rows. A few rows are scored on one thread: starting
        LightGBM's thread pool for them costs more than the work and makes its threads spin.
        """
        data = select(frame, self.columns)
        if isinstance(data, pd.DataFrame) and not self.booster.pandas_categorical:
            with contextlib.suppress(
                TypeError, ValueError
            ):  # text: LightGBM's own conversion says what is wrong
                data = data.to_numpy(dtype=np.float64)
        if len(data) <= SMALL_BATCH_ROWS:
            return self.booster.predict(data, num_threads=1)
        return self.booster.predict(data)


class LightGBMClassifier(LightGBMModel):
    """Class probabilities like LGBMClassifier.predict_proba; predict gives labels for wrapper models."""

    def __init__(
        self, booster: Any, columns: Sequence[str], model_class: str, objective: str, classes: Sequence[Any]
    ) -> None:
        super().__init__(booster, columns, model_class, objective)
        self.classes_ = np.asarray(classes)

    def predict_proba(self, frame: Any) -> np.ndarray:
        scores = np.asarray(self._booster_predict(frame))
        return scores if scores.ndim == 2 else np.column_stack([1.0 - scores, scores])

    def predict(self, frame: Any) -> np.ndarray:
        if self.model_class == "Booster":  # a bare booster predicts probabilities, as LightGBM's own does
            return super().predict(frame)
        return self.classes_[np.argmax(self.predict_proba(frame), axis=1)]

    def to_estimator(self) -> Any:
        """An LGBMClassifier around this booster, for tools that expect the scikit-learn wrapper (MLflow)."""
        import lightgbm as lgb
        from lightgbm.sklearn import _LGBMLabelEncoder

        estimator = lgb.LGBMClassifier(objective=self.objective)
        encoder = _LGBMLabelEncoder().fit(self.classes_)
        n_features = self.booster.num_feature()
        state = {
            "_Booster": self.booster,
            "_le": encoder,
            "_classes": encoder.classes_,
            "_n_classes": len(encoder.classes_),
            "_class_map": dict(zip(encoder.classes_, encoder.transform(encoder.classes_), strict=True)),
            "_objective": self.objective,
            "_n_features": n_features,
            "_n_features_in": n_features,
            "_fitted_with_feature_names": True,
            "_evals_result": {},
            "_best_iteration": self.booster.best_iteration,
            "_best_score": {},
            "fitted_": True,
        }
        estimator.__dict__.update(state)
        return estimator


def requirements(config: Mapping[str, Any]) -> list[str]:
    return [f"lightgbm=={config['lightgbm_version']}"] if config.get("lightgbm_version") else []


def check_config(config: Any) -> list[str]:
    return config_problems(
        config,
        {"path": str},
        {
            "lightgbm_version": str,
            "model_class": str,
            "objective": str,
            "feature_names": list,
            "classes": list,
        },
    )


def _objective(text: str) -> str:
    """The objective's name from the text model's header (e.g. 'objective=binary sigmoid:1' -> 'binary')."""
    for line in text.splitlines():
        if line.startswith("objective="):
            return line.split("=", 1)[1].split(" ")[0]
        if line.startswith("Tree="):
            break
    return "regression"


def _booster_classes(objective: str, per_iteration: int) -> list[int] | None:
    if objective not in _CLASSIFICATION:
        return None
    return [0, 1] if objective == "binary" else list(range(per_iteration))
