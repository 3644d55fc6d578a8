"""The hash of a step's code: its own and that of every local helper it reaches, plus the constants it reads.

What is hashed is the bytecode (instructions with their names and constants), not the source text: it is
exactly what runs, even when a file was edited after it was imported, and comments, blank lines, formatting,
type annotations and docstrings never reach it. Renaming a local variable or a new Python version changes it,
which costs a re-run, never a stale result.

Helpers are followed through global names (`clean(df)`, `from helpers import clean`), attribute chains on
modules (`helpers.clean(df)`, `pkg.sub.fn`), closures, default values, classes (every method), decorated
functions (`__wrapped__`) and `functools.partial`. A helper counts when it is *local*: defined in a file under
the project directory, outside the standard library and site-packages. Library code is versioned by its
package, not hashed. A local module imported inside a function body is hashed whole. Module-level constants a
local function reads (numbers, strings, tuples, lists, dicts, sets, enums, dataclass instances) count by
value; for any other object only its class's code counts, not its state (a module-level DataFrame or client
is not hashed: produce data in a step instead). Objects reached only at run time (`getattr(module, name)`, a
helper passed in as an argument) cannot be seen; pass such choices as parameters.
"""

from __future__ import annotations

import dataclasses
import dis
import enum
import functools
import hashlib
import importlib.util
import sys
import sysconfig
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

_CHAIN_START = {"LOAD_GLOBAL", "LOAD_NAME"}
_CHAIN_STEP = {"LOAD_ATTR", "LOAD_METHOD"}
_SKIPPED_OPS = {"EXTENDED_ARG", "CACHE", "RESUME", "NOP"}
_MISSING = object()


def code_hash(func: Callable[..., Any], root: Path) -> str:
    """sha256 of `func`'s code and of the local code it reaches (see the module docstring)."""
    parts = code_parts(func, root)
    return hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()


def code_parts(func: Callable[..., Any], root: Path) -> dict[str, str]:
    """What `code_hash` covers: 'file:qualname' (or 'file:NAME' for a constant) → a digest of it."""
    collector = _Collector(root)
    collector.function(func, force=True)
    return collector.parts


