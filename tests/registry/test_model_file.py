"""The model file, signatures and model directories: what is checked, and what the errors say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from loopml.errors import ArtifactCorruptedError, ValidationError
from loopml.registry import flavors
from loopml.registry.model_dir import CHECKSUMS_FILE_NAME, load_model_dir, save_model_dir
from loopml.registry.model_file import MODEL_FILE_NAME, ModelFile
from loopml.registry.signature import ColumnSpec, Signature, infer_signature

LEGACY = {
    "format_version": 1,
    "model_name": "fraud",
    "flavors": {"sklearn": {"path": "model.joblib", "serialization": "joblib", "sklearn_version": "1.9.1"}},
    "signature": {
        "inputs": [{"name": "amount", "type": "double"}, {"name": "risk", "type": "double"}],
        "outputs": [],
    },
    "requirements": ["scikit-learn==1.9.1"],
    "python_version": "3.11.x",
    "features": ["users:risk"],
}


def invalid(data, match: str) -> str:
    with pytest.raises(ValidationError, match=match) as error:
        ModelFile.from_dict(data)
    return str(error.value)


def test_legacy_dict_from_migration_0004_is_accepted() -> None:
    model_file = ModelFile.from_dict(LEGACY)
    assert model_file.model_name == "fraud" and model_file.flavor == "sklearn"
    assert model_file.signature.inputs == (ColumnSpec("amount", "double"), ColumnSpec("risk", "double"))
    assert model_file.features == ("users:risk",) and model_file.requirements == ("scikit-learn==1.9.1",)
    assert model_file.baseline is None and model_file.input_example is None and model_file.run_id is None
    legacy_without_version = {
        **LEGACY,
        "flavors": {"sklearn": {"path": "model.joblib", "sklearn_version": None}},
    }
    assert ModelFile.from_dict(legacy_without_version).flavors["sklearn"]["sklearn_version"] is None


def test_full_model_file_round_trips_through_yaml_and_dict() -> None:
    model_file = ModelFile(
        model_name="fraud",
        flavors={"lightgbm": {"path": "model.txt", "lightgbm_version": "4.7.0"}, "h2o": {"anything": 1}},
        signature=Signature((ColumnSpec("amount", "double"), ColumnSpec("note", "string", required=False))),
        input_example=[{"amount": 1.5, "note": None}],
        requirements=("lightgbm==4.7.0",),
        python_version="3.11.7",
        features=("users:risk", "cards:spend_7d"),
        feature_service="fraud_v2",
        data_version={"dataset_id": "d1", "content_hash": "abc", "feature_view_versions": {"users": 3}},
        baseline={"metrics": {"roc_auc": 0.91}, "statistics": {"amount": {"mean": 20.0}}},
        promotion_policy={"min_roc_auc": 0.85},
        run_id="r1",
        created_at="2026-01-01T00:00:00+00:00",
        extensions={"x-team": "risk"},
    )
    assert ModelFile.from_yaml(model_file.to_yaml()) == model_file
    assert ModelFile.from_dict(json.loads(json.dumps(model_file.to_dict()))) == model_file
    assert model_file.to_dict()["x-team"] == "risk"


def test_missing_keys_and_wrong_types_name_the_key_path() -> None:
    message = invalid({"flavors": {"sklearn": {"serialization": "joblib"}}}, "model_name is missing")
    assert message.startswith(f"{MODEL_FILE_NAME}: model_name is missing")
    invalid(
        {**LEGACY, "flavors": {"sklearn": {"serialization": "joblib"}}}, "flavors.sklearn.path is missing"
    )
    invalid({**LEGACY, "flavors": {"sklearn": {"path": 3}}}, r"flavors.sklearn.path must be a string, got 3")
    invalid({**LEGACY, "features": "users:risk"}, "features must be a list")
    invalid({**LEGACY, "requirements": ["numpy", 2]}, r"requirements\[1\] must be a string, got 2")
    invalid({**LEGACY, "format_version": 7}, "format_version is 7 but this loopml reads up to 1; upgrade")
    invalid(
        {**LEGACY, "signature": {"inputs": [{"name": "amount", "type": "decimal"}]}},
        r"signature.inputs\[0\].type is 'decimal' \(column 'amount'\)",
    )
    with pytest.raises(ValidationError, match=r"custom\.yaml: must be a mapping"):
        ModelFile.from_dict(["not", "a", "mapping"], source="custom.yaml")
    with pytest.raises(ValidationError, match="not valid YAML"):
        ModelFile.from_yaml(b"model_name: [unclosed")


def test_unknown_keys_are_typos_unless_prefixed_with_x() -> None:
    message = invalid({**LEGACY, "promotion_polcy": {}, "baselin": {}}, "unknown top-level keys")
    assert "['baselin', 'promotion_polcy']" in message and "prefix custom keys with 'x-'" in message
    assert ModelFile.from_dict({**LEGACY, "x-owner": "risk-team"}).extensions == {"x-owner": "risk-team"}


def test_a_model_needs_a_flavor_loopml_can_load() -> None:
    invalid({**LEGACY, "flavors": {}}, "flavors is empty")
    message = invalid({**LEGACY, "flavors": {"h2o": {"path": "model.zip"}}}, "no flavor loopml can load")
    assert "['h2o']" in message and "sklearn" in message
    invalid({**LEGACY, "flavors": {"h2o": "model.zip"}}, "flavors.h2o must be a mapping of settings")
    kept = ModelFile.from_dict({**LEGACY, "flavors": {**LEGACY["flavors"], "h2o": {"path": "model.zip"}}})
    assert kept.flavors["h2o"] == {"path": "model.zip"}  # unknown flavors are kept, loopml loads sklearn


def test_all_problems_are_reported_at_once() -> None:
    message = invalid({"flavors": {"xgboost": {}}, "run_id": 5}, "model_name is missing")
    assert "run_id must be a string, got 5" in message


def test_infer_signature_and_mlflow_json_conversion() -> None:
    frame = pd.DataFrame(
        {
            "amount": [1.5, 2.0],
            "count": np.array([1, 2], dtype=np.int64),
            "small": np.array([1, 2], dtype=np.int32),
            "flag": [True, False],
            "channel": ["web", "pos"],
            "at": pd.to_datetime(["2026-01-01", "2026-01-02"]),
        }
    )
    signature = infer_signature(frame, np.array([0.1, 0.9]))
    assert [(c.name, c.type) for c in signature.inputs] == [
        ("amount", "double"),
        ("count", "long"),
        ("small", "integer"),
        ("flag", "boolean"),
        ("channel", "string"),
        ("at", "datetime"),
    ]
    assert signature.outputs == (ColumnSpec("prediction", "double"),)
    mlflow = signature.to_mlflow()
    assert json.loads(mlflow["inputs"])[0] == {"type": "double", "name": "amount", "required": True}
    assert Signature.from_mlflow(mlflow) == signature
    unnamed = Signature.from_mlflow(
        {"inputs": mlflow["inputs"], "outputs": '[{"type": "long", "required": true}]'}
    )
    assert unnamed.outputs == (ColumnSpec("output_0", "long"),)
    with pytest.raises(ValidationError, match="tensor specs"):
        Signature.from_mlflow({"inputs": '[{"type": "tensor", "tensor-spec": {"dtype": "float64"}}]'})
    predicted = Signature.from_mlflow(  # what MLflow infers from a numpy prediction
        {
            "inputs": mlflow["inputs"],
            "outputs": '[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]',
        }
    )
    assert predicted.outputs == (ColumnSpec("output", "long"),)
    with pytest.raises(ValidationError, match="not a single column"):
        Signature.from_mlflow(
            {
                "inputs": mlflow["inputs"],
                "outputs": '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]',
            }
        )


def test_signature_check_names_missing_columns_and_wrong_types() -> None:
    signature = Signature(
        (
            ColumnSpec("amount", "double"),
            ColumnSpec("count", "long"),
            ColumnSpec("channel", "string"),
            ColumnSpec("note", "string", required=False),
        )
    )
    signature.check(pd.DataFrame({"amount": [1], "count": [2], "channel": ["web"]}))  # int is a fine double
    with pytest.raises(ValidationError) as error:
        signature.check(pd.DataFrame({"amount": ["high"], "count": [1.5]}))
    message = str(error.value)
    assert "missing columns ['channel']" in message
    assert re.search(r"'amount' is (str|object) but the model expects double", message)
    assert "'count' is float64 but the model expects long" in message
    with pytest.raises(ValidationError, match="'channel' is object but the model expects string"):
        signature.check(pd.DataFrame({"amount": [1.0], "count": [1], "channel": [b"bytes"]}))


@pytest.fixture
def model_dir(tmp_path: Path) -> tuple[Path, pd.DataFrame, LogisticRegression]:
    frame = pd.DataFrame({"amount": [1.0, 5.0, 3.0, 8.0], "risk": [0.1, 0.9, 0.4, 0.7]})
    model = LogisticRegression().fit(frame, [0, 1, 0, 1])
    save_model_dir(
        model, tmp_path / "model", model_name="fraud", input_example=frame, features=("users:risk",)
    )
    return tmp_path / "model", frame, model


def test_model_dir_round_trip_with_checksums(model_dir) -> None:
    path, frame, model = model_dir
    assert sorted(p.name for p in path.iterdir()) == [CHECKSUMS_FILE_NAME, MODEL_FILE_NAME, "model.joblib"]
    lines = (path / CHECKSUMS_FILE_NAME).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [MODEL_FILE_NAME, "model.joblib"]
    model_file, files = load_model_dir(path)
    assert model_file.features == ("users:risk",) and model_file.input_example[0] == {
        "amount": 1.0,
        "risk": 0.1,
    }
    loaded = flavors.load_model(files, model_file)
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))


def test_tampered_model_dir_is_refused_naming_the_file(model_dir) -> None:
    path, _, _ = model_dir
    data = bytearray((path / "model.joblib").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.joblib").write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptedError, match=r"model.joblib does not match its checksum"):
        load_model_dir(path)


def test_edited_model_file_and_missing_checksums_are_refused(model_dir) -> None:
    path, _, _ = model_dir
    text = (path / MODEL_FILE_NAME).read_text()
    (path / MODEL_FILE_NAME).write_text(text.replace("users:risk", "users:other"))
    with pytest.raises(ArtifactCorruptedError, match=f"{MODEL_FILE_NAME} does not match its checksum"):
        load_model_dir(path)
    (path / CHECKSUMS_FILE_NAME).unlink()
    with pytest.raises(ArtifactCorruptedError, match=r"checksums\.sha256 is missing"):
        load_model_dir(path)


def test_model_dir_refuses_a_non_empty_destination(model_dir) -> None:
    path, _, model = model_dir
    with pytest.raises(ValidationError, match="is not empty"):
        save_model_dir(model, path, model_name="fraud")
