"""A SqlSource's query: checked to be one SELECT, and its relative file paths read from the project directory.

DuckDB resolves a relative path against the process's working directory (its `file_search_path` setting is
only tried after it), so a source query would read different files from the CLI, the server and a notebook.
DuckDB's own parser (`json_serialize_sql`) locates the path literals of file-reading table functions
(`read_parquet('data/x.parquet')`) and of file scans (`FROM 'data/x.csv'`), and each relative one is replaced,
in the query text, by its absolute path under the project directory. The rest of the query is kept as written.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from loopml.errors import ValidationError
from loopml.storage.offline import sql_string

FILE_FUNCTIONS = frozenset(
    {
        "read_parquet",
        "parquet_scan",
        "parquet_metadata",
        "parquet_schema",
        "read_csv",
        "read_csv_auto",
        "sniff_csv",
        "read_json",
        "read_json_auto",
        "read_json_objects",
        "read_ndjson",
        "read_ndjson_auto",
        "read_ndjson_objects",
        "read_text",
        "read_blob",
        "glob",
    }
)
_FILE_SUFFIXES = (".parquet", ".csv", ".tsv", ".json", ".ndjson", ".jsonl", ".gz", ".zst", ".txt")


def query_body(query: str) -> str:
    """The query without surrounding blanks and trailing semicolons, ready to be used as a subquery."""
    return query.strip().rstrip(";").rstrip()


def check_select(query: str) -> None:
    """Refuse anything but one SELECT (or WITH ... SELECT) statement, before it is ever run."""
    if not isinstance(query, str) or not query_body(query):
        raise ValidationError(f"SqlSource needs a DuckDB SELECT query, got {query!r}.")
    statements = _parse(query, "SqlSource query")
    if len(statements) != 1:
        raise ValidationError(
            f"SqlSource query holds {len(statements)} statements; write exactly one SELECT "
            "(or WITH ... SELECT)."
        )
    _parse(f"SELECT * FROM (\n{query_body(query)}\n)", "SqlSource query, used as a subquery,")


@functools.lru_cache(maxsize=256)
def resolve_paths(query: str, base_dir: Path) -> str:
    """The query body with every relative file path it reads made absolute under `base_dir`."""
    body = query_body(query).encode()
    spans = sorted(set(_file_literals(_parse(body.decode(), "SqlSource query"), body)))
    parts, end = [], 0
    for start, stop, path in spans:
        if start < end:  # the same literal reached twice (a CTE used twice): already replaced
            continue
        parts += [body[end:start], sql_string((base_dir / path).as_posix()).encode()]
        end = stop
    parts.append(body[end:])
    return b"".join(parts).decode()


def _parse(query: str, what: str) -> list[dict[str, Any]]:
    with duckdb.connect() as conn:
        parsed = json.loads(conn.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    if parsed.get("error"):
        raise ValidationError(
            f"{what} is not a single DuckDB SELECT ({str(parsed.get('error_message')).rstrip('.!')}): "
            f"{query!r}. Write one SELECT (or WITH ... SELECT) statement."
        )
    return parsed["statements"]


def _file_literals(node: Any, body: bytes) -> Iterator[tuple[int, int, str]]:
    """(start, end, path) byte spans in `body` of the relative file paths the parsed query reads."""
    if isinstance(node, list):
        for item in node:
            yield from _file_literals(item, body)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "TABLE_FUNCTION":
        function = node.get("function") or {}
        arguments = function.get("arguments") or function.get("children") or []
        if str(function.get("function_name", "")).lower() in FILE_FUNCTIONS and arguments:
            first = arguments[0]
            yield from _string_constants(first.get("expression", first), body)
    elif node.get("type") == "BASE_TABLE" and not node.get("schema_name") and not node.get("catalog_name"):
        span = _quoted_at(body, node.get("query_location"))
        if span and _looks_like_file(span[2]) and _relative(span[2]):
            yield span
    for value in node.values():
        yield from _file_literals(value, body)


def _string_constants(expression: dict[str, Any], body: bytes) -> Iterator[tuple[int, int, str]]:
    """Relative path literals of a path argument: one string, or a list of them."""
    if expression.get("class") == "CONSTANT":
        span = _quoted_at(body, expression.get("query_location"), quote=b"'")
        if span and _relative(span[2]):
            yield span
    elif expression.get("class") == "FUNCTION" and expression.get("function_name") == "list_value":
        for argument in expression.get("arguments") or expression.get("children") or []:
            yield from _string_constants(argument.get("expression", argument), body)


def _quoted_at(body: bytes, location: Any, quote: bytes | None = None) -> tuple[int, int, str] | None:
    """The quoted token ('...' or "...") starting at byte `location`, unescaped, with its span."""
    if not isinstance(location, int) or not 0 <= location < len(body):
        return None
    mark = body[location : location + 1]
    if mark not in ((quote,) if quote else (b"'", b'"')):
        return None
    index = location + 1
    while (index := body.find(mark, index)) != -1:
        if body[index + 1 : index + 2] != mark:
            text = body[location + 1 : index].replace(mark + mark, mark).decode()
            return location, index + 1, text
        index += 2
    return None


def _looks_like_file(name: str) -> bool:
    return "/" in name or name.lower().endswith(_FILE_SUFFIXES)


def _relative(path: str) -> bool:
    return bool(path) and "://" not in path and not path.startswith("~") and not Path(path).is_absolute()
