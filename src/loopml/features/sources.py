"""Where a feature view's rows come from: Parquet or CSV files, a DuckDB query, or a pandas DataFrame.

Every source becomes one DuckDB table expression (`source_relation`), so training sets, materialisation and
the skew check read every kind the same way. Paths are relative to the project directory. A DataFrameSource's
frame is written by `Project.apply` as a content-addressed Parquet file in the offline store (see
`frame_store`), and a process checks that file against its recorded sha256 before it first reads it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.errors import ArtifactCorruptedError, NotFoundError, ValidationError
from loopml.features.source_query import check_select, resolve_paths
from loopml.storage.offline import duckdb_connection, sql_string

TIMESTAMP = "timestamp"  # the declared type of a source's event and created time columns
DUCKDB_TYPES = {
    "float64": "DOUBLE",
    "int64": "BIGINT",
    "string": "VARCHAR",
    "bool": "BOOLEAN",
    TIMESTAMP: "TIMESTAMPTZ",
}


@dataclass(frozen=True)
class ParquetSource:
    """Parquet files (a path or glob, relative to the project directory) with an event time column."""

    path: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None

    def __post_init__(self) -> None:
        _check_fields(self, path=self.path)

    @property
    def label(self) -> str:
        return f"Parquet files {self.path!r}"

    def spec(self) -> dict[str, Any]:
        # No "type" key: a Parquet spec stays what it was before other sources existed, and so does its hash.
        return {
            "path": self.path,
            "timestamp_field": self.timestamp_field,
            "created_timestamp_field": self.created_timestamp_field,
        }

    def sql(self, base_dir: Path, types: Mapping[str, str]) -> str:
        """A table expression typed by the files themselves."""
        return f"read_parquet({sql_string(_resolve(self.path, base_dir))}, union_by_name=true)"


@dataclass(frozen=True)
class CsvSource:
    """CSV files with a header row (a path or glob, relative to the project directory).

    The time columns are parsed as timestamps (naive ones read as UTC) and the view's declared feature
    columns are read with their declared types, so the same data gives the same values as in Parquet.
    """

    path: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    delimiter: str = ","

    def __post_init__(self) -> None:
        _check_fields(self, path=self.path, delimiter=self.delimiter)

    @property
    def label(self) -> str:
        return f"CSV files {self.path!r}"

    def spec(self) -> dict[str, Any]:
        return {
            "type": "csv",
            "path": self.path,
            "timestamp_field": self.timestamp_field,
            "created_timestamp_field": self.created_timestamp_field,
            "delimiter": self.delimiter,
        }

    def sql(self, base_dir: Path, types: Mapping[str, str]) -> str:
        """A table expression reading the given columns with the given DuckDB types."""
        typed = ", ".join(f"{sql_string(name)}: {sql_string(kind)}" for name, kind in types.items())
        return (
            f"read_csv({sql_string(_resolve(self.path, base_dir))}, delim={sql_string(self.delimiter)}, "
            "header=true, union_by_name=true" + (f", types={{{typed}}})" if typed else ")")
        )


@dataclass(frozen=True)
class SqlSource:
    """A DuckDB SELECT (or WITH ... SELECT) query whose rows are the view's, read as a subquery.

    Relative file paths in it (`read_parquet('data/x.parquet')`, `FROM 'data/x.csv'`) are read from the
    project directory, whatever the process's working directory.
    """

    query: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None

    def __post_init__(self) -> None:
        _check_fields(self)
        check_select(self.query)

    @property
    def label(self) -> str:
        return f"SQL query {self.query!r}"

    def spec(self) -> dict[str, Any]:
        return {
            "type": "sql",
            "query": self.query,
            "timestamp_field": self.timestamp_field,
            "created_timestamp_field": self.created_timestamp_field,
        }

    def sql(self, base_dir: Path, types: Mapping[str, str]) -> str:
        """The query as a subquery (newlines keep a trailing comment from swallowing the parenthesis)."""
        return f"(\n{resolve_paths(self.query, base_dir)}\n)"


@dataclass(frozen=True)
class DataFrameSource:
    """An in-memory pandas DataFrame, frozen as Parquet when the source is made.

    `Project.apply` stores that Parquet file in the offline store, named by its sha256, and the applied view
    (which other processes read back) records its path, sha256 and row count instead of the frame. Applying
    the same data again changes nothing; different data is a new version of the view.
    """

    frame: pd.DataFrame | None = field(repr=False, compare=False)
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    path: str | None = field(default=None, kw_only=True)
    sha256: str = field(default="", kw_only=True)
    rows: int = field(default=0, kw_only=True)
    data: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.frame is None:
            if not (self.path and self.sha256):
                raise ValidationError("DataFrameSource needs a pandas DataFrame, got None.")
            return
        if not isinstance(self.frame, pd.DataFrame):
            raise ValidationError(
                f"DataFrameSource needs a pandas DataFrame, got {type(self.frame).__name__}."
            )
        times = [c for c in (self.timestamp_field, self.created_timestamp_field) if c]
        missing = [c for c in times if c not in self.frame.columns]
        if missing:
            raise ValidationError(
                f"DataFrameSource frame has no column(s) {missing} "
                f"(it has {list(map(str, self.frame.columns))}); "
                "name its time columns with timestamp_field=... and created_timestamp_field=...."
            )
        data = _parquet_bytes(self.frame)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "sha256", hashlib.sha256(data).hexdigest())
        object.__setattr__(self, "rows", len(self.frame))

    @property
    def label(self) -> str:
        return f"stored DataFrame {self.path!r}" if self.path else "an unstored DataFrame"

    def spec(self) -> dict[str, Any]:
        return {
            "type": "dataframe",
            "path": self._stored_path(),
            "sha256": self.sha256,
            "rows": self.rows,
            "timestamp_field": self.timestamp_field,
            "created_timestamp_field": self.created_timestamp_field,
        }

    def sql(self, base_dir: Path, types: Mapping[str, str]) -> str:
        """The stored Parquet file, after checking it still has the recorded sha256."""
        path = _resolve(self._stored_path(), base_dir)
        verify_stored_file(Path(path), self.sha256)
        return f"read_parquet({sql_string(path)})"

    def _stored_path(self) -> str:
        if not self.path:
            raise ValidationError(
                "This DataFrameSource is not stored yet; apply its feature view with project.apply([...]), "
                "which writes the frame to the offline store."
            )
        return self.path


Source = ParquetSource | CsvSource | SqlSource | DataFrameSource
SOURCE_TYPES = (ParquetSource, CsvSource, SqlSource, DataFrameSource)
_BY_TYPE: dict[str, type[ParquetSource | CsvSource | SqlSource]] = {
    "parquet": ParquetSource,
    "csv": CsvSource,
    "sql": SqlSource,
}


def source_from_spec(spec: Mapping[str, Any]) -> Source:
    """The source a stored spec describes; specs without a `type` were written for Parquet."""
    fields = dict(spec)
    kind = fields.pop("type", "parquet")
    if kind == "dataframe":
        return DataFrameSource(None, **fields)
    if kind not in _BY_TYPE:
        raise ValidationError(
            f"Stored feature source type {kind!r} is not known to this version of loopml; upgrade loopml."
        )
    return _BY_TYPE[kind](**fields)


_checked: set[tuple[str, tuple[str, ...]]] = set()


def source_relation(view: str, source: Source, columns: Mapping[str, str | None], base_dir: Path) -> str:
    """`source` as a DuckDB table expression, with `columns` (name -> declared dtype or None) typed.

    The first time a process reads a source, it checks that the source can be read and has every column in
    `columns`, so a wrong path or name fails with a message saying which view and what to fix.
    """
    bare = source.sql(base_dir, {})
    key = (bare, tuple(columns))
    if key not in _checked:
        _check_columns(view, source, bare, list(columns))
        _checked.add(key)
    return source.sql(base_dir, {name: DUCKDB_TYPES[kind] for name, kind in columns.items() if kind})


_verified: dict[tuple[str, str], tuple[int, int]] = {}  # (file, sha256) -> (size, mtime) when it matched


def verify_stored_file(path: Path, sha256: str) -> None:
    """Refuse a stored frame file that is missing or no longer hashes to `sha256`; checked again only when
    the file's size or modification time changes."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise NotFoundError(
            f"The DataFrame file {path} (sha256 {sha256}) is missing from the offline store; apply the "
            "view with its DataFrameSource again to store it."
        ) from None
    key, seen = (str(path), sha256), (stat.st_size, stat.st_mtime_ns)
    if _verified.get(key) == seen:
        return
    actual = file_sha256(path)
    if actual != sha256:
        raise ArtifactCorruptedError(
            f"The DataFrame file {path} hashes to {actual}, not the recorded {sha256}: it was modified after "
            "it was applied. Refusing to read it; apply the view with its DataFrameSource again to "
            "restore it."
        )
    _verified[key] = seen


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _check_columns(view: str, source: Source, bare: str, columns: list[str]) -> None:
    try:
        with duckdb_connection() as conn:
            found = [row[0] for row in conn.execute(f"DESCRIBE SELECT * FROM {bare}").fetchall()]
    except duckdb.IOException as exc:
        if "No files found" in str(exc):
            raise NotFoundError(
                f"Feature view '{view}' reads {source.label}, which matches no file; write the data there "
                "or fix the path (relative paths start at the project directory)."
            ) from exc
        raise ValidationError(f"Feature view '{view}' cannot read {source.label}: {exc}") from exc
    except duckdb.Error as exc:
        raise ValidationError(f"Feature view '{view}' cannot read {source.label}: {exc}") from exc
    missing = [c for c in columns if c not in found]
    if missing:
        raise ValidationError(
            f"Feature view '{view}' reads column(s) {missing} that {source.label} lacks (it has {found}); "
            "fix the view's join keys, timestamp fields and features, or the source."
        )


def _check_fields(source: Source, **texts: str) -> None:
    kind = type(source).__name__
    texts["timestamp_field"] = source.timestamp_field
    if source.created_timestamp_field is not None:
        texts["created_timestamp_field"] = source.created_timestamp_field
    for name, value in texts.items():
        if not isinstance(value, str) or not value:
            raise ValidationError(f"{kind} {name} must be a non-empty string, got {value!r}.")


def _resolve(path: str, base_dir: Path) -> str:
    resolved = Path(path)
    return (resolved if resolved.is_absolute() else base_dir / resolved).as_posix()


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValidationError(
            f"DataFrameSource cannot store its frame as Parquet: {exc}. Give each column a single type."
        ) from exc
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
