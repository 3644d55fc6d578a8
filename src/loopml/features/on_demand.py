"""On-demand transformations: a Python function over retrieved features and request data, run by the same
code when building training sets and when serving, so the two cannot disagree.

    @on_demand_feature_view(
        sources=["merchant_labels:fraud_30d", "merchant_labels:labelled_30d"],
        schema=[Field("fraud_rate_30d")],
    )
    def merchant_risk(inputs):
        return {"fraud_rate_30d": [(f + 0.4) / (n + 20) for f, n in zip(inputs["fraud_30d"], inputs["labelled_30d"])]}

In the default "python" mode the function takes and returns a dict of equal-length column lists; in "pandas"
mode a DataFrame. The applied version records where the function lives and a hash of its source, so serving
refuses to run code that changed since `loopml apply`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from loopml.errors import ValidationError
from loopml.features.definitions import (
    FeatureView,
    Field,
    check_identifier,
    feature_column,
    group_feature_refs,
    parse_feature_ref,
)

MODES = ("python", "pandas")


@dataclass(frozen=True)
class OnDemandFeatureView:
    """Features computed at read time by `function` from other views' features and request fields."""

    name: str
    sources: tuple[str, ...]
    schema: tuple[Field, ...]
    function: Callable[[Any], Any]
    request: tuple[Field, ...] = ()
    mode: str = "python"
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    owner: str = ""

    def __post_init__(self) -> None:
        check_identifier("OnDemandFeatureView", self.name)
        for attribute in ("sources", "schema", "request"):
            object.__setattr__(self, attribute, tuple(getattr(self, attribute)))
        if self.mode not in MODES:
            raise ValidationError(
                f"OnDemandFeatureView '{self.name}' has mode {self.mode!r}; use 'python' or 'pandas'."
            )
        if not self.schema:
            raise ValidationError(f"OnDemandFeatureView '{self.name}' declares no output features in schema.")
        if not self.sources and not self.request:
            raise ValidationError(
                f"OnDemandFeatureView '{self.name}' reads nothing; give sources or request fields."
            )
        inputs = self.input_names
        if len(set(inputs)) != len(inputs):
            raise ValidationError(
                f"OnDemandFeatureView '{self.name}' has inputs with the same name {inputs}; "
                "every source feature and request field must have its own name."
            )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)

    @property
    def input_names(self) -> list[str]:
        return [parse_feature_ref(ref)[1] for ref in self.sources] + [f.name for f in self.request]

    def dtype_of(self, feature: str) -> str:
        for f in self.schema:
            if f.name == feature:
                return f.dtype
        raise ValidationError(
            f"On-demand view '{self.name}' has no feature '{feature}'; it has {', '.join(self.feature_names)}."
        )

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sources": list(self.sources),
            "schema": [{"name": f.name, "dtype": f.dtype} for f in self.schema],
            "request": [{"name": f.name, "dtype": f.dtype} for f in self.request],
            "mode": self.mode,
            "function": function_reference(self.function, self.name),
            "description": self.description,
            "tags": dict(self.tags),
            "owner": self.owner,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], search_path: Path | None = None) -> OnDemandFeatureView:
        return cls(
            name=spec["name"],
            sources=tuple(spec["sources"]),
            schema=tuple(Field(**f) for f in spec["schema"]),
            function=load_function(spec["function"], spec["name"], search_path),
            request=tuple(Field(**f) for f in spec["request"]),
            mode=spec["mode"],
            description=spec.get("description", ""),
            tags=spec.get("tags", {}),
            owner=spec.get("owner", ""),
        )

    def transform(self, inputs: Mapping[str, Sequence[Any]], rows: int) -> dict[str, list[Any]]:
        """Run the function on input columns; returns each output column, checked."""
        try:
            if self.mode == "pandas":
                output = self.function(
                    pd.DataFrame({k: list(v) for k, v in inputs.items()}, index=range(rows))
                )
                columns = {} if output is None else {str(c): output[c].tolist() for c in output.columns}
            else:
                output = self.function({k: list(v) for k, v in inputs.items()})
                columns = {k: list(v) for k, v in (output or {}).items()}
        except ValidationError:
            raise
        except Exception as exc:
            raise ValidationError(
                f"On-demand view '{self.name}' failed: {type(exc).__name__}: {exc}. Fix its function and apply again."
            ) from exc
        missing = [f for f in self.feature_names if f not in columns]
        wrong = [f for f in self.feature_names if f in columns and len(columns[f]) != rows]
        if missing or wrong:
            raise ValidationError(
                f"On-demand view '{self.name}' must return the columns {list(self.feature_names)} with {rows} "
                f"value(s) each; "
                + (f"{missing} are missing." if missing else f"{wrong} have another length.")
            )
        return {f: columns[f] for f in self.feature_names}


def on_demand_feature_view(
    *,
    sources: Sequence[str],
    schema: Sequence[Field],
    request: Sequence[Field] = (),
    mode: str = "python",
    name: str | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
    owner: str = "",
) -> Callable[[Callable[[Any], Any]], OnDemandFeatureView]:
    """Decorator turning a module-level function into an OnDemandFeatureView named after it."""

    def wrap(function: Callable[[Any], Any]) -> OnDemandFeatureView:
        return OnDemandFeatureView(
            name or function.__name__,
            tuple(sources),
            tuple(schema),
            function,
            tuple(request),
            mode,
            description or (inspect.getdoc(function) or ""),
            tags or {},
            owner,
        )

    return wrap


