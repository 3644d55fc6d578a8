"""MLflow interoperability, checked against MLflow itself (run in its own virtual environment)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import textwrap
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from loopml.errors import ValidationError
from loopml.registry import flavors
from loopml.registry.mlflow_format import read_mlflow_model, write_mlflow_model
from loopml.registry.model_dir import build_model_file
from tests.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]
MLFLOW_PYTHON = REPO / ".bench" / "mlflow" / "bin" / "python"

PREAMBLE = """
import json, sys
import numpy as np, pandas as pd
import mlflow
frame = pd.read_parquet("frame.parquet")
label = pd.read_parquet("label.parquet")["label"]
# Inferring requirements starts a process per model; one model (the first) keeps MLflow's inference.
PINS = [f"{m}=={__import__(m).__version__}" for m in ("numpy", "pandas")]
"""


@pytest.fixture(scope="module")
def mlflow_python() -> Path:
    if not (MLFLOW_PYTHON.exists() and (REPO / ".bench" / "mlflow" / ".installed").exists()):
        unavailable(
            ".bench/mlflow (make .bench/mlflow/.installed)", "the MLflow virtual environment is not installed"
        )
    return MLFLOW_PYTHON


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def data(workdir: Path) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(11)
    n = 300
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "risk": rng.normal(size=n),
            "channel": rng.choice(["web", "pos", "app"], n),
        }
    )
    label = (
        (frame.risk + frame.amount / 40 + (frame.channel == "web") + rng.normal(0, 0.5, n)) > 1.5
    ).astype(int)
    frame.to_parquet(workdir / "frame.parquet")
    label.to_frame("label").to_parquet(workdir / "label.parquet")
    return frame, label


def run_mlflow(python: Path, workdir: Path, *scripts: str) -> dict:
    """Run script parts in MLflow's environment (in workdir) and return the JSON printed last."""
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(python), "-c", PREAMBLE + "".join(textwrap.dedent(script) for script in scripts)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"MLflow script failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


SAVE = {
    "sklearn-pipeline-cloudpickle": """
        from sklearn.compose import ColumnTransformer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler
        model = Pipeline([
            ("prep", ColumnTransformer([("num", StandardScaler(), ["amount", "risk"]),
                                        ("cat", OneHotEncoder(), ["channel"])])),
            ("clf", LogisticRegression()),
        ]).fit(frame, label)
        mlflow.sklearn.save_model(model, "model", input_example=frame.head(3), serialization_format="cloudpickle")
    """,
    "sklearn-pickle": """
        from sklearn.ensemble import RandomForestClassifier
        frame = frame.drop(columns="channel")
        model = RandomForestClassifier(n_estimators=10, random_state=0).fit(frame, label)
        mlflow.sklearn.save_model(
            model, "model", input_example=frame.head(3), serialization_format="pickle", pip_requirements=PINS
        )
    """,
    "sklearn-skops": """
        from sklearn.linear_model import LogisticRegression
        frame = frame.drop(columns="channel")
        model = LogisticRegression().fit(frame, label)
        mlflow.sklearn.save_model(model, "model", input_example=frame.head(3), pip_requirements=PINS)
    """,
    "lightgbm-classifier": """
        import lightgbm as lgb
        frame = frame.drop(columns="channel")
        model = lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(frame, label)
        mlflow.lightgbm.save_model(
            model, "model", input_example=frame.head(3), serialization_format="cloudpickle", pip_requirements=PINS
        )
    """,
    "lightgbm-booster": """
        import lightgbm as lgb
        frame = frame.drop(columns="channel")
        model = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(frame, label), num_boost_round=20)
        mlflow.lightgbm.save_model(model, "model", pip_requirements=PINS)
    """,
    "xgboost-classifier": """
        import xgboost as xgb
        frame = frame.drop(columns="channel")
        model = xgb.XGBClassifier(n_estimators=20).fit(frame, label)
        mlflow.xgboost.save_model(model, "model", input_example=frame.head(3), pip_requirements=PINS)
    """,
}

PREDICT = """
    loaded = mlflow.pyfunc.load_model("{kind}")
    out["{kind}"] = {{"pyfunc": np.asarray(loaded.predict(frame)).tolist()}}
    if hasattr(model, "predict_proba"):
        out["{kind}"]["proba"] = np.asarray(model.predict_proba(frame)).tolist()
    frame = pd.read_parquet("frame.parquet")
"""


LOADER_SOURCE = """
import json

class _Weights:
    def __init__(self, weights):
        self.weights = weights

    def predict(self, frame, params=None):
        return sum(frame[name] * weight for name, weight in self.weights.items())

def _load_pyfunc(path):
    with open(path) as handle:
        return _Weights(json.load(handle))
"""

SAVE_LOADER = """
    model = None
    mlflow.pyfunc.save_model("pyfunc-loader", loader_module="weights_loader", data_path="weights.json",
                             code_paths=["loader_src/weights_loader.py"])
"""


