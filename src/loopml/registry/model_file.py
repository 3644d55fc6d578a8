"""The model file (loopml-model.yaml): everything needed to load, check, serve and judge a model version.

A superset of MLflow's MLmodel: flavors, signature, input example and environment, plus what the loop needs
around a model (the features and data it was trained on, its baseline for monitoring, the gates it must
pass). Loading validates every key and says which one is wrong; custom keys are kept when they start with
'x-', any other unknown key is refused as a probable typo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from loopml.errors import ValidationError
from loopml.registry import flavors
from loopml.registry.signature import Signature

MODEL_FILE_NAME = "loopml-model.yaml"
FORMAT_VERSION = 1

# key -> (accepted types, description for messages); model_name and flavors are required.
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "format_version": ((int,), "an integer"),
    "model_name": ((str,), "a string"),
    "flavors": ((dict,), "a mapping of flavor name to its settings"),
    "signature": ((dict,), "a mapping with 'inputs' and 'outputs'"),
    "input_example": ((list,), "a list of records"),
    "requirements": ((list,), "a list of pip requirement lines"),
    "python_version": ((str,), "a string such as '3.11.7'"),
    "features": ((list,), "a list of 'view:feature' references"),
    "feature_service": ((str,), "a string"),
    "data_version": ((dict,), "a mapping"),
    "baseline": ((dict,), "a mapping"),
    "promotion_policy": ((dict,), "a mapping"),
    "run_id": ((str,), "a string"),
    "created_at": ((str,), "an ISO 8601 timestamp string"),
}
_REQUIRED = ("model_name", "flavors")


@dataclass(frozen=True)
class ModelFile:
    model_name: str
    flavors: dict[str, dict[str, Any]]
    signature: Signature = field(default_factory=Signature)
    input_example: list[dict[str, Any]] | None = None
    requirements: tuple[str, ...] = ()
    python_version: str | None = None
    features: tuple[str, ...] = ()
    feature_service: str | None = None
    data_version: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    promotion_policy: dict[str, Any] | None = None
    run_id: str | None = None
    created_at: str | None = None
    format_version: int = FORMAT_VERSION
    extensions: dict[str, Any] = field(default_factory=dict)  # the 'x-' keys, kept as they were

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": self.format_version,
            "model_name": self.model_name,
            "flavors": {name: dict(config) for name, config in self.flavors.items()},
            "signature": self.signature.to_dict(),
            "input_example": self.input_example,
            "requirements": list(self.requirements),
            "python_version": self.python_version,
            "features": list(self.features),
            "feature_service": self.feature_service,
            "data_version": self.data_version,
            "baseline": self.baseline,
            "promotion_policy": self.promotion_policy,
            "run_id": self.run_id,
            "created_at": self.created_at,
        }
        return {**data, **self.extensions}

    @classmethod
    def from_dict(cls, data: Any, source: str = MODEL_FILE_NAME) -> ModelFile:
        """Validate and parse; every problem found is reported at once, each with its key path."""
        if not isinstance(data, Mapping):
            raise ValidationError(
                f"{source}: must be a mapping of keys to values, got {type(data).__name__}."
            )
        problems = _problems(data)
        signature = Signature()
        if not problems and data.get("signature") is not None:
            try:
                signature = Signature.from_dict(data["signature"], "signature")
            except ValidationError as exc:
                problems.append(str(exc).rstrip("."))
        if problems:
            raise ValidationError(
                f"{source}: " + "; ".join(problems) + f". Fix {source} (or re-register the model)."
            )
        return cls(
            model_name=data["model_name"],
            flavors={name: dict(config) for name, config in data["flavors"].items()},
            signature=signature,
            input_example=data.get("input_example"),
            requirements=tuple(data.get("requirements") or ()),
            python_version=data.get("python_version"),
            features=tuple(data.get("features") or ()),
            feature_service=data.get("feature_service"),
            data_version=data.get("data_version"),
            baseline=data.get("baseline"),
            promotion_policy=data.get("promotion_policy"),
            run_id=data.get("run_id"),
            created_at=data.get("created_at"),
            format_version=data.get("format_version", FORMAT_VERSION),
            extensions={key: value for key, value in data.items() if str(key).startswith("x-")},
        )

    def to_yaml(self) -> bytes:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True).encode()

    @classmethod
    def from_yaml(cls, data: bytes, source: str = MODEL_FILE_NAME) -> ModelFile:
        try:
            parsed = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise ValidationError(
                f"{source} is not valid YAML: {exc}. Fix the file or re-export the model."
            ) from exc
        return cls.from_dict(parsed, source)

    @property
    def flavor(self) -> str:
        """The flavor loopml loads this model with by default."""
        return flavors.pick_flavor(self)


def _problems(data: Mapping[str, Any]) -> list[str]:
    problems = []
    unknown = sorted(str(key) for key in data if key not in _FIELDS and not str(key).startswith("x-"))
    if unknown:
        problems.append(
            f"unknown top-level keys {unknown} (a typo? known keys: {', '.join(_FIELDS)}; "
            "prefix custom keys with 'x-')"
        )
    for key in _REQUIRED:
        if data.get(key) is None:
            problems.append(f"{key} is missing")
    for key, (kinds, description) in _FIELDS.items():
        value = data.get(key)
        if value is not None and (
            not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        ):
            problems.append(f"{key} must be {description}, got {value!r}")
    if problems:
        return problems
    version = data.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        problems.append(
            f"format_version is {version} but this loopml reads up to {FORMAT_VERSION}; upgrade loopml"
        )
    problems += _list_problems(data, "requirements", str)
    problems += _list_problems(data, "features", str)
    problems += _list_problems(data, "input_example", dict)
    problems += _flavor_problems(data["flavors"])
    return problems


def _list_problems(data: Mapping[str, Any], key: str, kind: type) -> list[str]:
    return [
        f"{key}[{i}] must be {'a string' if kind is str else 'a mapping'}, got {item!r}"
        for i, item in enumerate(data.get(key) or [])
        if not isinstance(item, kind)
    ]


def _flavor_problems(section: Mapping[str, Any]) -> list[str]:
    if not section:
        return ["flavors is empty: a model needs at least one flavor loopml can load"]
    problems = [
        f"flavors.{name} must be a mapping of settings, got {config!r}"
        for name, config in section.items()
        if not isinstance(config, Mapping)
    ]
    if problems:
        return problems
    problems = [
        problem for name, config in section.items() for problem in flavors.check_config(str(name), config)
    ]
    if not any(name in flavors.FLAVORS for name in section):
        problems.append(
            f"flavors has no flavor loopml can load (it has {sorted(map(str, section))}; "
            f"loopml loads {', '.join(flavors.LOAD_ORDER)})"
        )
    return problems