def function_reference(function: Callable[[Any], Any], view: str) -> dict[str, str]:
    """Where a function lives (module, name) and the hash of its source code."""
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    if not module or "<" in qualname or module.startswith("<") or module == "__main__":
        raise ValidationError(
            f"On-demand view '{view}' uses a function that cannot be imported again ({module}:{qualname}); "
            "define it at the top level of a module or of a .py file of the project."
        )
    return {"module": module, "qualname": qualname, "code_sha256": _code_hash(function, view)}


def load_function(reference: dict[str, str], view: str, search_path: Path | None) -> Callable[[Any], Any]:
    """Import the function an applied view names, refusing one whose code changed since apply."""
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.append(str(search_path))
    try:
        target: Any = importlib.import_module(reference["module"])
        for part in reference["qualname"].split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ValidationError(
            f"On-demand view '{view}' needs {reference['module']}:{reference['qualname']}, which cannot be "
            f"imported ({exc}); run from the project directory or install the module."
        ) from exc
    function = target.function if isinstance(target, OnDemandFeatureView) else target
    if _code_hash(function, view) != reference["code_sha256"]:
        raise ValidationError(
            f"The code of on-demand view '{view}' ({reference['module']}:{reference['qualname']}) changed since "
            "it was applied; run `loopml apply` so training and serving use the same version."
        )
    return function


def _code_hash(function: Callable[[Any], Any], view: str) -> str:
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as exc:
        raise ValidationError(f"The source of on-demand view '{view}' cannot be read: {exc}.") from exc
    return hashlib.sha256(source.encode()).hexdigest()


@dataclass
class FeaturePlan:
    """What to read for a list of feature references: views (with the inputs transformations need, even
    if not asked for) and the transformations to run afterwards."""

    views: list[tuple[FeatureView, list[str]]]
    transforms: list[tuple[OnDemandFeatureView, list[str]]]
    hidden: list[tuple[str, str]]  # (view, feature) read only as a transformation's input

    @property
    def request_fields(self) -> list[str]:
        return list(dict.fromkeys(f.name for odfv, _ in self.transforms for f in odfv.request))


def plan_features(
    refs: Sequence[str], lookup: Callable[[str], FeatureView | OnDemandFeatureView]
) -> FeaturePlan:
    """Resolve 'view:feature' references, where a view may be an on-demand one."""
    views: dict[str, tuple[FeatureView, list[str]]] = {}
    transforms: list[tuple[OnDemandFeatureView, list[str]]] = []
    asked = set(refs)
    hidden = []
    for name, features in group_feature_refs(refs).items():
        view = lookup(name)
        for feature in features:
            view.dtype_of(feature)
        if isinstance(view, OnDemandFeatureView):
            transforms.append((view, features))
            for source_view, source_features in group_feature_refs(view.sources).items():
                base = lookup(source_view)
                if not isinstance(base, FeatureView):
                    raise ValidationError(
                        f"On-demand view '{view.name}' reads '{source_view}', another on-demand view; "
                        "list the feature views that one reads instead."
                    )
                entry = views.setdefault(source_view, (base, []))
                for feature in source_features:
                    if feature not in entry[1]:
                        entry[1].append(feature)
                        if f"{source_view}:{feature}" not in asked:
                            hidden.append((source_view, feature))
        else:
            entry = views.setdefault(name, (view, []))
            entry[1].extend(f for f in features if f not in entry[1])
    return FeaturePlan(list(views.values()), transforms, hidden)


def run_transforms(
    plan: FeaturePlan,
    columns: dict[str, list[Any]],
    request_data: Mapping[str, Sequence[Any]],
    rows: int,
    full_feature_names: bool,
) -> dict[str, list[Any]]:
    """The outputs of every transformation, from feature `columns` (as returned) and request data."""
    outputs: dict[str, list[Any]] = {}
    for odfv, features in plan.transforms:
        missing = [f.name for f in odfv.request if f.name not in request_data]
        if missing:
            raise ValidationError(
                f"On-demand view '{odfv.name}' needs request field(s) {missing}; pass them with the entities."
            )
        inputs = {
            parse_feature_ref(ref)[1]: columns[feature_column(*parse_feature_ref(ref), full_feature_names)]
            for ref in odfv.sources
        }
        inputs.update({f.name: list(request_data[f.name]) for f in odfv.request})
        result = odfv.transform(inputs, rows)
        for feature in features:
            outputs[feature_column(odfv.name, feature, full_feature_names)] = result[feature]
    return outputs


def transform_frame(plan: FeaturePlan, frame: pd.DataFrame, *, full_feature_names: bool) -> pd.DataFrame:
    """A training set (a read of `plan.views`) with the on-demand features added, from its own columns as
    request data, and the inputs nobody asked for removed."""
    if not plan.transforms and not plan.hidden:
        return frame
    columns = {c: frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in frame.columns}
    outputs = run_transforms(plan, columns, columns, len(frame), full_feature_names)
    hidden = [feature_column(view, feature, full_feature_names) for view, feature in plan.hidden]
    return pd.concat([frame.drop(columns=hidden), pd.DataFrame(outputs, index=frame.index)], axis=1)
