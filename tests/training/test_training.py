import pytest

from loopml.errors import ValidationError
from loopml.project import Project
from loopml.training.pipeline import TrainingSpec
from loopml.training.tracking import Tracker
from tests.helpers import SPEC, build_world


def test_training_records_run_params_metrics_code_and_data(project: Project) -> None:
    trained = project.train(SPEC, build_world(project))
    run = Tracker(project.metadata).get_run(trained.run_id)
    assert run.status == "finished"
    assert run.params == {"estimator": SPEC.estimator, "max_iter": "20", "categorical": "['channel']"}
    assert run.metrics["validation_roc_auc"] == pytest.approx(trained.metrics["roc_auc"])
    assert trained.metrics["roc_auc"] > 0.6
    assert run.dataset_id == trained.snapshot.id
    assert trained.snapshot.columns.keys() >= {"risk", "amount", "is_bad"}
    assert "loopml" in run.code_version and "git_commit" in run.code_version


def test_validation_rows_are_the_newest(project: Project) -> None:
    events = build_world(project)
    trained = project.train(SPEC, events)
    n_validation = trained.metrics["n_rows"]
    assert n_validation == len(events) - int(len(events) * 0.8)


def test_failed_training_marks_the_run_failed(project: Project) -> None:
    events = build_world(project)
    spec = TrainingSpec(
        "bad",
        ("users:risk",),
        ("amount", "channel"),
        "is_bad",
        "loopml.demo.model:make_estimator",
        params={"max_iter": -1, "categorical": ["channel"]},
    )
    with pytest.raises(ValueError):
        project.train(spec, events)
    from sqlalchemy import select

    from loopml.training.tables import runs

    with project.metadata.begin() as conn:
        status, error = conn.execute(select(runs.c.status, runs.c.error)).one()
    assert status == "failed" and "max_iter" in error


def test_bad_training_input_is_explained(project: Project) -> None:
    events = build_world(project)
    with pytest.raises(ValidationError, match="lacks column"):
        project.train(SPEC, events.drop(columns=["channel"]))
    with pytest.raises(ValidationError, match="must hold 0/1"):
        project.train(SPEC, events.assign(is_bad=events.is_bad * 2.5))
    with pytest.raises(ValidationError, match="missing values"):
        project.train(SPEC, events.assign(is_bad=events.is_bad.where(events.index > 0)))
    with pytest.raises(ValidationError, match="module:function"):
        TrainingSpec("m", (), (), "y", "not_a_factory")


def test_recency_weights_halve_every_half_life_and_reach_the_estimator(project: Project) -> None:
    from dataclasses import replace

    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from loopml.training.pipeline import _recency_weights

    spec = replace(SPEC, recency_half_life_days=2.0)
    rows = pd.DataFrame(
        {"event_timestamp": pd.to_datetime(["2026-01-01", "2026-01-03", "2026-01-05"], utc=True)}
    )
    assert _recency_weights(LogisticRegression(), spec, rows)["sample_weight"].tolist() == [0.25, 0.5, 1.0]
    assert _recency_weights(LogisticRegression(), SPEC, rows) == {}
    trained = project.train(spec, build_world(project))
    assert trained.metrics["roc_auc"] > 0.6
    with pytest.raises(ValidationError, match="recency_half_life_days must be positive"):
        replace(SPEC, recency_half_life_days=0)


def test_a_training_set_records_the_view_versions_it_was_built_from(project: Project) -> None:
    from dataclasses import replace
    from datetime import timedelta

    from loopml.data.snapshots import get_snapshot
    from tests.helpers import user_view

    events = build_world(project)
    first = project.train(SPEC, events)
    assert get_snapshot(project.metadata, first.snapshot.id).spec["feature_view_versions"] == {"users": 1}
    project.apply([replace(user_view(), ttl=timedelta(days=3))])
    second = project.train(SPEC, events)
    assert get_snapshot(project.metadata, second.snapshot.id).spec["feature_view_versions"] == {"users": 2}


def test_a_training_set_rebuilds_to_the_same_hash(project: Project) -> None:
    from loopml.data.snapshots import content_hash, get_snapshot

    events = build_world(project)
    trained = project.train(SPEC, events)
    snapshot = get_snapshot(project.metadata, trained.snapshot.id)
    rebuilt = project.get_historical_features(events, list(snapshot.spec["features"]))
    assert content_hash(rebuilt) == snapshot.content_hash
    assert content_hash(rebuilt.assign(risk=rebuilt.risk + 1e-9)) != snapshot.content_hash
