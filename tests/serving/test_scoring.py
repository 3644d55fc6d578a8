"""Scorer: request columns checked against the signature and built into the model's input."""

from __future__ import annotations

import numpy as np
import pytest

from loopml.errors import ValidationError
from loopml.registry.signature import ColumnSpec, Signature
from loopml.serving.scoring import Scorer


class Echo:
    """A model that returns its first input column as the score."""

    def predict(self, frame):
        return np.asarray(frame.iloc[:, 0], dtype=float)


def scorer() -> Scorer:
    signature = Signature((ColumnSpec("n", "long"), ColumnSpec("x", "double"), ColumnSpec("s", "string")))
    return Scorer.build("echo/1", Echo(), signature, ["n", "x", "s"])


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("n", 1.5, "'n' must be an integer (long) but row 0 has 1.5"),
        ("n", 1e300, "'n' must be an integer (long) but row 0 has 1e+300"),
        ("n", 2**70, "'n' must be an integer within 64 bits"),
        ("x", 10**400, "'x' must be a finite number"),
        ("x", float("inf"), "'x' must be a finite number"),
        ("x", "3", "'x' must be a number (double) but row 0 has '3' (str)"),
        ("x", True, "'x' must be a number"),
        ("s", 3, "'s' must be a string (string) but row 0 has 3 (int)"),
        ("x", None, "'x' is null or NaN in row 0"),
    ],
)
def test_bad_values_name_the_column_the_row_and_the_problem(column, value, message) -> None:
    columns = {"n": [1], "x": [2.0], "s": ["a"], column: [value]}
    with pytest.raises(
        ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")
    ):
        scorer().frame(columns, 1)


def test_missing_unknown_and_ragged_columns_are_refused() -> None:
    with pytest.raises(ValidationError, match="Missing input 'x'"):
        scorer().frame({"n": [1], "s": ["a"]}, 1)
    with pytest.raises(ValidationError, match=r"Unknown input\(s\) \['zz'\]"):
        scorer().frame({"n": [1], "x": [1.0], "s": ["a"], "zz": [1]}, 1)
    with pytest.raises(ValidationError, match="has 2 values for 1 rows"):
        scorer().frame({"n": [1, 2], "x": [1.0], "s": ["a"]}, 1)


def test_nullable_inputs_reach_the_model_as_nan_in_input_order() -> None:
    frame = scorer().frame({"s": ["a", "b"], "x": [None, 2.5], "n": [1, 2]}, 2, nullable=frozenset({"x"}))
    assert list(frame.columns) == ["n", "x", "s"]
    assert np.isnan(frame.x[0]) and frame.x[1] == 2.5 and frame.n.dtype == np.int64