@pytest.fixture(scope="module")
def saved_by_mlflow(mlflow_python: Path, workdir: Path, data) -> dict:
    """Each SAVE kind (and a loader-module model) written by MLflow into workdir/<kind>, with MLflow's
    own predictions: one MLflow process for all, as starting one takes seconds."""
    (workdir / "loader_src").mkdir()
    (workdir / "loader_src" / "weights_loader.py").write_text(LOADER_SOURCE)
    (workdir / "weights.json").write_text('{"amount": 0.02, "risk": 1.5}')
    parts = ["out = {}\n", SAVE_LOADER, PREDICT.format(kind="pyfunc-loader")]
    for kind, script in SAVE.items():
        parts += [script.replace('"model"', f'"{kind}"'), PREDICT.format(kind=kind)]
    return run_mlflow(mlflow_python, workdir, *parts, "print(json.dumps(out))\n")


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SAVE))
def test_read_models_saved_by_mlflow(kind: str, saved_by_mlflow: dict, data, workdir: Path) -> None:
    frame, _ = data
    expected = saved_by_mlflow[kind]
    if kind == "sklearn-skops" and importlib.util.find_spec("skops") is None:  # MLflow 3's default format
        with pytest.raises(ValidationError, match=r"skops format .* install skops"):
            read_mlflow_model(workdir / kind)
        return
    model_file, files = read_mlflow_model(workdir / kind, model_name="fraud")

    frame = frame if kind == "sklearn-pipeline-cloudpickle" else frame.drop(columns="channel")
    loaded = flavors.load_model(files, model_file)
    np.testing.assert_array_equal(np.asarray(loaded.predict(frame)), np.asarray(expected["pyfunc"]))
    if "proba" in expected:
        np.testing.assert_allclose(
            loaded.predict_proba(frame), np.asarray(expected["proba"]), rtol=0, atol=1e-12
        )

    native = kind.split("-")[0]
    assert set(model_file.flavors) == {native}
    assert not any(name.endswith((".pkl", ".skops")) for name in files)
    assert model_file.model_name == "fraud"
    assert model_file.python_version and model_file.python_version.count(".") == 2
    assert not any(line.startswith("mlflow") for line in model_file.requirements)
    assert model_file.extensions["x-mlflow"]["model_uuid"]
    if kind != "lightgbm-booster":  # saved without an input example, hence without a signature
        assert model_file.signature.input_names == list(frame.columns)
        assert len(model_file.input_example) == 3 and set(model_file.input_example[0]) == set(frame.columns)


@pytest.mark.slow
def test_read_an_mlflow_loader_module_model(saved_by_mlflow: dict, data, workdir: Path) -> None:
    frame, _ = data
    model_file, files = read_mlflow_model(workdir / "pyfunc-loader")
    assert set(files) == {"code/weights_loader.py", "data/weights.json"}
    assert model_file.flavors["pyfunc"]["loader_module"] == "weights_loader"
    loaded = flavors.load_model(files, model_file)
    np.testing.assert_allclose(np.asarray(loaded.predict(frame)), saved_by_mlflow["pyfunc-loader"]["pyfunc"])


LOAD = """
    native = getattr(mlflow, "{flavor}").load_model("{kind}")
    pyfunc = mlflow.pyfunc.load_model("{kind}")
    used = frame[{columns}]
    result = {{"pyfunc": np.asarray(pyfunc.predict(used)).tolist(), "native_class": type(native).__name__}}
    if hasattr(native, "predict_proba"):
        result["proba"] = np.asarray(native.predict_proba(used)).tolist()
    else:
        result["native"] = np.asarray(native.predict(used)).tolist()
    result["signature"] = pyfunc.metadata.get_input_schema().input_names()
    out["{kind}"] = result
"""
WRITE_KINDS = ("sklearn-pipeline", "lightgbm-classifier", "lightgbm-booster", "xgboost-classifier")


def trained(kind: str, frame: pd.DataFrame, label: pd.Series):
    """(model, the frame it takes) for one WRITE_KINDS kind."""
    numeric = frame.drop(columns="channel")
    if kind == "sklearn-pipeline":
        prep = ColumnTransformer(
            [("num", StandardScaler(), ["amount", "risk"]), ("cat", OneHotEncoder(), ["channel"])]
        )
        return Pipeline([("prep", prep), ("clf", LogisticRegression())]).fit(frame, label), frame
    if kind == "lightgbm-classifier":
        return lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(numeric, label), numeric
    if kind == "lightgbm-booster":
        params = {"objective": "binary", "verbose": -1}
        return lgb.train(params, lgb.Dataset(numeric, label), num_boost_round=20), numeric
    return xgb.XGBClassifier(n_estimators=20).fit(numeric, label), numeric


