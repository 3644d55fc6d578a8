"""What a model reads and writes: named, typed columns, the same vocabulary as MLflow's column signatures.

Serving checks a request against the signature before it reaches the model, and the flavors use the input
order to hand native boosters and ONNX sessions their columns in the order they were trained on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import ValidationError

# MLflow's column types, in its spelling; "what each accepts" is by numpy dtype kind.
COLUMN_TYPES = ("double", "float", "long", "integer", "boolean", "string", "binary", "datetime")
_ACCEPTS = {
    "double": "fiub",
    "float": "fiub",
    "long": "iub",
    "integer": "iub",
    "boolean": "b",
    "string": "OSUT",
    "binary": "OS",
    "datetime": "M",
}


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    required: bool = True

    def __post_init__(self) -> None:
        if self.type not in COLUMN_TYPES:
            raise ValidationError(
                f"Column {self.name!r} has type {self.type!r}; use one of {', '.join(COLUMN_TYPES)}."
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "required": self.required}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[ColumnSpec, ...] = ()
    outputs: tuple[ColumnSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    @property
    def input_names(self) -> list[str]:
        return [column.name for column in self.inputs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [column.to_dict() for column in self.inputs],
            "outputs": [column.to_dict() for column in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "signature") -> Signature:
        """Parse {'inputs': [...], 'outputs': [...]}; `where` prefixes error messages (file and key)."""
        if not isinstance(data, Mapping):
            raise ValidationError(f"{where} must be a mapping with 'inputs' and 'outputs', got {data!r}.")
        unknown = sorted(set(data) - {"inputs", "outputs"})
        if unknown:
            raise ValidationError(
                f"{where} has unknown keys {unknown}; only 'inputs' and 'outputs' are allowed."
            )
        return cls(
            _columns(data.get("inputs") or [], f"{where}.inputs"),
            _columns(data.get("outputs") or [], f"{where}.outputs"),
        )

    def to_mlflow(self) -> dict[str, str | None]:
        """MLflow's MLmodel `signature` value: each side a JSON string of column specs."""

        def dump(columns: tuple[ColumnSpec, ...]) -> str | None:
            if not columns:
                return None
            return json.dumps([{"type": c.type, "name": c.name, "required": c.required} for c in columns])

        return {"inputs": dump(self.inputs), "outputs": dump(self.outputs), "params": None}

    @classmethod
    def from_mlflow(cls, data: Any, where: str = "MLmodel: signature") -> Signature:
        """Parse MLflow's MLmodel `signature` (JSON strings of column specs).

        Tensor outputs (what MLflow infers from a numpy prediction) become columns; tensor inputs are refused,
        since loopml's models take named columns.
        """
        if not isinstance(data, Mapping):
            raise ValidationError(f"{where} must be a mapping with 'inputs' and 'outputs', got {data!r}.")
        sides = []
        for side in ("inputs", "outputs"):
            raw = data.get(side)
            if raw in (None, "", "null"):
                sides.append(())
                continue
            try:
                specs = json.loads(raw) if isinstance(raw, str) else raw
            except json.JSONDecodeError as exc:
                raise ValidationError(f"{where}.{side} is not valid JSON ({exc}): {raw!r}.") from exc
            if not isinstance(specs, list):
                raise ValidationError(f"{where}.{side} must be a JSON list of column specs, got {raw!r}.")
            tensors = [spec for spec in specs if isinstance(spec, Mapping) and spec.get("type") == "tensor"]
            if tensors and side == "outputs":
                specs = _tensor_outputs(tensors, f"{where}.{side}")
            elif tensors:
                raise ValidationError(
                    f"{where}.{side} uses tensor specs ({tensors[0]!r}); loopml reads column signatures only. "
                    "Re-log the model with a pandas DataFrame input example, or pass a signature explicitly."
                )
            named = [{**spec, "name": spec.get("name") or f"{side[:-1]}_{i}"} for i, spec in enumerate(specs)]
            sides.append(_columns(named, f"{where}.{side}"))
        return cls(*sides)

    def check(self, frame: pd.DataFrame) -> None:
        """Refuse a frame that lacks a required input column or holds one of an incompatible type."""
        missing = [c.name for c in self.inputs if c.required and c.name not in frame.columns]
        wrong = [
            f"{c.name!r} is {frame[c.name].dtype} but the model expects {c.type}"
            for c in self.inputs
            if c.name in frame.columns and not _compatible(frame[c.name], c.type)
        ]
        problems = []
        if missing:
            problems.append(f"missing columns {missing}")
        if wrong:
            problems.append("incompatible types: " + "; ".join(wrong))
        if problems:
            raise ValidationError(
                f"The input does not match the model's signature: {', '.join(problems)}. "
                f"Send the columns {self.input_names} with the types in the signature."
            )


