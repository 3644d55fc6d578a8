"""Pipelines of steps: plain functions whose parameter names wire them together.

A step's inputs are its parameter names. Each is the output of another step (a step's output is named after
its function, or after the names given in `@step(outputs=...)`), a resource the runner injects (such as
`project`, never hashed), or a pipeline parameter whose default comes from the function signature, then
`Pipeline(params=...)`, then loopml.yaml (`pipelines: {NAME: {params: ...}}`), then the command line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import yaml

from loopml.errors import ConfigError, ValidationError

STEP_ATTRIBUTE = "__loopml_step__"
DEFAULT_RESOURCES = ("project",)  # what Project.run_pipeline injects by name

F = TypeVar("F", bound=Callable[..., Any])
_NO_DEFAULT = inspect.Parameter.empty


@dataclass(frozen=True)
class Step:
    """A decorated function and what the pipeline needs to know about it."""

    name: str
    func: Callable[..., Any]
    outputs: tuple[str, ...]
    cache: bool | None  # None: cached unless the step takes an injected resource
    inputs: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def split(self, value: Any) -> dict[str, Any]:
        """The step's return value as output name → value (several outputs come as a tuple or a dict)."""
        if len(self.outputs) == 1:
            return {self.outputs[0]: value}
        if isinstance(value, Mapping) and set(value) == set(self.outputs):
            return {name: value[name] for name in self.outputs}
        if isinstance(value, tuple | list) and len(value) == len(self.outputs):
            return dict(zip(self.outputs, value, strict=True))
        raise ValidationError(
            f"Step '{self.name}' declares outputs {list(self.outputs)} but returned {type(value).__name__}"
            f"{' of length ' + str(len(value)) if isinstance(value, tuple | list) else ''}; return a tuple "
            "in that order or a dict with exactly those keys."
        )


@overload
def step(func: F, /) -> F: ...


@overload
def step(*, outputs: Sequence[str] | None = None, cache: bool | None = None) -> Callable[[F], F]: ...


def step(
    func: F | None = None, /, *, outputs: Sequence[str] | None = None, cache: bool | None = None
) -> F | Callable[[F], F]:
    """Declare a pipeline step; the function stays a plain function (callable, picklable, testable).

    `outputs` names several outputs (the function then returns a tuple in that order or a dict); `cache=False`
    runs the step every time even when its code, parameters and inputs are unchanged. A step taking an injected
    resource (e.g. `project`, whose data the cache key cannot see) runs every time unless `cache=True`.
    """

    def declare(function: F) -> F:
        setattr(function, STEP_ATTRIBUTE, _describe(function, outputs, cache))
        return function

    return declare(func) if func is not None else declare


