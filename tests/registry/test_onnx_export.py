"""ONNX export: converted tree models score the sample like the original, or the export is refused."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from loopml.errors import ValidationError
from loopml.registry import flavors
from loopml.registry.model_dir import build_model_file
from loopml.registry.model_file import ModelFile
from loopml.registry.onnx_export import export_onnx, onnx_flavor
from loopml.training.evaluation import predict_scores


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(3)
    n = 600
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "risk": rng.normal(size=n),
            "hour": rng.integers(0, 24, n).astype(float),
        }
    )
    label = ((frame.risk + frame.amount / 40 + rng.normal(0, 0.5, n)) > 1).astype(int)
    return frame, label


@pytest.mark.parametrize(
    "make",
    [
        lambda: GradientBoostingClassifier(n_estimators=30, random_state=0),
        lambda: RandomForestClassifier(n_estimators=20, random_state=0),
        lambda: RandomForestRegressor(n_estimators=10, random_state=0),
        lambda: lgb.LGBMClassifier(n_estimators=40, verbose=-1),
        lambda: lgb.LGBMRegressor(n_estimators=40, verbose=-1),
        lambda: xgb.XGBClassifier(n_estimators=40),
        lambda: Pipeline(
            [("impute", SimpleImputer()), ("scale", StandardScaler()), ("gb", GradientBoostingClassifier())]
        ),
        lambda: Pipeline(
            [("scale", StandardScaler()), ("gbm", lgb.LGBMClassifier(n_estimators=20, verbose=-1))]
        ),
    ],
    ids=["gb", "rf", "rf-regressor", "lgbm", "lgbm-regressor", "xgb", "pipeline-gb", "pipeline-lgbm"],
)
def test_export_matches_the_original_within_tolerance(make, data) -> None:
    frame, label = data
    model = make().fit(frame, label)
    onnx_bytes, report = export_onnx(model, frame)
    assert report["max_abs_diff"] <= 1e-4 and report["n_rows"] == len(frame)
    assert report["tolerance"] == 1e-4 and report["opset"] >= 13
    assert report["output"] == ("probabilities" if hasattr(model, "predict_proba") else "predictions")

    # As a flavor beside the native one, loaded through the same path as every model.
    model_file, files = build_model_file(model, model_name="m", input_example=frame.head(3))
    extra_files, onnx_config = onnx_flavor(onnx_bytes, report)
    with_onnx = ModelFile.from_dict(
        {**model_file.to_dict(), "flavors": {**model_file.flavors, "onnx": onnx_config}}
    )
    loaded = flavors.load_model({**files, **extra_files}, with_onnx, prefer="onnx")
    shuffled = frame[["hour", "risk", "amount"]]
    np.testing.assert_allclose(predict_scores(loaded, shuffled), predict_scores(model, frame), atol=1e-4)


def test_column_transformer_by_name_gets_one_input_per_column(data) -> None:
    frame, label = data
    model = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [("s", StandardScaler(), ["amount", "risk"]), ("i", SimpleImputer(), ["hour"])]
                ),
            ),
            ("rf", RandomForestRegressor(n_estimators=10, random_state=0)),
        ]
    ).fit(frame, label)
    onnx_bytes, report = export_onnx(model, frame)
    files, config = onnx_flavor(onnx_bytes, report)
    assert config["inputs"] == ["amount", "risk", "hour"]
    loaded = flavors.FLAVORS["onnx"].load(files, config)
    np.testing.assert_allclose(loaded.predict(frame.iloc[::-1]), model.predict(frame.iloc[::-1]), atol=1e-5)


def test_bare_boosters_export(data) -> None:
    frame, label = data
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(frame, label), num_boost_round=20)
    assert export_onnx(booster, frame)[1]["max_abs_diff"] <= 1e-4
    xbooster = xgb.train(
        {"objective": "binary:logistic"}, xgb.DMatrix(frame, label=label), num_boost_round=20
    )
    assert export_onnx(xbooster, frame)[1]["max_abs_diff"] <= 1e-4


def test_a_mismatch_is_reported_with_the_difference(data) -> None:
    frame, label = data
    model = GradientBoostingClassifier(n_estimators=30, random_state=0).fit(frame, label)
    with pytest.raises(ValidationError, match=r"differs from the original by up to \S+ on 600 sample rows"):
        export_onnx(model, frame, tolerance=1e-12)
    # Amounts beyond float32's precision: LightGBM splits them in float64, the ONNX graph rounds them first.
    tampered = frame.assign(amount=frame.amount + 1e9)
    booster = lgb.LGBMClassifier(n_estimators=30, verbose=-1).fit(tampered, label)
    with pytest.raises(ValidationError, match=r"tolerance 0.0001\)"):
        export_onnx(booster, tampered)


def test_unsupported_models_and_inputs_are_refused(data) -> None:
    frame, label = data
    with pytest.raises(ValidationError, match=r"not builtins\.dict"):
        export_onnx({"weights": 1}, frame)
    with pytest.raises(ValidationError, match=r"numeric inputs only; the columns \['channel'\]"):
        export_onnx(RandomForestClassifier().fit(frame, label), frame.assign(channel="web"))
    with pytest.raises(ValidationError, match="non-empty pandas DataFrame"):
        export_onnx(RandomForestClassifier().fit(frame, label), frame.head(0))
    with pytest.raises(ValidationError, match="cannot convert MeanModel"):
        export_onnx(MeanModel().fit(frame, label), frame)


class MeanModel(RegressorMixin, BaseEstimator):
    """An estimator no converter knows."""

    def fit(self, frame, label):
        self.mean_ = float(np.mean(label))
        return self

    def predict(self, frame):
        return np.full(len(frame), self.mean_)
