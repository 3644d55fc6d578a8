"""Export tree models to ONNX, and prove the export predicts what the original does on a sample.

ONNX is the format that outlives training libraries' versions (an sklearn pickle does not); an export is
only trusted after the original and the ONNX graph have scored the same rows within a tolerance. Tree
ensembles run in float32 in ONNX: a value lying exactly on a split threshold can fall on the other side
after rounding (XGBoost after a scaler is the usual case), which the check reports instead of hiding.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import ValidationError

OPSET = 17
ML_OPSET = 3  # the newest ai.onnx.ml opset onnxmltools' tree converters write
_REGISTER_LOCK = threading.Lock()
_registered = False


def export_onnx(model: Any, sample: pd.DataFrame, *, tolerance: float = 1e-4) -> tuple[bytes, dict[str, Any]]:
    """The serialized ONNX model and a report: max_abs_diff, n_rows, tolerance, opset, output, columns."""
    if not isinstance(sample, pd.DataFrame) or sample.empty:
        raise ValidationError("export_onnx needs a non-empty pandas DataFrame sample of the model's inputs.")
    text = [str(c) for c in sample.columns if not pd.api.types.is_numeric_dtype(sample[c])]
    if text:
        raise ValidationError(
            f"ONNX export supports numeric inputs only; the columns {text} are not numeric. Encode them "
            "before the model, or serve the native flavor."
        )
    proto = _convert(model, sample)
    onnx_scores = _onnx_scores(proto, sample, per_column=len(proto.graph.input) > 1)
    reference = _reference_scores(model, sample, onnx_scores)
    diff = float(np.max(np.abs(onnx_scores - reference))) if len(reference) else 0.0
    report = {
        "max_abs_diff": diff,
        "n_rows": len(sample),
        "tolerance": tolerance,
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=OPSET),
        "output": "probabilities" if _is_classifier(model) else "predictions",
        "columns": [str(c) for c in sample.columns],
    }
    if not diff <= tolerance:
        raise ValidationError(
            f"The ONNX export of {type(model).__name__} differs from the original by up to {diff:.3g} on "
            f"{len(sample)} sample rows (tolerance {tolerance:g}); not exporting it. Serve the native flavor, "
            "or check the sample for values lying on split thresholds after preprocessing."
        )
    return proto.SerializeToString(), report


def _convert(model: Any, sample: pd.DataFrame) -> Any:
    lgb = _module("lightgbm")
    xgb = _module("xgboost")
    if lgb is not None and isinstance(model, lgb.Booster):
        return _convert_booster(model, sample, "lightgbm")
    if xgb is not None and isinstance(model, xgb.Booster):
        return _convert_booster(model, sample, "xgboost")
    from sklearn.base import BaseEstimator

    if not isinstance(model, BaseEstimator):
        raise ValidationError(
            f"ONNX export supports scikit-learn estimators and pipelines, LightGBM and XGBoost models; "
            f"not {type(model).__module__}.{type(model).__qualname__}."
        )
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    _register_boosters()
    model = _without_xgboost_names(model)
    if _selects_columns_by_name(model):
        inputs = [(str(c), FloatTensorType([None, 1])) for c in sample.columns]
    else:
        inputs = [("input", FloatTensorType([None, sample.shape[1]]))]
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if _is_classifier(final) else None
    try:
        return convert_sklearn(
            model, initial_types=inputs, options=options, target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET}
        )
    except Exception as exc:  # converters raise many kinds of error for what they do not support
        raise ValidationError(
            f"skl2onnx cannot convert {type(model).__name__}: {exc}. ONNX export supports tree models "
            "(scikit-learn trees, forests and gradient boosting, LightGBM, XGBoost) and numeric preprocessing."
        ) from exc


def _convert_booster(booster: Any, sample: pd.DataFrame, library: str) -> Any:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    inputs = [("input", FloatTensorType([None, sample.shape[1]]))]
    if library == "lightgbm":
        return onnxmltools.convert_lightgbm(booster, initial_types=inputs, zipmap=False)
    booster = copy.copy(booster)
    booster.feature_names = None  # the converter reads features as 'f<index>'
    return onnxmltools.convert_xgboost(booster, initial_types=inputs)


def _onnx_scores(proto: Any, sample: pd.DataFrame, *, per_column: bool) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    if per_column:
        feed = {str(c): sample[[c]].to_numpy(np.float32) for c in sample.columns}
    else:
        feed = {session.get_inputs()[0].name: sample.to_numpy(np.float32)}
    outputs = session.run(None, feed)
    scores = np.asarray(outputs[1] if len(outputs) > 1 else outputs[0], dtype=float)
    return scores.ravel() if scores.ndim == 2 and scores.shape[1] == 1 else scores


def _reference_scores(model: Any, sample: pd.DataFrame, onnx_scores: np.ndarray) -> np.ndarray:
    lgb = _module("lightgbm")
    xgb = _module("xgboost")
    if lgb is not None and isinstance(model, lgb.Booster):
        scores = np.asarray(model.predict(sample))
    elif xgb is not None and isinstance(model, xgb.Booster):
        scores = np.asarray(model.predict(xgb.DMatrix(sample)))
    elif _is_classifier(model):
        scores = np.asarray(model.predict_proba(sample))
    else:
        scores = np.asarray(model.predict(sample))
    scores = scores.astype(float)
    if scores.ndim == 1 and onnx_scores.ndim == 2 and onnx_scores.shape[1] == 2:
        scores = np.column_stack([1.0 - scores, scores])  # a binary booster predicts the positive class only
    if scores.shape != onnx_scores.shape:
        raise ValidationError(
            f"The ONNX export of {type(model).__name__} gives outputs of shape {onnx_scores.shape}, the original "
            f"{scores.shape}; the converter does not support this model."
        )
    return scores


def _is_classifier(model: Any) -> bool:
    return hasattr(model, "predict_proba") or getattr(model, "_estimator_type", None) == "classifier"


def _selects_columns_by_name(model: Any) -> bool:
    """Whether a ColumnTransformer inside picks columns by name, so the graph needs one input per column."""
    from sklearn.compose import ColumnTransformer

    parts = [model, *model.get_params(deep=True).values()]
    return any(
        isinstance(part, ColumnTransformer)
        and any(
            isinstance(cols, str) or (isinstance(cols, list) and cols and isinstance(cols[0], str))
            for _, _, cols in part.transformers
        )
        for part in parts
    )


def _without_xgboost_names(model: Any) -> Any:
    """A copy whose XGBoost boosters have no feature names (the converter reads features as 'f<index>')."""
    xgb = _module("xgboost")
    if xgb is None:
        return model
    parts = [model, *model.get_params(deep=True).values()] if hasattr(model, "get_params") else [model]
    if not any(isinstance(part, xgb.XGBModel) for part in parts):
        return model
    model = copy.deepcopy(model)
    for part in [model, *model.get_params(deep=True).values()]:
        if isinstance(part, xgb.XGBModel):
            part.get_booster().feature_names = None
    return model


def _register_boosters() -> None:
    """Teach skl2onnx the LightGBM and XGBoost estimators (also inside pipelines), once per process."""
    global _registered
    with _REGISTER_LOCK:
        if _registered:
            return
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )

        classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
        lgb = _module("lightgbm", load=True)
        if lgb is not None:
            from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

            update_registered_converter(
                lgb.LGBMClassifier,
                "LightGbmLGBMClassifier",
                calculate_linear_classifier_output_shapes,
                convert_lightgbm,
                options=classifier_options,
            )
            update_registered_converter(
                lgb.LGBMRegressor,
                "LightGbmLGBMRegressor",
                calculate_linear_regressor_output_shapes,
                convert_lightgbm,
                options={"split": None},
            )
        xgb = _module("xgboost", load=True)
        if xgb is not None:
            from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

            update_registered_converter(
                xgb.XGBClassifier,
                "XGBoostXGBClassifier",
                calculate_linear_classifier_output_shapes,
                convert_xgboost,
                options=classifier_options,
            )
            update_registered_converter(
                xgb.XGBRegressor,
                "XGBoostXGBRegressor",
                calculate_linear_regressor_output_shapes,
                convert_xgboost,
            )
        _registered = True


def _module(name: str, *, load: bool = False) -> Any:
    """An optional library: already imported (a model of it exists), or imported when `load` and installed."""
    import importlib
    import sys

    if name in sys.modules or not load:
        return sys.modules.get(name)
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def onnx_flavor(data: bytes, report: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files and `onnx` flavor config for an export, to add beside the model's native flavor."""
    import onnx

    from loopml.registry.flavors import onnx as onnx_flavor_module

    files, config = onnx_flavor_module.save(onnx.load_from_string(data), columns=report["columns"])
    return files, {**config, "check": report}