def _describe(function: Callable[..., Any], outputs: Sequence[str] | None, cache: bool | None) -> Step:
    name = function.__name__
    if isinstance(outputs, str):
        raise ValidationError(
            f"Step '{name}': outputs must be a sequence of names, e.g. outputs=('{outputs}',)."
        )
    names = tuple(outputs) if outputs else (name,)
    bad = [o for o in names if not isinstance(o, str) or not o.isidentifier()]
    if bad or len(set(names)) != len(names):
        raise ValidationError(
            f"Step '{name}': outputs {list(names)} must be distinct Python identifiers (bad: {bad or 'repeated'})."
        )
    inputs, defaults = [], {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise ValidationError(
                f"Step '{name}' has parameter '{parameter}'; steps are called by keyword, so every "
                "parameter must be a plain named one (no *args, **kwargs or positional-only)."
            )
        inputs.append(parameter.name)
        if parameter.default is not _NO_DEFAULT:
            defaults[parameter.name] = parameter.default
    return Step(name, function, names, cache, tuple(inputs), defaults)


def as_step(function: Callable[..., Any]) -> Step:
    """The Step behind a decorated function; a clear error for an undecorated one."""
    found = getattr(function, STEP_ATTRIBUTE, None)
    if not isinstance(found, Step):
        raise ValidationError(
            f"{getattr(function, '__qualname__', function)!r} is not a step; decorate it with "
            "@loopml.training.step."
        )
    return found


class Pipeline:
    """A named DAG of steps, checked when built: every input resolves, one producer per name, no cycles."""

    def __init__(
        self,
        name: str,
        steps: Sequence[Callable[..., Any]],
        params: Mapping[str, Any] | None = None,
        *,
        resources: Iterable[str] = DEFAULT_RESOURCES,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ValidationError(f"A pipeline needs a non-empty name, got {name!r}.")
        if not steps:
            raise ValidationError(f"Pipeline '{name}' has no steps; pass steps=[...] of @step functions.")
        self.name = name
        self.resources = frozenset(resources)
        declared = [as_step(f) for f in steps]
        self._producers = _producers(name, declared)
        self.defaults = _defaults(name, declared, self._producers, self.resources, params or {})
        self.steps: tuple[Step, ...] = _topological(name, declared, self._producers)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={[s.name for s in self.steps]})"

    def producer(self, output: str) -> Step | None:
        """The step producing `output`, or None for a parameter or resource."""
        return self._producers.get(output)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise ValidationError(
            f"Pipeline '{self.name}' has no step '{name}'; its steps are {[s.name for s in self.steps]}."
        )

    def params_of(self, step: Step) -> tuple[str, ...]:
        """The pipeline parameters `step` takes, in signature order."""
        return tuple(i for i in step.inputs if i in self.defaults)

    def resolve_params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every parameter's value: the defaults with `overrides` on top, each checked against its default's type."""
        resolved = dict(self.defaults)
        for key, value in (overrides or {}).items():
            if key not in resolved:
                raise ValidationError(
                    f"Pipeline '{self.name}' has no parameter '{key}'; its parameters are "
                    f"{sorted(self.defaults) or 'none'}."
                )
            resolved[key] = _coerce(self.name, key, value, self.defaults[key])
        return resolved

    def parse_param_args(self, args: Sequence[str]) -> dict[str, Any]:
        """`k=v` strings (the CLI's --param) as typed values: YAML scalars, text where the default is text."""
        parsed: dict[str, Any] = {}
        for arg in args:
            key, sep, text = arg.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValidationError(
                    f"--param {arg!r} must look like NAME=VALUE, e.g. --param learning_rate=0.1."
                )
            if key not in self.defaults:
                raise ValidationError(
                    f"Pipeline '{self.name}' has no parameter '{key}'; its parameters are "
                    f"{sorted(self.defaults) or 'none'}."
                )
            if isinstance(self.defaults[key], str):
                parsed[key] = text
                continue
            try:
                parsed[key] = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError as exc:
                raise ValidationError(f"--param {arg!r}: {text!r} is not a YAML value ({exc}).") from exc
        return parsed


def config_params(config: Mapping[str, Any], pipeline: str) -> dict[str, Any]:
    """The parameters loopml.yaml gives `pipeline` (`pipelines: {NAME: {params: {k: v}}}`), or none."""
    section = config.get("pipelines") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"loopml.yaml 'pipelines' must map pipeline names to settings, got {section!r}.")
    entry = section.get(pipeline) or {}
    params = entry.get("params") if isinstance(entry, Mapping) else None
    if not isinstance(entry, Mapping) or not isinstance(params or {}, Mapping):
        raise ConfigError(
            f"loopml.yaml 'pipelines.{pipeline}' must look like {{params: {{name: value}}}}, got {entry!r}."
        )
    return dict(params or {})


def layered_params(
    pipeline: Pipeline, config: Mapping[str, Any] | None = None, cli: Sequence[str] = ()
) -> dict[str, Any]:
    """The overrides for a run: loopml.yaml's, then the command line's on top (defaults live in `pipeline`)."""
    found = config_params(config or {}, pipeline.name)
    for key in found:
        if key not in pipeline.defaults:
            raise ConfigError(
                f"loopml.yaml sets 'pipelines.{pipeline.name}.params.{key}', which pipeline "
                f"'{pipeline.name}' does not take; its parameters are {sorted(pipeline.defaults) or 'none'}."
            )
    return {**found, **pipeline.parse_param_args(cli)}


def _producers(pipeline: str, steps: list[Step]) -> dict[str, Step]:
    names: dict[str, Step] = {}
    producers: dict[str, Step] = {}
    for s in steps:
        if s.name in names:
            raise ValidationError(
                f"Pipeline '{pipeline}' has two steps named '{s.name}'; rename one function."
            )
        names[s.name] = s
        for output in s.outputs:
            if output in producers:
                raise ValidationError(
                    f"Pipeline '{pipeline}': steps '{producers[output].name}' and '{s.name}' both produce "
                    f"'{output}'; an output name must have one producer."
                )
            producers[output] = s
    return producers


def _defaults(
    pipeline: str,
    steps: list[Step],
    producers: Mapping[str, Step],
    resources: frozenset[str],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """Parameter defaults: Pipeline(params=...) over the signatures' (which must agree when shared)."""
    defaults: dict[str, Any] = {}
    owner: dict[str, str] = {}
    missing: list[tuple[str, str]] = []
    for s in steps:
        for name in s.inputs:
            if name in producers or name in resources:
                continue
            if name in params:
                defaults[name] = params[name]
            elif name in s.defaults:
                if name in defaults and name in owner and defaults[name] != s.defaults[name]:
                    raise ValidationError(
                        f"Pipeline '{pipeline}': parameter '{name}' defaults to {defaults[name]!r} in step "
                        f"'{owner[name]}' but {s.defaults[name]!r} in step '{s.name}'; make them agree or "
                        f"set it with Pipeline(params={{'{name}': ...}})."
                    )
                defaults.setdefault(name, s.defaults[name])
                owner.setdefault(name, s.name)
            else:
                missing.append((s.name, name))
    for step_name, name in missing:
        if name not in defaults:
            raise ValidationError(
                f"Pipeline '{pipeline}': step '{step_name}' takes '{name}', which no step produces and which "
                f"has no default; add a step returning it, give the parameter a default, or pass "
                f"Pipeline(params={{'{name}': ...}}). Outputs available: {sorted(producers)}."
            )
    for name in params:
        if name not in defaults:
            raise ValidationError(
                f"Pipeline '{pipeline}': params sets '{name}', which no step takes as a parameter; "
                f"parameters are {sorted(defaults) or 'none'}."
            )
    for name, value in defaults.items():
        _check_json(pipeline, name, value)
    return defaults


def _topological(pipeline: str, steps: list[Step], producers: Mapping[str, Step]) -> tuple[Step, ...]:
    """Kahn's algorithm, taking ready steps in declaration order so the order never varies."""
    upstream = {s.name: {producers[i].name for i in s.inputs if i in producers} for s in steps}
    ordered: list[Step] = []
    done: set[str] = set()
    pending = list(steps)
    while pending:
        ready = next((s for s in pending if upstream[s.name] <= done), None)
        if ready is None:
            cycle = _cycle(upstream, {s.name for s in pending})
            raise ValidationError(
                f"Pipeline '{pipeline}' has a cycle: {' → '.join(cycle)}; a step cannot need its own output, "
                "directly or through other steps."
            )
        ordered.append(ready)
        done.add(ready.name)
        pending.remove(ready)
    return tuple(ordered)


def _cycle(upstream: Mapping[str, set[str]], blocked: set[str]) -> list[str]:
    """One cycle among the blocked steps, as consumer → producer → ... → consumer."""
    start = min(blocked)
    path = [start]
    while True:
        following = min(upstream[path[-1]] & blocked)
        if following in path:
            return [*path[path.index(following) :], following]
        path.append(following)


_JSON_SCALARS = (str, int, float, bool, type(None))


def _check_json(pipeline: str, name: str, value: Any) -> None:
    if isinstance(value, _JSON_SCALARS):
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(pipeline, name, item)
        return
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        for item in value.values():
            _check_json(pipeline, name, item)
        return
    raise ValidationError(
        f"Pipeline '{pipeline}': parameter '{name}' is {value!r} ({type(value).__name__}); parameters are "
        "recorded with the run, so use numbers, strings, booleans, None, lists or string-keyed mappings."
    )


def _coerce(pipeline: str, name: str, value: Any, default: Any) -> Any:
    """`value` as the type of `default` where that is lossless; a clear error where it is not."""
    _check_json(pipeline, name, value)
    expected = type(default)
    if default is None or (
        isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
    ):
        return expected(value) if isinstance(default, tuple | list) else value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple | list) and isinstance(value, tuple | list):
        return expected(value)
    if isinstance(default, Mapping) and isinstance(value, Mapping):
        return dict(value)
    raise ValidationError(
        f"Pipeline '{pipeline}': parameter '{name}' = {value!r} is {type(value).__name__}, but its default "
        f"{default!r} is {expected.__name__}; give a {expected.__name__}."
    )
