"""`apply` with prune: definitions gone from the project's files are deleted, their versions kept."""

import re
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from loopml.cli.main import app
from loopml.errors import NotFoundError, ValidationError
from loopml.features import FeatureService, FeatureView, Field, ParquetSource, on_demand_feature_view
from loopml.features.registry import (
    apply,
    definition_versions,
    get_feature_service,
    get_feature_view,
    get_view,
    list_definitions,
    list_feature_views,
    plan,
)
from loopml.project import Project
from loopml.storage.metadata import MetadataStore
from tests.features.conftest import USER, ts
from tests.helpers import build_world, train_and_deploy


def view(name: str, ttl_days: int = 1) -> FeatureView:
    return FeatureView(
        name, [USER], ParquetSource(f"data/{name}/*.parquet"), [Field("x")], ttl=timedelta(days=ttl_days)
    )


A, B = view("a"), view("b")
SERVICE = FeatureService("svc", ["a:x"])


@on_demand_feature_view(sources=["b:x"], schema=[Field("x_doubled")])
def doubled(inputs):
    return {"x_doubled": [None if x is None else 2 * x for x in inputs["x"]]}


def actions(changes) -> list[tuple[str, str, str, int]]:
    return [(c.action, c.kind, c.name, c.version) for c in changes]


def test_prune_plans_deletes_and_apply_marks_them_deleted(metadata: MetadataStore, clock) -> None:
    apply(metadata, [USER, A, B, SERVICE])
    assert "delete" not in [c.action for c in plan(metadata, [USER, A])]  # without prune, nothing goes
    assert actions(plan(metadata, [USER, A], prune=True)) == [
        ("unchanged", "entity", "user", 1),
        ("unchanged", "feature_view", "a", 1),
        ("delete", "feature_service", "svc", 1),
        ("delete", "feature_view", "b", 1),
    ]
    counter = metadata.change_counter()
    clock.advance(timedelta(hours=1))
    assert [c.action for c in apply(metadata, [USER, A], prune=True)] == [
        "unchanged",
        "unchanged",
        "delete",
        "delete",
    ]
    assert metadata.change_counter() == counter + 1
    assert [(d.kind, d.name) for d in list_definitions(metadata)] == [
        ("entity", "user"),
        ("feature_view", "a"),
    ]
    assert [v.name for v in list_feature_views(metadata)] == ["a"]
    with pytest.raises(NotFoundError, match=r"feature view 'b' was deleted .* at 2026-01-01 01:00:00 UTC"):
        get_feature_view(metadata, "b")
    with pytest.raises(NotFoundError, match="feature service 'svc' was deleted"):
        get_feature_service(metadata, "svc")
    with pytest.raises(NotFoundError, match="was deleted"):
        get_view(metadata, "b")
    (kept,) = definition_versions(metadata, "feature_view", "b")  # training sets still read it
    assert (kept.version, kept.deleted_at, kept.spec["name"]) == (1, clock.now(), "b")
    deleted = metadata.events(kind="feature_view.deleted")
    assert [(e.subject, e.data) for e in deleted] == [("feature_view:b", {"version": 1})]
    assert actions(plan(metadata, [USER, A], prune=True)) == [
        ("unchanged", "entity", "user", 1),
        ("unchanged", "feature_view", "a", 1),
    ]


def test_recreating_a_deleted_definition_makes_a_new_version(metadata: MetadataStore) -> None:
    apply(metadata, [USER, A, B])
    apply(metadata, [USER, A], prune=True)
    assert actions(apply(metadata, [B])) == [("create", "feature_view", "b", 2)]  # same spec, new version
    assert get_feature_view(metadata, "b") == B
    assert [v.deleted_at is None for v in definition_versions(metadata, "feature_view", "b")] == [False, True]
    assert [e.kind for e in metadata.events(subject_prefix="feature_view:b")] == [
        "feature_view.created",
        "feature_view.deleted",
        "feature_view.created",
    ]


def test_deleting_a_view_that_a_kept_service_or_on_demand_view_reads_is_refused(
    metadata: MetadataStore,
) -> None:
    apply(metadata, [USER, A, B, SERVICE, doubled])
    with pytest.raises(ValidationError, match=r"Cannot delete view 'a': FeatureService 'svc' reads a:x"):
        plan(metadata, [USER, B, SERVICE, doubled], prune=True)
    with pytest.raises(
        ValidationError, match=r"Cannot delete view 'b': OnDemandFeatureView 'doubled' reads b:x"
    ):
        apply(metadata, [USER, A, SERVICE, doubled], prune=True)
    assert {v.name for v in list_feature_views(metadata)} == {"a", "b"}  # nothing changed
    assert [c.action for c in apply(metadata, [USER, A, B], prune=True)] == [
        "unchanged",
        "unchanged",
        "unchanged",
        "delete",  # the service and the on-demand view go with the views they read: allowed
        "delete",
    ]


def test_a_service_cannot_read_a_deleted_view(metadata: MetadataStore) -> None:
    apply(metadata, [USER, A, B])
    apply(metadata, [USER, A], prune=True)
    with pytest.raises(ValidationError, match="reads view 'b', which is not a defined feature view"):
        apply(metadata, [FeatureService("late", ["b:x"])])


def test_deleting_an_entity_that_a_kept_view_uses_is_refused(metadata: MetadataStore) -> None:
    apply(metadata, [USER, A])
    with pytest.raises(ValidationError, match="Cannot delete entity 'user': feature view 'a' uses it"):
        plan(metadata, [A], prune=True)


