"""Flavors: every kind of model round-trips through its files and predicts exactly as before."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import sklearn
import xgboost as xgb
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from loopml.errors import ValidationError
from loopml.registry import flavors
from loopml.registry.flavors.pyfunc import PythonModel
from loopml.registry.model_dir import build_model_file
from loopml.registry.model_file import ModelFile
from loopml.training.evaluation import predict_scores


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(7)
    n = 400
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "risk": rng.normal(size=n),
            "hour": rng.integers(0, 24, n).astype(float),
        }
    )
    label = ((frame.risk + frame.amount / 40 + rng.normal(0, 0.5, n)) > 1).astype(int)
    return frame, label


def round_trip(model, example: pd.DataFrame, **options):
    """Save the model, pass its model file through YAML, and load it back."""
    model_file, files = build_model_file(model, model_name="m", input_example=example, **options)
    reread = ModelFile.from_yaml(model_file.to_yaml())
    assert reread == model_file
    return reread, files, flavors.load_model(files, reread)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomForestClassifier(n_estimators=15, random_state=0),
        lambda: GradientBoostingRegressor(n_estimators=20, random_state=0),
        lambda: lgb.LGBMClassifier(n_estimators=30, verbose=-1),
        lambda: lgb.LGBMRegressor(n_estimators=30, verbose=-1),
        lambda: xgb.XGBClassifier(n_estimators=30),
        lambda: xgb.XGBRegressor(n_estimators=30),
    ],
    ids=["rf", "gbr", "lgbm-classifier", "lgbm-regressor", "xgb-classifier", "xgb-regressor"],
)
def test_each_flavor_round_trips_with_equal_predictions(make, data) -> None:
    frame, label = data
    model = make().fit(frame, label)
    model_file, _, loaded = round_trip(model, frame.head(5))
    assert model_file.signature.input_names == ["amount", "risk", "hour"]
    shuffled = frame[["hour", "amount", "risk"]].assign(
        extra=1.0
    )  # order comes from the model, extras ignored
    np.testing.assert_array_equal(loaded.predict(shuffled), model.predict(frame))
    if hasattr(model, "predict_proba"):
        np.testing.assert_array_equal(loaded.predict_proba(shuffled), model.predict_proba(frame))
        assert loaded.predict_proba(shuffled).shape == (len(frame), 2)
    np.testing.assert_array_equal(predict_scores(loaded, frame), predict_scores(model, frame))


def test_boosters_are_stored_in_native_formats_not_pickles(data) -> None:
    frame, label = data
    _, lgb_files, _ = round_trip(lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(frame, label), frame)
    assert list(lgb_files) == ["model.txt"] and lgb_files["model.txt"].startswith(b"tree\n")
    _, xgb_files, _ = round_trip(xgb.XGBClassifier(n_estimators=5).fit(frame, label), frame)
    assert list(xgb_files) == ["model.ubj"] and not xgb_files["model.ubj"].startswith(b"\x80")  # not a pickle


def test_bare_boosters_keep_their_own_semantics(data) -> None:
    frame, label = data
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(frame, label), num_boost_round=20)
    model_file, _, loaded = round_trip(booster, frame)
    assert model_file.flavors["lightgbm"]["model_class"] == "Booster"
    np.testing.assert_array_equal(loaded.predict(frame), booster.predict(frame))
    np.testing.assert_array_equal(loaded.predict_proba(frame)[:, 1], booster.predict(frame))

    dmatrix = xgb.DMatrix(frame, label=label)
    xbooster = xgb.train({"objective": "multi:softprob", "num_class": 3}, dmatrix, num_boost_round=5)
    _, _, xloaded = round_trip(xbooster, frame)
    assert xloaded.predict_proba(frame).shape == (len(frame), 3)
    np.testing.assert_array_equal(xloaded.predict_proba(frame), xbooster.predict(xgb.DMatrix(frame)))


def test_lightgbm_string_classes_and_multiclass(data) -> None:
    frame, _ = data
    label = np.where(frame.risk > 0.5, "fraud", np.where(frame.risk < -0.5, "ok", "review"))
    model = lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(frame, label)
    _, _, loaded = round_trip(model, frame)
    assert list(loaded.classes_) == ["fraud", "ok", "review"]
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    np.testing.assert_allclose(loaded.predict_proba(frame), model.predict_proba(frame), rtol=0, atol=0)


def test_pipeline_with_column_transformer_round_trips(data) -> None:
    frame, label = data
    frame = frame.assign(channel=np.where(frame.hour > 12, "web", "pos"))
    preprocess = ColumnTransformer(
        [
            ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), ["amount", "risk"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["channel"]),
        ]
    )
    model = Pipeline([("prep", preprocess), ("clf", LogisticRegression())]).fit(frame, label)
    model_file, files, loaded = round_trip(model, frame.head(3))
    assert set(model_file.flavors) == {"sklearn"} and list(files) == ["model.joblib"]
    assert model_file.signature.inputs[-1].type == "string"
    assert "scikit-learn==" + sklearn.__version__ in model_file.requirements
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))
    assert loaded.named_steps["clf"].coef_.shape == (1, 4)  # the estimator's own attributes stay reachable


def test_pipeline_wrapping_lightgbm_records_its_version(data) -> None:
    frame, label = data
    model = Pipeline([("scale", StandardScaler()), ("gbm", lgb.LGBMClassifier(n_estimators=5, verbose=-1))])
    model_file, _, loaded = round_trip(model.fit(frame, label), frame)
    assert model_file.flavors["sklearn"]["library_versions"]["lightgbm"] == lgb.__version__
    assert f"lightgbm=={lgb.__version__}" in model_file.requirements
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))


def test_sklearn_version_mismatch_is_refused_with_remedies(data, caplog) -> None:
    frame, label = data
    model_file, files, _ = round_trip(LogisticRegression().fit(frame, label), frame)
    flavors_config = {"sklearn": {**model_file.flavors["sklearn"], "sklearn_version": "1.2.0"}}
    old = ModelFile.from_dict({**model_file.to_dict(), "flavors": flavors_config})
    with pytest.raises(ValidationError) as error:
        flavors.load_model(files, old)
    message = str(error.value)
    assert "scikit-learn 1.2.0" in message and f"scikit-learn {sklearn.__version__} is installed" in message
    assert "scikit-learn==1.2.0" in message and "re-register" in message and "ONNX" in message
    with caplog.at_level(logging.WARNING):
        loaded = flavors.load_model(files, old, allow_version_mismatch=True)
    assert "1.2.0" in caplog.text
    np.testing.assert_array_equal(
        loaded.predict(frame), LogisticRegression().fit(frame, label).predict(frame)
    )


def test_legacy_model_file_loads_its_joblib_estimator(data) -> None:
    frame, label = data
    model = LogisticRegression().fit(frame, label)
    files, _ = flavors.FLAVORS["sklearn"].save(model)
    legacy = {
        "format_version": 1,
        "model_name": "toy",
        "flavors": {
            "sklearn": {
                "path": "model.joblib",
                "serialization": "joblib",
                "sklearn_version": sklearn.__version__,
            }
        },
        "signature": {"inputs": [{"name": c, "type": "double"} for c in frame.columns], "outputs": []},
        "requirements": [f"scikit-learn=={sklearn.__version__}"],
        "python_version": "3.11.7",
        "features": ["users:risk"],
    }
    loaded = flavors.load_model(files, ModelFile.from_dict(legacy))
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))


def test_missing_file_and_missing_flavor_are_clear(data) -> None:
    frame, label = data
    model_file, files, _ = round_trip(lgb.LGBMRegressor(n_estimators=3, verbose=-1).fit(frame, label), frame)
    with pytest.raises(ValidationError, match=r"needs the file 'model\.txt'"):
        flavors.load_model({}, model_file)
    with pytest.raises(ValidationError, match="has no 'onnx' flavor"):
        flavors.load_model(files, model_file, prefer="onnx")


def test_unsupported_models_are_named() -> None:
    with pytest.raises(ValidationError, match=r"cannot store a builtins\.dict"):
        flavors.flavor_for({"weights": [1, 2]})


PYFUNC_SOURCE = '''
import json

import numpy as np

from loopml.registry.flavors.pyfunc import PythonModel

VERSION = "{version}"


class RulesModel(PythonModel):
    """Scores a transaction with weights read from an artifact."""

    def load_context(self, artifacts):
        self.weights = json.loads(artifacts["weights"].read_text())
        self.blocklist = set((artifacts["lists"] / "blocked.txt").read_text().split())

    def predict(self, frame):
        score = sum(frame[name] * weight for name, weight in self.weights.items())
        return np.where(frame["merchant"].isin(self.blocklist), 1.0, (score > 1).astype(float))

    def predict_proba(self, frame):
        p = 1 / (1 + np.exp(-sum(frame[n] * w for n, w in self.weights.items())))
        return np.column_stack([1 - p, p])
'''


def test_python_model_loads_from_saved_code_and_artifacts(tmp_path: Path, monkeypatch) -> None:
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    (source_dir / "fraud_rules.py").write_text(textwrap.dedent(PYFUNC_SOURCE.format(version="saved")))
    weights = tmp_path / "weights.json"
    weights.write_text('{"risk": 1.5, "amount": 0.01}')
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "blocked.txt").write_text("m-13\nm-66\n")
    monkeypatch.syspath_prepend(str(source_dir))
    import fraud_rules

    model = fraud_rules.RulesModel()
    model.load_context({"weights": weights, "lists": lists})
    frame = pd.DataFrame(
        {"risk": [0.1, 2.0, -1.0], "amount": [10.0, 5.0, 300.0], "merchant": ["m-1", "m-2", "m-66"]}
    )
    expected = model.predict(frame)

    model_file, files = build_model_file(
        model, model_name="rules", artifacts={"weights": weights, "lists": lists}
    )
    assert set(files) == {
        "code/fraud_rules.py",
        "artifacts/weights/weights.json",
        "artifacts/lists/blocked.txt",
    }
    assert model_file.flavors["pyfunc"]["python_model"] == "fraud_rules:RulesModel"

    # The source changes after saving and the module stays imported: loading uses the saved copy and
    # leaves the imported module alone.
    (source_dir / "fraud_rules.py").write_text(textwrap.dedent(PYFUNC_SOURCE.format(version="edited")))
    loaded = flavors.load_model(files, ModelFile.from_yaml(model_file.to_yaml()))
    assert sys.modules["fraud_rules"] is fraud_rules
    assert type(loaded) is not fraud_rules.RulesModel  # a class of its own, from the saved code
    assert loaded.predict.__globals__["VERSION"] == "saved"
    np.testing.assert_array_equal(loaded.predict(frame), expected)
    np.testing.assert_allclose(predict_scores(loaded, frame), model.predict_proba(frame)[:, 1])


def test_python_model_defined_in_main_is_refused() -> None:
    class Local(PythonModel):
        def predict(self, frame):
            return frame

    Local.__module__ = "__main__"
    with pytest.raises(ValidationError, match="move it to a module file"):
        flavors.save_model(Local())


def test_mlflow_style_loader_module_model_loads_without_mlflow(tmp_path: Path) -> None:
    files = {
        "code/linear_loader.py": textwrap.dedent(
            """
            import json

            class _Linear:
                def __init__(self, weights):
                    self.weights = weights

                def predict(self, frame, params=None):
                    return sum(frame[name] * w for name, w in self.weights.items())

            def _load_pyfunc(path):
                with open(path) as handle:
                    return _Linear(json.load(handle))
            """
        ).encode(),
        "data/weights.json": b'{"a": 2.0, "b": -1.0}',
    }
    model_file = ModelFile.from_dict(
        {
            "model_name": "linear",
            "flavors": {
                "pyfunc": {"loader_module": "linear_loader", "data": "data/weights.json", "code": "code"}
            },
        }
    )
    loaded = flavors.load_model(files, model_file)
    np.testing.assert_array_equal(
        loaded.predict(pd.DataFrame({"a": [1.0, 3.0], "b": [2.0, 1.0]})), [0.0, 5.0]
    )
    assert not hasattr(loaded, "predict_proba")
    assert "linear_loader" not in sys.modules
