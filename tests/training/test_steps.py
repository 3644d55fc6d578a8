"""Steps and pipelines: the DAG from parameter names, its checks, and where parameters come from."""

from __future__ import annotations

import pytest

from loopml.errors import ConfigError, ValidationError
from loopml.training import Pipeline, layered_params, step
from loopml.training.steps import as_step


@step
def raw(rows: int = 3) -> list[int]:
    return list(range(rows))


@step(outputs=("train", "test"))
def split(raw: list[int], fraction: float = 0.5) -> tuple[list[int], list[int]]:
    cut = int(len(raw) * fraction)
    return raw[:cut], raw[cut:]


@step
def model(train: list[int], test: list[int], depth: int = 2, name: str = "m", tags: tuple = ()) -> dict:
    return {"train": sum(train), "test": sum(test), "depth": depth}


def test_a_decorated_step_stays_a_plain_function() -> None:
    assert raw(2) == [0, 1]
    assert as_step(split).outputs == ("train", "test")
    assert as_step(raw).outputs == ("raw",)
    assert as_step(model).inputs == ("train", "test", "depth", "name", "tags")


def test_the_order_follows_the_data_whatever_the_declaration_order() -> None:
    pipeline = Pipeline("p", steps=[model, split, raw])
    assert [s.name for s in pipeline.steps] == ["raw", "split", "model"]
    assert pipeline.defaults == {"rows": 3, "fraction": 0.5, "depth": 2, "name": "m", "tags": ()}
    assert pipeline.params_of(pipeline.step("model")) == ("depth", "name", "tags")
    assert pipeline.producer("train") is as_step(split)
    assert pipeline.producer("depth") is None


def test_independent_steps_keep_their_declaration_order() -> None:
    @step
    def b() -> int:
        return 1

    @step
    def a() -> int:
        return 2

    @step
    def c(a: int, b: int) -> int:
        return a + b

    assert [s.name for s in Pipeline("p", [c, b, a]).steps] == ["b", "a", "c"]
    assert [s.name for s in Pipeline("p", [c, a, b]).steps] == ["a", "b", "c"]


def test_an_input_nobody_produces_and_without_default_is_named() -> None:
    @step
    def fit(features: list[int]) -> int:
        return len(features)

    with pytest.raises(ValidationError, match=r"step 'fit' takes 'features'.*no step produces"):
        Pipeline("p", [raw, fit])


def test_two_producers_of_one_name_are_refused() -> None:
    @step(outputs=("train", "other"))
    def second_split(raw: list[int]) -> tuple[list[int], list[int]]:
        return raw, raw

    with pytest.raises(ValidationError, match=r"steps 'split' and 'second_split' both produce 'train'"):
        Pipeline("p", [raw, split, second_split])


def test_a_cycle_is_refused_and_spelled_out() -> None:
    @step
    def first(second: int) -> int:
        return second

    @step
    def second(first: int) -> int:
        return first

    with pytest.raises(ValidationError, match=r"cycle: first → second → first"):
        Pipeline("p", [first, second])

    @step
    def selfish(selfish: int = 1) -> int:
        return selfish

    with pytest.raises(ValidationError, match=r"cycle: selfish → selfish"):
        Pipeline("p", [selfish])


def test_malformed_steps_and_pipelines_are_refused() -> None:
    def plain() -> int:
        return 1

    with pytest.raises(ValidationError, match="is not a step; decorate it"):
        Pipeline("p", [plain])
    with pytest.raises(ValidationError, match="two steps named 'raw'"):
        Pipeline("p", [raw, raw])
    with pytest.raises(ValidationError, match="no steps"):
        Pipeline("p", [])
    with pytest.raises(ValidationError, match=r"\*args"):

        @step
        def variadic(*rows: int) -> int:
            return 0

    with pytest.raises(ValidationError, match="distinct Python identifiers"):
        step(outputs=("a", "a"))(plain)
    with pytest.raises(ValidationError, match="sequence of names"):
        step(outputs="a")(plain)  # type: ignore[arg-type]


def test_shared_parameters_must_agree_on_their_default() -> None:
    @step
    def one(seed: int = 1) -> int:
        return seed

    @step
    def two(one: int, seed: int = 2) -> int:
        return one + seed

    with pytest.raises(ValidationError, match=r"'seed' defaults to 1 in step 'one' but 2 in step 'two'"):
        Pipeline("p", [one, two])
    assert Pipeline("p", [one, two], params={"seed": 7}).defaults == {"seed": 7}


def test_pipeline_params_must_name_a_parameter_and_be_recordable() -> None:
    with pytest.raises(ValidationError, match=r"params sets 'dept', which no step takes.*'depth'"):
        Pipeline("p", [raw, split, model], params={"dept": 3})
    with pytest.raises(ValidationError, match=r"'depth' is <object"):
        Pipeline("p", [raw, split, model], params={"depth": object()})


def test_several_outputs_come_as_a_tuple_or_a_dict() -> None:
    s = as_step(split)
    assert s.split(([1], [2])) == {"train": [1], "test": [2]}
    assert s.split({"test": [2], "train": [1]}) == {"train": [1], "test": [2]}
    with pytest.raises(
        ValidationError, match=r"declares outputs \['train', 'test'\] but returned list of length 3"
    ):
        s.split([1, 2, 3])


def test_parameter_precedence_cli_over_yaml_over_pipeline_over_signature() -> None:
    pipeline = Pipeline("p", [raw, split, model], params={"depth": 4, "fraction": 0.8})
    assert pipeline.resolve_params()["depth"] == 4  # Pipeline(params) over the signature's 2
    assert pipeline.resolve_params()["rows"] == 3  # the signature's default
    config = {"pipelines": {"p": {"params": {"depth": 5, "rows": 10}}}}
    overrides = layered_params(pipeline, config, ["depth=6", "name=007", "fraction=1"])
    resolved = pipeline.resolve_params(overrides)
    assert resolved["depth"] == 6  # the command line over loopml.yaml
    assert resolved["rows"] == 10  # loopml.yaml over the signature
    assert resolved["name"] == "007"  # text stays text where the default is text
    assert resolved["fraction"] == 1.0 and isinstance(resolved["fraction"], float)
    assert pipeline.resolve_params(layered_params(pipeline, {}, ["tags=[a, b]"]))["tags"] == ("a", "b")
    assert layered_params(pipeline, {"pipelines": {"other": {"params": {"x": 1}}}}) == {}


def test_parameter_values_must_fit_their_default() -> None:
    pipeline = Pipeline("p", [raw, split, model])
    with pytest.raises(ValidationError, match=r"'depth' = 'deep' is str, but its default 2 is int"):
        pipeline.resolve_params(pipeline.parse_param_args(["depth=deep"]))
    with pytest.raises(ValidationError, match=r"'depth' = 2.5 is float"):
        pipeline.resolve_params({"depth": 2.5})
    with pytest.raises(ValidationError, match=r"'depth' = True is bool"):
        pipeline.resolve_params({"depth": True})
    with pytest.raises(
        ValidationError, match=r"no parameter 'dpth'; its parameters are \['depth', 'fraction'"
    ):
        pipeline.parse_param_args(["dpth=3"])
    with pytest.raises(ValidationError, match="must look like NAME=VALUE"):
        pipeline.parse_param_args(["depth"])
    with pytest.raises(ConfigError, match=r"'pipelines.p.params.speed', which pipeline 'p' does not take"):
        layered_params(pipeline, {"pipelines": {"p": {"params": {"speed": 1}}}})
    with pytest.raises(ConfigError, match="must look like"):
        layered_params(pipeline, {"pipelines": {"p": ["depth"]}})