def test_a_definition_listed_twice_applies_once_and_two_different_ones_are_refused(
    metadata: MetadataStore,
) -> None:
    assert actions(apply(metadata, [USER, A, view("a")])) == [
        ("create", "entity", "user", 1),
        ("create", "feature_view", "a", 1),
    ]
    with pytest.raises(ValidationError, match="Feature view 'a' is defined twice, differently"):
        apply(metadata, [A, view("a", ttl_days=2)])


def test_deleting_a_view_a_deployed_model_reads_is_refused(project: Project) -> None:
    train_and_deploy(project, build_world(project, n_users=10, days=3, per_day=20))
    with pytest.raises(
        ValidationError,
        match=r"Cannot delete feature view 'users': endpoint 'toy' route 'primary' \(model toy/1\)",
    ):
        project.plan([USER], prune=True)
    with pytest.raises(ValidationError, match="endpoint 'toy'"):
        project.apply([USER], prune=True)
    assert [v.name for v in list_feature_views(project.metadata)] == ["users"]


def test_a_deleted_view_is_no_longer_served_or_joined(project: Project) -> None:
    entity = pd.DataFrame({"user_id": [1], "event_timestamp": [ts("2026-01-02")]})
    build_world(project, n_users=5, days=2, per_day=10)
    project.materialize(end=ts("2026-01-02"))
    assert project.get_online_features({"user_id": [1]}, ["users:risk"]).values["risk"][0] is not None
    project.apply([USER], prune=True)
    with pytest.raises(NotFoundError, match="'users' was deleted"):
        project.get_online_features({"user_id": [1]}, ["users:risk"])
    with pytest.raises(NotFoundError, match="'users' was deleted"):
        project.get_historical_features(entity, ["users:risk"])
    assert project.materialize(end=ts("2026-01-02")) == {}


DEFINITIONS = """
from datetime import timedelta
from loopml import DriftRetrainPolicy, Entity, FeatureService, FeatureView, Field, ParquetSource

user = Entity("user", join_keys=["user_id"])
DEFINITIONS = [
    FeatureView("a", [user], ParquetSource("data/a/*.parquet"), [Field("x")], ttl=timedelta(days={days})),
]
"""
EXTRA = """
b = FeatureView("b", [user], ParquetSource("data/b/*.parquet"), [Field("x")])
svc = FeatureService("svc", ["b:x"])
drift = DriftRetrainPolicy("toy_drift", "toy", "toy", drift_window=timedelta(days=1))
"""


def test_apply_from_the_command_line_plans_deletes_and_asks_before_applying(tmp_path: Path) -> None:
    runner = CliRunner()
    p = ["-p", str(tmp_path)]
    runner.invoke(app, ["init", str(tmp_path)])
    definitions = tmp_path / "features.py"

    def run(*args: str, code: int = 0, answer: str | None = None) -> str:
        result = runner.invoke(app, [*args, *p], input=answer)
        assert result.exit_code == code, result.output
        return " ".join(re.sub(r"\s+", " ", result.output).split())

    definitions.write_text(DEFINITIONS.format(days=1) + EXTRA)
    created = run("apply")
    assert "+ create feature_view a v1" in created and "+ create policy toy_drift" in created
    assert "Plan: 5 to create, 0 to update, 0 to delete, 0 unchanged." in created

    definitions.write_text(DEFINITIONS.format(days=2))  # a changes; b, svc and the policy are gone
    planned = run("apply", "--dry-run")
    assert "~ update feature_view a v1 → v2" in planned
    assert "- delete feature_view b v1 (versions kept)" in planned and "- delete policy toy_drift" in planned
    assert "Plan: 0 to create, 1 to update, 3 to delete, 1 unchanged." in planned
    project = Project(tmp_path)
    assert get_feature_view(project.metadata, "a").ttl == timedelta(days=1)  # a dry run changes nothing

    refused = run("apply", code=1)  # nobody answers: nothing is applied
    assert "Nothing applied. Pass --yes" in refused
    run("apply", answer="n\n", code=1)
    assert [v.name for v in list_feature_views(project.metadata)] == ["a", "b"]
    assert "toy_drift" in run("policy", "list")

    assert "update feature_view a" in run("apply", "--no-prune")  # updates apply without deletes
    assert get_feature_view(project.metadata, "a").ttl == timedelta(days=2)
    assert "Applied." in run("apply", answer="y\n")
    assert [v.name for v in list_feature_views(project.metadata)] == ["a"]
    assert "toy_drift" not in run("policy", "list")
    assert "policy.deleted" in run("events", "--kind", "policy.deleted")
    assert "Plan: 0 to create, 0 to update, 0 to delete, 2 unchanged." in run("apply")
    assert "deleted:" in run("features", "show", "b")

    definitions.write_text(DEFINITIONS.format(days=2) + EXTRA)
    (tmp_path / "other.py").write_text("")
    named = run("apply", str(tmp_path / "other.py"), str(definitions))  # named files: no prune by default
    assert "Plan: 3 to create, 0 to update, 0 to delete, 2 unchanged." in named
    assert "Plan: 0 to create, 0 to update, 0 to delete, 5 unchanged." in run("apply", "--dry-run")
    assert [d.version for d in definition_versions(project.metadata, "feature_view", "b")] == [1, 2]
    definitions.write_text(DEFINITIONS.format(days=2))
    assert "Plan: 0 to create, 0 to update, 0 to delete, 2 unchanged." in run("apply", str(definitions))
    assert "Applied." in run("apply", "--yes")
    project.close()