def infer_signature(inputs: pd.DataFrame, outputs: Any = None) -> Signature:
    """A signature from an example input frame and, optionally, the model's output on it."""
    if not isinstance(inputs, pd.DataFrame):
        raise ValidationError(
            f"infer_signature needs a pandas DataFrame of inputs, got {type(inputs).__name__}."
        )
    return Signature(
        _infer_columns(inputs), _infer_columns(_as_frame(outputs)) if outputs is not None else ()
    )


_TENSOR_TYPES = {
    "float64": "double",
    "float32": "float",
    "int64": "long",
    "int32": "integer",
    "bool": "boolean",
    "str": "string",
    "object": "string",
}


def _tensor_outputs(tensors: list[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    """MLflow tensor output specs as column specs: one column per tensor of shape (-1,) or (-1, 1)."""
    columns = []
    for i, spec in enumerate(tensors):
        tensor = spec.get("tensor-spec") or {}
        dtype, shape = str(tensor.get("dtype")), list(tensor.get("shape") or [])
        if dtype not in _TENSOR_TYPES or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise ValidationError(
                f"{where}: tensor spec {dict(spec)!r} is not a single column of a known type; loopml reads "
                f"one-column tensors of {sorted(_TENSOR_TYPES)}."
            )
        name = spec.get("name") or ("output" if len(tensors) == 1 else f"output_{i}")
        columns.append({"name": name, "type": _TENSOR_TYPES[dtype]})
    return columns


def _columns(items: Any, where: str) -> tuple[ColumnSpec, ...]:
    if not isinstance(items, list):
        raise ValidationError(f"{where} must be a list of columns, got {items!r}.")
    columns = []
    for i, item in enumerate(items):
        path = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ValidationError(f"{path} must be a mapping with 'name' and 'type', got {item!r}.")
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise ValidationError(f"{path}.name is missing or not a string: {item!r}.")
        if item.get("type") not in COLUMN_TYPES:
            raise ValidationError(
                f"{path}.type is {item.get('type')!r} (column {item['name']!r}); "
                f"use one of {', '.join(COLUMN_TYPES)}."
            )
        required = item.get("required", True)
        if not isinstance(required, bool):
            raise ValidationError(f"{path}.required must be true or false, got {required!r}.")
        columns.append(ColumnSpec(item["name"], item["type"], required))
    return tuple(columns)


def _as_frame(outputs: Any) -> pd.DataFrame:
    if isinstance(outputs, pd.DataFrame):
        return outputs
    if isinstance(outputs, pd.Series):
        return outputs.to_frame(outputs.name if outputs.name is not None else "prediction")
    array = np.asarray(outputs)
    if array.ndim == 1:
        return pd.DataFrame({"prediction": array})
    return pd.DataFrame(array, columns=[str(i) for i in range(array.shape[1])])


def _infer_columns(frame: pd.DataFrame) -> tuple[ColumnSpec, ...]:
    return tuple(ColumnSpec(str(name), _column_type(frame[name])) for name in frame.columns)


def _column_type(series: pd.Series) -> str:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer" if np.dtype(dtype).itemsize <= 4 else "long"
    if pd.api.types.is_float_dtype(dtype):
        return "float" if np.dtype(dtype).itemsize <= 4 else "double"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    values = series.dropna()
    if len(values) and all(isinstance(v, bytes | bytearray) for v in values):
        return "binary"
    return "string"


def _compatible(series: pd.Series, expected: str) -> bool:
    kind = series.dtype.kind if isinstance(series.dtype, np.dtype) else _extension_kind(series)
    if kind not in _ACCEPTS[expected]:
        return False
    if kind == "O" and expected in ("string", "binary"):
        wanted: type | tuple[type, ...] = str if expected == "string" else (bytes, bytearray)
        return _all_instances(series.dropna(), wanted)
    return True


def _extension_kind(series: pd.Series) -> str:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "b"
    if pd.api.types.is_integer_dtype(dtype):
        return "i"
    if pd.api.types.is_float_dtype(dtype):
        return "f"
    if pd.api.types.is_string_dtype(dtype):
        return "T"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "M"
    return "O"


def _all_instances(values: Iterable[Any], wanted: type | tuple[type, ...]) -> bool:
    return all(isinstance(value, wanted) for value in values)