@pytest.fixture(scope="module")
def written_for_mlflow(mlflow_python: Path, workdir: Path, data) -> dict:
    """Each WRITE_KINDS model exported to workdir/export-<kind>, then loaded by MLflow (one process)."""
    frame, label = data
    exports, parts = {}, ["out = {}\n"]
    for kind in WRITE_KINDS:
        model, used = trained(kind, frame, label)
        model_file, files = build_model_file(
            model, model_name="fraud", input_example=used.head(4), features=("users:risk",), run_id="run-1"
        )
        write_mlflow_model(model_file, files, workdir / f"export-{kind}")
        exports[kind] = (model_file, flavors.load_model(files, model_file), used)
        parts.append(
            LOAD.format(flavor=kind.split("-")[0], kind=f"export-{kind}", columns=list(used.columns))
        )
    results = run_mlflow(mlflow_python, workdir, *parts, "print(json.dumps(out))\n")
    return {kind: (*exports[kind], results[f"export-{kind}"]) for kind in WRITE_KINDS}


@pytest.mark.slow
@pytest.mark.parametrize("kind", WRITE_KINDS)
def test_written_models_load_in_mlflow(kind: str, written_for_mlflow: dict, workdir: Path) -> None:
    model_file, loaded, used, result = written_for_mlflow[kind]
    root = workdir / f"export-{kind}"
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["env"] == {
        "conda": "conda.yaml",
        "virtualenv": "python_env.yaml",
    }
    assert {"MLmodel", "requirements.txt", "python_env.yaml", "conda.yaml", "input_example.json"} <= {
        p.name for p in root.iterdir()
    }
    requirements = (root / "requirements.txt").read_text().splitlines()
    assert set(model_file.requirements) | {"mlflow"} <= set(requirements)

    assert result["signature"] == list(used.columns)
    np.testing.assert_array_equal(np.asarray(result["pyfunc"]), np.asarray(loaded.predict(used)))
    if kind == "lightgbm-booster":
        assert result["native_class"] == "Booster"
        np.testing.assert_array_equal(np.asarray(result["native"]), loaded.predict(used))
    else:
        assert result["native_class"] in ("Pipeline", "LGBMClassifier", "XGBClassifier")
        np.testing.assert_allclose(
            np.asarray(result["proba"]), loaded.predict_proba(used), rtol=0, atol=1e-12
        )

    # And back: reading the export gives the same model and keeps loopml's own keys.
    back, files = read_mlflow_model(root)
    assert back.model_name == "fraud" and back.features == ("users:risk",) and back.run_id == "run-1"
    assert back.signature == model_file.signature
    np.testing.assert_array_equal(flavors.load_model(files, back).predict(used), loaded.predict(used))


def test_missing_or_broken_mlmodel_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="MLmodel does not exist"):
        read_mlflow_model(tmp_path)
    (tmp_path / "MLmodel").write_text("flavors: [unclosed")
    with pytest.raises(ValidationError, match="MLmodel is not valid YAML"):
        read_mlflow_model(tmp_path)
    (tmp_path / "MLmodel").write_text("model_uuid: abc\n")
    with pytest.raises(ValidationError, match="flavors is missing or empty"):
        read_mlflow_model(tmp_path)
    (tmp_path / "MLmodel").write_text("flavors:\n  tensorflow: {saved_model_dir: tfmodel}\n")
    with pytest.raises(ValidationError, match=r"flavors \['tensorflow'\] cannot be converted"):
        read_mlflow_model(tmp_path)
    (tmp_path / "MLmodel").write_text("flavors:\n  sklearn: {serialization_format: pickle}\n")
    with pytest.raises(ValidationError, match=r"flavors\.sklearn\.pickled_model is missing"):
        read_mlflow_model(tmp_path)
    (tmp_path / "MLmodel").write_text(
        "flavors:\n  xgboost: {data: model.ubj, model_class: xgboost.core.Booster}\n"
    )
    with pytest.raises(ValidationError, match=r"flavors\.xgboost\.data names model\.ubj, which is missing"):
        read_mlflow_model(tmp_path)
    (tmp_path / "MLmodel").write_text(
        "flavors:\n  python_function: {python_model: python_model.pkl, cloudpickle_version: 3.1.2}\n"
    )
    with pytest.raises(ValidationError, match="cannot load without MLflow"):
        read_mlflow_model(tmp_path)


def test_writing_refuses_flavors_mlflow_export_does_not_cover(tmp_path: Path, data) -> None:
    frame, label = data
    numeric = frame.drop(columns="channel")
    model_file, files = build_model_file(
        RandomForestClassifier(n_estimators=3).fit(numeric, label), model_name="m"
    )
    write_mlflow_model(model_file, files, tmp_path / "one")
    with pytest.raises(ValidationError, match="is not empty"):
        write_mlflow_model(model_file, files, tmp_path / "one")
    onnx_only = type(model_file)(model_name="m", flavors={"onnx": {"path": "model.onnx"}})
    with pytest.raises(ValidationError, match="MLflow export supports sklearn, lightgbm, xgboost"):
        write_mlflow_model(onnx_only, {}, tmp_path / "two")
