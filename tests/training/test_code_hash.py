"""The code hash: what changes it (a helper's body, a constant it reads) and what does not (formatting)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from loopml.training.code_hash import code_hash, code_parts

_fresh = itertools.count()

HELPERS = """
import json

SCALE = 2
LABELS = ("a", "b")


def inner(x):
    return x * SCALE


def clean(x):
    return inner(x) + 1


def unrelated():
    return 5


def ping(n):
    return 0 if n <= 0 else pong(n - 1)


def pong(n):
    return ping(n)


class Model:
    def fit(self, x):
        return x + 1


def dumped(x):
    return json.dumps(x)
"""

PIPE = """
import numpy as np

import lm_hash_helpers
from lm_hash_helpers import Model, inner, ping


def by_attribute(x):
    return lm_hash_helpers.clean(x)


def by_name(x):
    return inner(x)


def recursive(x):
    return ping(x)


def with_class(x):
    return Model().fit(x)


def library_only(x):
    return float(np.mean(x))


def in_set(x):
    return x in {"alpha", "beta", "gamma", "delta"}


def with_closure():
    helper = lm_hash_helpers.clean

    def run(x):
        return helper(x)

    return run
"""


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Callable[..., ModuleType]]:
    """Write the helper and pipeline modules into tmp_path and import the pipeline afresh each time."""
    sys.path.insert(0, str(tmp_path))

    def load_files(helpers: str = HELPERS, pipe: str = PIPE) -> ModuleType:
        (tmp_path / "lm_hash_helpers.py").write_text(textwrap.dedent(helpers))
        (tmp_path / "lm_hash_pipe.py").write_text(textwrap.dedent(pipe))
        sys.modules.pop("lm_hash_helpers", None)
        spec = importlib.util.spec_from_file_location(
            f"lm_hash_pipe_{next(_fresh)}", tmp_path / "lm_hash_pipe.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield load_files
    sys.path.remove(str(tmp_path))
    sys.modules.pop("lm_hash_helpers", None)


def hashes(module: ModuleType, root: Path) -> dict[str, str]:
    names = ["by_attribute", "by_name", "recursive", "with_class", "library_only", "in_set"]
    found = {name: code_hash(getattr(module, name), root) for name in names}
    found["closure"] = code_hash(module.with_closure(), root)
    return found


def test_nothing_changed_means_the_same_hash(load: Callable[..., ModuleType], tmp_path: Path) -> None:
    assert hashes(load(), tmp_path) == hashes(load(), tmp_path)


def test_comments_docstrings_blank_lines_and_formatting_do_not_count(
    load: Callable[..., ModuleType], tmp_path: Path
) -> None:
    before = hashes(load(), tmp_path)
    reformatted = HELPERS.replace(
        "def inner(x):\n    return x * SCALE",
        'def inner(x):\n    """Scale x."""\n\n    # the factor lives in SCALE\n    return (x  *  SCALE)  # why not',
    )
    pipe = PIPE.replace("def by_name(x):\n", "def by_name(x):  # a comment\n    'A docstring.'\n\n")
    assert hashes(load(reformatted, pipe), tmp_path) == before


def test_a_helper_body_change_reaches_every_caller_and_no_one_else(
    load: Callable[..., ModuleType], tmp_path: Path
) -> None:
    before = hashes(load(), tmp_path)
    after = hashes(load(HELPERS.replace("return inner(x) + 1", "return inner(x) + 2")), tmp_path)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"by_attribute", "closure"}  # clean() is called through the module and a closure


def test_a_change_deep_down_reaches_callers_through_other_helpers(
    load: Callable[..., ModuleType], tmp_path: Path
) -> None:
    before = hashes(load(), tmp_path)
    after = hashes(load(HELPERS.replace("return x * SCALE", "return x * SCALE * 1")), tmp_path)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"by_attribute", "by_name", "closure"}  # inner() directly, and through clean()


def test_a_constant_read_by_a_helper_counts_by_value(load: Callable[..., ModuleType], tmp_path: Path) -> None:
    before = hashes(load(), tmp_path)
    after = hashes(load(HELPERS.replace("SCALE = 2", "SCALE = 3")), tmp_path)
    assert {name for name in before if before[name] != after[name]} == {"by_attribute", "by_name", "closure"}
    unchanged = hashes(load(HELPERS.replace('LABELS = ("a", "b")', 'LABELS = ("a", "c")')), tmp_path)
    assert unchanged == before  # nobody reads LABELS


def test_unrelated_functions_classes_and_recursion(load: Callable[..., ModuleType], tmp_path: Path) -> None:
    before = hashes(load(), tmp_path)
    after = hashes(load(HELPERS.replace("return 5", "return 6")), tmp_path)
    assert after == before
    changed = hashes(load(HELPERS.replace("return ping(n)", "return ping(n - 1)")), tmp_path)
    assert {n for n in before if before[n] != changed[n]} == {"recursive"}
    method = hashes(
        load(HELPERS.replace("return x + 1\n\n\ndef dumped", "return x + 2\n\n\ndef dumped")), tmp_path
    )
    assert {n for n in before if before[n] != method[n]} == {"with_class"}


def test_only_local_code_is_followed(load: Callable[..., ModuleType], tmp_path: Path) -> None:
    module = load()
    assert set(code_parts(module.library_only, tmp_path)) == {"lm_hash_pipe.py:library_only"}
    assert set(code_parts(module.by_attribute, tmp_path)) == {
        "lm_hash_pipe.py:by_attribute",
        "lm_hash_helpers.py:clean",
        "lm_hash_helpers.py:inner",
        "lm_hash_helpers.py:SCALE",
    }
    # json.dumps is standard library: dumped() is hashed, json is not
    assert set(code_parts(sys.modules["lm_hash_helpers"].dumped, tmp_path)) == {"lm_hash_helpers.py:dumped"}
    # under another root nothing but the function itself counts
    assert set(code_parts(module.by_attribute, tmp_path / "elsewhere")) == {"lm_hash_pipe.py:by_attribute"}


def test_the_hash_is_the_same_in_every_process(load: Callable[..., ModuleType], tmp_path: Path) -> None:
    """Set constants are ordered by the string hash seed; the code hash must not be."""
    expected = hashes(load(), tmp_path)["in_set"]
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.path.insert(0, {str(tmp_path)!r})
        spec = importlib.util.spec_from_file_location("ch", {str(Path(code_hash.__code__.co_filename))!r})
        ch = importlib.util.module_from_spec(spec); spec.loader.exec_module(ch)
        pipe = importlib.util.spec_from_file_location("p", {str(tmp_path / "lm_hash_pipe.py")!r})
        module = importlib.util.module_from_spec(pipe); pipe.loader.exec_module(module)
        from pathlib import Path
        print(ch.code_hash(module.in_set, Path({str(tmp_path)!r})))
        """
    )
    for seed in ("1", "2"):
        found = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        assert found == expected


def test_lambdas_and_closures_sharing_a_name_are_each_hashed(
    load: Callable[..., ModuleType], tmp_path: Path
) -> None:
    helpers = HELPERS + textwrap.dedent(
        """
        first = lambda x: x + 1
        second = lambda x: x - 1

        def make(k):
            def scaled(x):
                return x * k
            return scaled

        double = make(2)
        triple = make(3)
        """
    )
    pipe = PIPE + textwrap.dedent(
        """
        def uses_lambdas(x):
            return lm_hash_helpers.first(x) + lm_hash_helpers.second(x)

        def uses_factories(x):
            return lm_hash_helpers.double(x) + lm_hash_helpers.triple(x)
        """
    )

    def steps(helpers_source: str) -> tuple[str, str]:
        module = load(helpers_source, pipe)
        return code_hash(module.uses_lambdas, tmp_path), code_hash(module.uses_factories, tmp_path)

    lambdas, factories = steps(helpers)
    assert steps(helpers.replace("x - 1", "x - 100"))[0] != lambdas  # the second lambda counts too
    assert steps(helpers.replace("make(3)", "make(4)"))[1] != factories  # so does the second closure
    assert steps(helpers) == (lambdas, factories)