class _Collector:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.parts: dict[str, str] = {}
        self.seen: set[int] = set()  # objects visited: guards recursion through mutually calling helpers

    # objects
    def function(self, func: types.FunctionType | Callable[..., Any], *, force: bool = False) -> None:
        wrapped = getattr(func, "__wrapped__", None)
        if wrapped is not None:
            self.value(wrapped, "__wrapped__", None)
        code = getattr(func, "__code__", None)
        if code is None or not (force or self.is_local(code.co_filename)):
            return
        if id(func) in self.seen:
            return
        self.seen.add(id(func))
        key = self.unique_key(code.co_filename, func.__qualname__)
        self.parts[key] = ""
        described = [
            _code(code),
            _stable(getattr(func, "__defaults__", None)),
            _stable(getattr(func, "__kwdefaults__", None)),
        ]
        self.parts[key] = _digest(described)
        self.references(code, func.__globals__, code.co_filename)
        freevars = zip(code.co_freevars, func.__closure__ or (), strict=False)
        for name, cell in freevars:
            try:
                self.value(cell.cell_contents, f"{func.__qualname__}.<{name}>", code.co_filename)
            except ValueError:  # an empty cell: the variable is not bound yet
                continue

    def klass(self, cls: type) -> None:
        file = _class_file(cls)
        if file is None or not self.is_local(file):
            return
        if id(cls) in self.seen:
            return
        self.seen.add(id(cls))
        key = self.unique_key(file, cls.__qualname__)
        self.parts[key] = ""
        described: list[Any] = [[b.__module__ + "." + b.__qualname__ for b in cls.__bases__]]
        for base in cls.__bases__:
            self.klass(base)
        for name, member in vars(cls).items():
            if name in {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"}:
                continue
            if name == "__dataclass_fields__":
                continue
            described.append((name, self.member(member, file)))
        self.parts[key] = _digest(described)

    def member(self, member: Any, file: str) -> Any:
        """One class attribute, described; its code's references are followed."""
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if isinstance(member, property):
            return [self.member(f, file) for f in (member.fget, member.fset, member.fdel) if f is not None]
        if isinstance(member, types.FunctionType):
            self.references(member.__code__, member.__globals__, member.__code__.co_filename)
            return [_code(member.__code__), _stable(member.__defaults__), _stable(member.__kwdefaults__)]
        if isinstance(member, type):
            self.klass(member)
            return member.__qualname__
        stable = _stable(member)
        return stable if stable is not None else type(member).__qualname__

    def value(self, value: Any, label: str, file: str | None) -> None:
        """Whatever a name resolved to: code is followed, simple constants are recorded by value."""
        if isinstance(value, types.MethodType):
            value = value.__func__
        if isinstance(value, functools.partial):
            self.value(value.func, label, file)
            if file is not None and self.is_local(file):
                self.parts[self.key(file, label)] = _digest([_stable(value.args), _stable(value.keywords)])
            return
        if isinstance(value, types.FunctionType):
            self.function(value)
        elif isinstance(value, type):
            self.klass(value)
        elif isinstance(value, types.ModuleType):
            self.module(value)
        elif file is not None:
            described = _stable(value)
            if described is not None:
                self.parts[self.key(file, label)] = described
            elif not isinstance(value, types.BuiltinFunctionType):
                self.klass(type(value))

    def module(self, module: types.ModuleType) -> None:
        file = getattr(module, "__file__", None)
        if file and self.is_local(file):
            self.file(file)

    def file(self, file: str) -> None:
        key = self.key(file, "<module>")
        if key not in self.parts:
            self.parts[key] = hashlib.sha256(Path(file).read_bytes()).hexdigest()

    # bytecode
    def references(self, code: types.CodeType, namespace: dict[str, Any], file: str) -> None:
        """Follow the global names and module attribute chains `code` (and its nested code) loads."""
        chain: list[str] = []
        for instruction in dis.get_instructions(code):
            op = instruction.opname
            if op in _CHAIN_STEP and chain:
                chain.append(instruction.argval)
                continue
            if chain:
                self.chain(chain, namespace, file)
                chain = []
            if op in _CHAIN_START:
                chain = [instruction.argval]
            elif op == "IMPORT_NAME":
                self.imported(instruction.argval)
            elif op == "LOAD_CONST" and isinstance(instruction.argval, types.CodeType):
                self.references(instruction.argval, namespace, file)
        if chain:
            self.chain(chain, namespace, file)

    def chain(self, chain: list[str], namespace: dict[str, Any], file: str) -> None:
        """Resolve `a.b.c` through modules as far as it goes, and describe what it reaches."""
        value = namespace.get(chain[0], _MISSING)
        if value is _MISSING:
            return  # a builtin, or a global defined later
        walked = [chain[0]]
        for attribute in chain[1:]:
            if not isinstance(value, types.ModuleType):
                break
            value = getattr(value, attribute, _MISSING)
            if value is _MISSING:
                return
            walked.append(attribute)
        self.value(value, ".".join(walked), file)

    def imported(self, name: str) -> None:
        """A module imported inside a function: hash its file when it is local."""
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if origin is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                return
            origin = spec.origin if spec is not None else None
        if origin and self.is_local(origin):
            self.file(origin)

    # places
    def is_local(self, file: str | None) -> bool:
        return file is not None and _is_local(file, self.root)

    def unique_key(self, file: str, name: str) -> str:
        """The object's key; objects sharing a qualname (two lambdas, closures of one factory) get #1, #2..."""
        base = key = self.key(file, name)
        number = 0
        while key in self.parts:
            number += 1
            key = f"{base}#{number}"
        return key

    def key(self, file: str, name: str) -> str:
        path = Path(file)
        try:
            where = path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            where = path.name
        return f"{where}:{name}"


@functools.lru_cache(maxsize=4096)
def _is_local(file: str, root: Path) -> bool:
    if file.startswith("<"):
        return False
    path = Path(file).resolve()
    if not path.is_relative_to(root) or {"site-packages", "dist-packages"} & set(path.parts):
        return False
    return not any(path.is_relative_to(system) for system in _system_paths())


@functools.lru_cache(maxsize=1)
def _system_paths() -> tuple[Path, ...]:
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    paths = sysconfig.get_paths()
    return tuple(Path(paths[n]).resolve() for n in names if n in paths)


def _class_file(cls: type) -> str | None:
    module = sys.modules.get(cls.__module__)
    if module is not None and getattr(module, cls.__name__, None) is cls:
        return getattr(module, "__file__", None)
    for member in vars(cls).values():
        func = getattr(member, "__func__", member)
        code = getattr(func, "__code__", None)
        if code is not None and not code.co_filename.startswith("<"):
            return code.co_filename
    return None


def _code(code: types.CodeType) -> list[Any]:
    """Instructions with resolved arguments, nested code included; no line numbers, no docstring slot."""
    described: list[Any] = [
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
    ]
    for instruction in dis.get_instructions(code):
        if instruction.opname in _SKIPPED_OPS:
            continue
        argument = instruction.argval
        if isinstance(argument, types.CodeType):
            described.append((instruction.opname, _code(argument)))
        else:
            stable = _stable(argument)
            described.append((instruction.opname, stable if stable is not None else repr(argument)))
    return described


def _stable(value: Any, depth: int = 0) -> str | None:
    """A repr that is the same in every process (sets sorted), or None for values that are not plain data."""
    if depth > 20:
        return None
    if value is None or isinstance(value, bool | int | float | complex | str | bytes | enum.Enum):
        return repr(value)
    if value is Ellipsis:
        return "..."
    if isinstance(value, tuple | list):
        items = [_stable(v, depth + 1) for v in value]
        return None if None in items else f"{type(value).__name__}({', '.join(items)})"  # type: ignore[arg-type]
    if isinstance(value, set | frozenset):
        items = [_stable(v, depth + 1) for v in value]
        return None if None in items else f"set({', '.join(sorted(items))})"  # type: ignore[arg-type]
    if isinstance(value, dict):
        pairs = [(_stable(k, depth + 1), _stable(v, depth + 1)) for k, v in value.items()]
        if any(k is None or v is None for k, v in pairs):
            return None
        return "dict(" + ", ".join(f"{k}: {v}" for k, v in pairs) + ")"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        inner = _stable(fields, depth + 1)
        return None if inner is None else f"{type(value).__qualname__}{inner}"
    return None


def _digest(described: Any) -> str:
    return hashlib.sha256(repr(described).encode()).hexdigest()
