"""OfflineStore: Parquet datasets under a root directory, queried with DuckDB.

A dataset is a folder of Parquet files; writers add files atomically (temporary name, then rename), readers
glob the folder, so appends never block reads and a crash never leaves a half-written file visible.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.errors import ValidationError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./=-]*$")


class OfflineStore:
    """Parquet datasets on local disk, read set-based through DuckDB."""

    def __init__(
        self, root: Path, *, memory_limit: str | None = None, temp_directory: Path | None = None
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.memory_limit = memory_limit
        self.temp_directory = temp_directory

    def dataset_dir(self, name: str) -> Path:
        if not _NAME.match(name) or ".." in name.split("/"):
            raise ValidationError(
                f"Dataset name '{name}' is not allowed; use letters, digits, '_', '-', '.', '=' and '/'."
            )
        return self.root / name

    def glob(self, name: str) -> str:
        """A DuckDB glob over every Parquet file of the dataset, partitions included."""
        return str(self.dataset_dir(name) / "**" / "*.parquet")

    def exists(self, name: str) -> bool:
        directory = self.dataset_dir(name)
        return directory.exists() and any(directory.rglob("*.parquet"))

    def append(self, name: str, data: pd.DataFrame | pa.Table, *, partition: str | None = None) -> Path:
        """Add one Parquet file to a dataset (optionally under a `key=value` partition folder)."""
        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
        directory = self.dataset_dir(name) / partition if partition else self.dataset_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"part-{uuid.uuid4().hex}.parquet"
        temporary = directory / f".{final.name}.tmp"
        pq.write_table(table, temporary)
        temporary.replace(final)
        return final

    def write_file(self, relative_path: str, data: pd.DataFrame | pa.Table | bytes) -> Path:
        """Write one whole Parquet file at a fixed path (snapshots, stored frames), atomically; `bytes` are
        an encoded Parquet file written as they are."""
        final = self.dataset_dir(relative_path)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        if isinstance(data, bytes):
            temporary.write_bytes(data)
        else:
            table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
            pq.write_table(table, temporary)
        temporary.replace(final)
        return final

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A fresh DuckDB connection in UTC, held to the configured memory limit (larger work spills to disk)."""
        return duckdb_connection(self.memory_limit, self.temp_directory)

    def scan(self, name: str) -> str:
        """A DuckDB table expression over every file of the dataset (safe to put into SQL)."""
        return f"read_parquet({sql_string(self.glob(name))}, hive_partitioning=false, union_by_name=true)"

    def read(self, name: str) -> pd.DataFrame:
        """Read a whole dataset into pandas; an absent dataset reads as an empty frame."""
        if not self.exists(name):
            return pd.DataFrame()
        with self.connect() as conn:
            return conn.execute(f"SELECT * FROM {self.scan(name)}").df()


def sql_string(text: str) -> str:
    """`text` as a single-quoted SQL string literal (DuckDB takes file paths only as literals)."""
    return "'" + text.replace("'", "''") + "'"


def quote(name: str) -> str:
    """`name` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def duckdb_connection(
    memory_limit: str | None = None, temp_directory: Path | None = None
) -> duckdb.DuckDBPyConnection:
    """DuckDB with UTC as its zone (naive timestamps in sources read as UTC) and an optional memory limit."""
    conn = duckdb.connect()
    conn.execute("SET TimeZone='UTC'")
    if memory_limit:
        conn.execute(f"SET memory_limit={sql_string(memory_limit)}")
    if temp_directory is not None:
        conn.execute(f"SET temp_directory={sql_string(str(temp_directory))}")
    return conn
