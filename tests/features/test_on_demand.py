"""On-demand views: one function, run offline for training sets and online for serving."""

import pandas as pd
import pytest

from loopml.errors import ValidationError
from loopml.features import Field, on_demand_feature_view
from loopml.features.on_demand import OnDemandFeatureView, load_function
from loopml.features.online import NULL, PRESENT
from loopml.project import Project
from tests.features.conftest import ts


@on_demand_feature_view(
    sources=["user_scores:score"], request=[Field("amount")], schema=[Field("score_per_amount")]
)
def score_ratio(inputs):
    """Score divided by the request's amount."""
    return {
        "score_per_amount": [
            None if s is None or a is None else s / a
            for s, a in zip(inputs["score"], inputs["amount"], strict=True)
        ]
    }


@on_demand_feature_view(sources=["user_scores:score"], schema=[Field("score_doubled")], mode="pandas")
def doubled(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"score_doubled": frame["score"] * 2})


def test_training_sets_compute_on_demand_features_from_request_columns(project: Project, user_view) -> None:
    project.apply([score_ratio, doubled])
    entity = pd.DataFrame(
        {
            "user_id": [1, 1, 3],
            "event_timestamp": [ts("2026-01-02 12:00"), ts("2026-01-01 12:00"), ts("2026-01-02 12:00")],
            "amount": [5.0, 4.0, 2.0],
        }
    )
    frame = project.get_historical_features(entity, ["score_ratio:score_per_amount", "doubled:score_doubled"])
    assert "score" not in frame.columns  # read only as an input
    assert frame.score_per_amount.tolist()[:2] == [0.5, 0.25]  # 2.5 / 5, 1.0 / 4
    assert pd.isna(frame.score_per_amount.iloc[2])  # unknown user: the function saw None
    assert frame.score_doubled.tolist()[:2] == [5.0, 2.0]
    both = project.get_historical_features(
        entity, ["user_scores:score", "score_ratio:score_per_amount"], full_feature_names=True
    )
    assert list(both.columns[-2:]) == ["user_scores__score", "score_ratio__score_per_amount"]


def test_serving_runs_the_same_function(project: Project, user_view, clock) -> None:
    project.apply([score_ratio])
    project.materialize(end=ts("2026-01-02 12:00"))
    clock.set(ts("2026-01-02 12:00"))
    online = project.get_online_features(
        {"user_id": [1, 3]}, ["score_ratio:score_per_amount"], request_data={"amount": [5.0, 1.0]}
    )
    assert online.values == {"score_per_amount": [0.5, None]}
    assert online.statuses["score_per_amount"] == [PRESENT, NULL]
    with pytest.raises(ValidationError, match=r"needs request field\(s\) \['amount'\]"):
        project.get_online_features({"user_id": [1]}, ["score_ratio:score_per_amount"])


def test_the_feature_server_answers_an_on_demand_feature_alone(project: Project, user_view, clock) -> None:
    from fastapi.testclient import TestClient

    from loopml.serving.app import create_app

    project.apply([score_ratio])
    project.materialize(end=ts("2026-01-02 12:00"))
    clock.set(ts("2026-01-02 12:00"))
    body = {
        "entities": {"user_id": [1]},
        "features": ["score_ratio:score_per_amount"],  # its source, user_scores:score, is read but not asked
        "request_data": {"amount": [5.0]},
    }
    with TestClient(create_app(project)) as client:
        answer = client.post("/v1/features/online", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["features"] == {
            "score_per_amount": {"values": [0.5], "statuses": [PRESENT], "event_timestamps": [None]}
        }
        assert 'loopml_feature_age_seconds_count{view="user_scores"} 1.0' in client.get("/metrics").text


def test_definitions_and_code_changes_are_checked(project: Project, user_view) -> None:
    with pytest.raises(ValidationError, match="reads view 'ghost'"):
        project.apply([OnDemandFeatureView("bad", ("ghost:x",), (Field("y"),), score_ratio.function)])
    with pytest.raises(ValidationError, match="cannot be imported again"):
        project.apply([OnDemandFeatureView("inline", ("user_scores:score",), (Field("y"),), lambda x: x)])
    reference = score_ratio.spec()["function"]
    assert load_function(reference, "score_ratio", None) is score_ratio.function
    with pytest.raises(ValidationError, match="changed since it was applied"):
        load_function({**reference, "code_sha256": "0" * 64}, "score_ratio", None)
    broken = OnDemandFeatureView("b", ("user_scores:score",), (Field("y"),), lambda inputs: {"z": [1]})
    with pytest.raises(ValidationError, match=r"must return the columns \['y'\]"):
        broken.transform({"score": [1.0]}, 1)
