"""A schemathesis run over the serving app's OpenAPI schema: no operation answers a 500, whatever it is sent.

For every operation in /openapi.json, schemathesis generates requests that fit the schema and requests that
break it (types, missing fields, odd headers and paths) and sends them in-process to the app, whose lifespan
(model loading, log writers) schemathesis starts. Half the cases name the deployed endpoint 'toy' (version 1)
so bodies reach the scoring code, not only the 'no such endpoint' answer.

Each operation is a Hypothesis test over `operation.as_strategy(...)`: schemathesis' own `schema.parametrize()`
with a fixture-loaded schema sets `request.node._nodeid`, which pytest 9 no longer has.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi

from loopml.clock import SimulatedClock
from loopml.config import write_config
from loopml.project import Project
from loopml.serving.app import create_app
from tests.helpers import START, build_world, go_live, train_and_deploy

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 100  # per operation, valid and invalid requests together
# Every operation the app serves; the run must cover them all (a new route joins this list).
OPERATIONS = {
    "GET /health",
    "GET /ping",
    "GET /version",
    "POST /invocations",
    "GET /metrics",
    "GET /v1/endpoints",
    "GET /v1/endpoints/{name}",
    "POST /v1/endpoints/{name}/predict",
    "POST /v1/endpoints/{name}/invocations",
    "POST /v1/feedback",
    "POST /v1/predictions/flush",
    "POST /v1/features/online",
    "POST /v1/features/push",
    "GET /v2",
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/ready",
    "GET /v2/models/{name}/versions/{version}",
    "GET /v2/models/{name}/versions/{version}/ready",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
    "POST /v2/repository/index",
    "POST /v2/repository/models/{name}/load",
    "POST /v2/repository/models/{name}/unload",
}


@pytest.fixture(scope="module")
def app_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    """The `served` project (endpoint 'toy' with stored features) behind an app that schemathesis runs."""
    path = tmp_path_factory.mktemp("fuzz")
    write_config(path, "fuzz")
    clock = SimulatedClock(START.to_pydatetime())
    project = Project(path, clock=clock)
    train_and_deploy(project, build_world(project))
    go_live(project, clock)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(project))
    yield schema
    asgi.shutdown_lifespans()  # schemathesis keeps the app's lifespan running until asked
    project.close()


def test_the_run_covers_every_operation(app_schema) -> None:
    covered = {f"{op.ok().method.upper()} {op.ok().path}" for op in app_schema.get_all_operations()}
    assert covered == OPERATIONS


def test_every_reference_resolves_inside_the_document(app_schema) -> None:
    text = json.dumps(app_schema.raw_schema)
    assert "#/$defs/" not in text, (
        "a request body keeps pydantic's $defs references, which point nowhere here"
    )


@pytest.mark.parametrize("label", sorted(OPERATIONS))  # sorted: the unload operation runs last
def test_no_operation_answers_a_server_error(app_schema, label) -> None:
    operation = app_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in /openapi.json"
    names = {p.name for p in operation.path_parameters}
    deployed = {k: v for k, v in {"name": "toy", "version": "1"}.items() if k in names}
    pinned = [{}, deployed] if deployed else [{}]
    strategy = st.one_of(
        [
            operation.as_strategy(mode, path_parameters=fixed)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            for fixed in pinned
        ]
    )

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    fuzz()
