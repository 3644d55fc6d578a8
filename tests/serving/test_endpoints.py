"""Endpoint routes in the metadata store: modes, weights, promotion, settings; on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from loopml.errors import NotFoundError, ValidationError
from loopml.project import Project
from loopml.serving.endpoints import (
    ServingSettings,
    configure,
    deploy,
    get_endpoint,
    list_endpoints,
    route_versions,
    undeploy,
)
from tests.helpers import SPEC, build_world


@pytest.fixture
def two_versions(any_project: Project) -> Project:
    events = build_world(any_project, n_users=10, days=3, per_day=30)
    for seed in (0, 1):
        version = any_project.registry.register(
            any_project.train(SPEC, events.sample(frac=0.9, random_state=seed))
        )
    any_project.registry.set_alias("toy", "champion", 1, reason="test")
    any_project.registry.set_alias("toy", "challenger", version.version, reason="test")
    return any_project


def test_an_endpoint_starts_with_a_primary_route_and_takes_canary_shadow_and_arms(two_versions) -> None:
    project = two_versions
    meta, reg = project.metadata, project.registry
    first = deploy(meta, reg, "ep", "toy")
    assert [(r.name, r.mode, r.target, r.weight) for r in first.routes] == [
        ("primary", "primary", "toy@champion", 100.0)
    ]
    deploy(meta, reg, "ep", "toy", "challenger", mode="canary", weight=5)
    deploy(meta, reg, "ep", "toy", None, version=1, mode="shadow", weight=50)
    ep = deploy(meta, reg, "ep", "toy", "challenger", mode="experiment", weight=20, route="b")
    assert {r.name: (r.mode, r.target, r.weight) for r in ep.routes} == {
        "primary": ("primary", "toy@champion", 100.0),
        "canary": ("canary", "toy@challenger", 5.0),
        "shadow": ("shadow", "toy/1", 50.0),
        "b": ("experiment", "toy@challenger", 20.0),
    }
    assert {k: v.version for k, v in route_versions(reg, ep).items()} == {
        "primary": 1,
        "canary": 2,
        "shadow": 1,
        "b": 2,
    }
    assert [e.name for e in list_endpoints(meta)] == ["ep"]
    kinds = [e.data["route"] for e in meta.events(kind="endpoint.deployed")]
    assert kinds == ["primary", "canary", "shadow", "b"]


def test_promoting_the_canary_replaces_the_primary_and_drops_the_canary(two_versions) -> None:
    meta, reg = two_versions.metadata, two_versions.registry
    deploy(meta, reg, "ep", "toy")
    deploy(meta, reg, "ep", "toy", "challenger", mode="canary", weight=25)
    deploy(meta, reg, "ep", "toy", "challenger", mode="shadow", weight=10)
    promoted = deploy(meta, reg, "ep", "toy", "challenger")
    assert {r.name: r.target for r in promoted.routes} == {
        "primary": "toy@challenger",
        "shadow": "toy@challenger",
    }
    removed = deploy(meta, reg, "ep", "toy", "challenger", mode="shadow", weight=0)
    assert [r.name for r in removed.routes] == ["primary"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "canary"}, "needs a weight between 0 and 100"),
        ({"mode": "canary", "weight": 101}, "needs a weight between 0 and 100"),
        ({"mode": "experiment", "weight": 10}, "needs a name"),
        ({"mode": "sideways", "weight": 10}, "mode 'sideways' is unknown"),
        ({"weight": 10}, "takes the traffic the others leave"),
        ({"mode": "canary", "weight": 10, "route": "primary"}, "names the primary route"),
    ],
)
def test_bad_routes_are_refused_with_the_reason(two_versions, kwargs, message) -> None:
    deploy(two_versions.metadata, two_versions.registry, "ep", "toy")
    with pytest.raises(ValidationError, match=message):
        deploy(two_versions.metadata, two_versions.registry, "ep", "toy", "challenger", **kwargs)


def test_weights_over_100_percent_and_unknown_targets_are_refused(two_versions) -> None:
    meta, reg = two_versions.metadata, two_versions.registry
    with pytest.raises(NotFoundError, match="deploy its primary model first"):
        deploy(meta, reg, "ep", "toy", "challenger", mode="canary", weight=10)
    deploy(meta, reg, "ep", "toy")
    deploy(meta, reg, "ep", "toy", "challenger", mode="canary", weight=60)
    with pytest.raises(ValidationError, match="would take 110%"):
        deploy(meta, reg, "ep", "toy", "challenger", mode="experiment", weight=50, route="b")
    with pytest.raises(NotFoundError, match="has no alias 'nope'"):
        deploy(meta, reg, "ep", "toy", "nope")
    with pytest.raises(NotFoundError):
        deploy(meta, reg, "ep", "toy", None, version=9)
    assert [r.name for r in get_endpoint(meta, "ep").routes] == ["canary", "primary"]


def test_settings_are_validated_stored_and_reset(two_versions) -> None:
    meta = two_versions.metadata
    deploy(meta, two_versions.registry, "ep", "toy")
    ep = configure(meta, "ep", cache_max_age_seconds=600, max_batch_size=16, nan_policy="reject")
    assert ep.settings == ServingSettings(cache_max_age_seconds=600, max_batch_size=16, nan_policy="reject")
    assert configure(meta, "ep", cache_max_age_seconds=None).settings.cache_max_age_seconds is None
    with pytest.raises(ValidationError, match="nan_policy is 'maybe'"):
        configure(meta, "ep", nan_policy="maybe")
    with pytest.raises(ValidationError, match="Unknown serving setting"):
        configure(meta, "ep", colour="red")
    with pytest.raises(ValidationError, match="max_batch_wait_ms < batch_timeout_ms"):
        configure(meta, "ep", max_batch_wait_ms=50, batch_timeout_ms=10)


def test_the_registry_refuses_to_delete_a_version_a_route_serves(two_versions) -> None:
    meta, reg = two_versions.metadata, two_versions.registry
    deploy(meta, reg, "ep", "toy")
    deploy(meta, reg, "ep", "toy", None, version=2, mode="shadow", weight=10)
    with pytest.raises(ValidationError, match="route 'shadow'"):
        reg.delete_version("toy", 2, reason="test")
    undeploy(meta, "ep")
    assert list_endpoints(meta) == []
    with pytest.raises(NotFoundError, match="No endpoint named 'ep'"):
        get_endpoint(meta, "ep")
