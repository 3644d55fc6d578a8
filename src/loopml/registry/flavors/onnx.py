"""ONNX models, run with onnxruntime: the portable format that outlives any training library's version.

Converters either give the graph one float tensor of all features (columns in signature order) or one
input per column named after it; the adapter builds whichever the graph asks for from a DataFrame.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import ValidationError
from loopml.registry.flavors._common import config_problems, library_versions, read, select

NAME = "onnx"
FILE = "model.onnx"
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


def matches(model: Any) -> bool:
    onnx = sys.modules.get("onnx")
    return onnx is not None and isinstance(model, onnx.ModelProto)


def save(model: Any, *, columns: Sequence[str] = ()) -> tuple[dict[str, bytes], dict[str, Any]]:
    import onnx

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    config = {
        "path": FILE,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": library_versions({"onnxruntime"}).get("onnxruntime"),
        "opset": opset,
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "columns": list(columns) or None,
    }
    return {FILE: model.SerializeToString()}, config


def load(
    files: Mapping[str, bytes], config: Mapping[str, Any], *, columns: Sequence[str] = (), **_: Any
) -> ONNXModel:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        read(files, config["path"], NAME), providers=["CPUExecutionProvider"]
    )
    names = list(config.get("columns") or columns)
    outputs = session.get_outputs()
    if len(outputs) >= 2:  # converters give classifiers a label and a probabilities output
        return ONNXClassifier(session, names)
    return ONNXModel(session, names)


class ONNXModel:
    """An onnxruntime session behind predict(frame)."""

    def __init__(self, session: Any, columns: Sequence[str]) -> None:
        self.session = session
        self.columns = list(columns)

    def predict(self, frame: Any) -> np.ndarray:
        result = np.asarray(self.run(frame)[0])
        return result.ravel() if result.ndim == 2 and result.shape[1] == 1 else result

    def run(self, frame: Any) -> list[Any]:
        return self.session.run(None, self._feed(frame))

    def _feed(self, frame: Any) -> dict[str, np.ndarray]:
        inputs = self.session.get_inputs()
        if not isinstance(frame, pd.DataFrame):
            return {inputs[0].name: np.asarray(frame, dtype=_dtype(inputs[0]))}
        if len(inputs) > 1:  # one graph input per column, named after it
            data = select(frame, [i.name for i in inputs])
            return {i.name: data[[i.name]].to_numpy(dtype=_dtype(i)) for i in inputs}
        return {inputs[0].name: select(frame, self.columns).to_numpy(dtype=_dtype(inputs[0]))}


class ONNXClassifier(ONNXModel):
    def predict_proba(self, frame: Any) -> np.ndarray:
        probabilities = self.run(frame)[1]
        if isinstance(probabilities, list):  # a ZipMap output: one {class: probability} per row
            return np.array([list(row.values()) for row in probabilities], dtype=float)
        return np.asarray(probabilities)


def requirements(config: Mapping[str, Any]) -> list[str]:
    runtime = config.get("onnxruntime_version")
    return [f"onnxruntime=={runtime}" if runtime else "onnxruntime"]


def check_config(config: Any) -> list[str]:
    return config_problems(
        config,
        {"path": str},
        {
            "onnx_version": str,
            "onnxruntime_version": str,
            "opset": int,
            "inputs": list,
            "outputs": list,
            "columns": list,
        },
    )


def _dtype(node: Any) -> Any:
    try:
        return _DTYPES[node.type]
    except KeyError:
        raise ValidationError(
            f"ONNX input {node.name!r} has type {node.type}, which loopml cannot feed."
        ) from None
