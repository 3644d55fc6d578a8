"""Reading runs back: one run in full, a metric's history, and search by params, metrics, tags and attributes.

A search filter is a small language, like MLflow's:

    metrics.auc > 0.8 and params.model = 'gbm' and tags.team IN ('risk', 'fraud')
    and attributes.status = 'finished' and params.`learning rate` LIKE '0.0%'

Conditions are joined with `and` only. Metrics and time attributes compare with = != < <= > >=; params, tags
and text attributes with = != LIKE ILIKE IN NOT IN (LIKE is case-sensitive on every backend, ILIKE not).
Names holding spaces or other odd characters go in backticks. The filter is parsed into SQLAlchemy Core: one
join per condition on the (key, value) index of run_params, run_tags or run_latest_metrics, so the database
reads only the runs that can match; user values are always bound parameters. On SQLite, whose planner cannot
see bound values, the condition with the fewest candidates (counted on its index first) is read first and the
others are checked by primary key. A page of runs is then loaded with one query per table, never one per run.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Select,
    and_,
    func,
    select,
)

from loopml.clock import as_utc
from loopml.errors import NotFoundError, ValidationError
from loopml.storage.artifact_refs import StoredFile, refs_of
from loopml.storage.metadata import MetadataStore
from loopml.training.tables import run_latest_metrics, run_metrics, run_params, run_tags, runs

MAX_RESULTS = 50_000
MIN_ID_PREFIX = 4
PROBE_LIMIT = 20_000  # counting a condition's candidates stops here: beyond it, any large one will do

# ---------------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """A run with its params, latest metric values and tags.

    `environment` and `artifacts` are loaded by `get_run` only (None in search results, where they would
    cost more than the rest of the page together).
    """

    id: str
    pipeline: str
    status: str
    code_version: dict[str, Any]
    dataset_id: str | None
    started_at: datetime
    ended_at: datetime | None
    params: dict[str, str]
    metrics: dict[str, float]
    name: str | None = None
    parent_run_id: str | None = None
    error: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] | None = None
    artifacts: dict[str, StoredFile] | None = None

    @property
    def duration_seconds(self) -> float | None:
        return None if self.ended_at is None else (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class MetricPoint:
    """One logged value of a metric."""

    step: int
    value: float
    timestamp: datetime


class RunPage(list[Run]):
    """A page of search results; `next_offset` is where the next page starts (None after the last page)."""

    def __init__(self, found: list[Run], next_offset: int | None) -> None:
        super().__init__(found)
        self.next_offset = next_offset


_SUMMARY_COLUMNS = [c for c in runs.c if c.name != "environment"]


def get_run(metadata: MetadataStore, run_id: str) -> Run:
    """The run with params, latest metrics, tags, environment and artifact manifest."""
    with metadata.begin() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise NotFoundError(f"No run with id '{run_id}'; list runs with `loopml runs list`.")
        params, metrics, tags = _details(conn, [run_id])
        artifacts = refs_of(conn, f"run:{run_id}")
    return _run(row._mapping, params, metrics, tags, artifacts=artifacts)


def metric_history(metadata: MetadataStore, run_id: str, key: str) -> list[MetricPoint]:
    """Every value logged for `key` in the run, by step then time of logging (empty if never logged)."""
    with metadata.begin() as conn:
        _require_run(conn, run_id)
        rows = conn.execute(
            select(run_metrics.c.step, run_metrics.c.value, run_metrics.c.ts)
            .where(run_metrics.c.run_id == run_id, run_metrics.c.key == key)
            .order_by(run_metrics.c.step, run_metrics.c.ts, run_metrics.c.id)
        ).all()
    return [MetricPoint(int(step), float(value), ts) for step, value, ts in rows]


def metric_counts(metadata: MetadataStore, run_id: str) -> dict[str, int]:
    """How many values were logged per metric key of the run."""
    with metadata.begin() as conn:
        _require_run(conn, run_id)
        rows = conn.execute(
            select(run_metrics.c.key, func.count())
            .where(run_metrics.c.run_id == run_id)
            .group_by(run_metrics.c.key)
            .order_by(run_metrics.c.key)
        ).all()
    return {key: int(count) for key, count in rows}


def resolve_run_id(metadata: MetadataStore, text: str) -> str:
    """A full run id from itself or from a unique prefix of at least 4 characters (as the CLI shows them)."""
    with metadata.begin() as conn:
        if conn.execute(select(runs.c.id).where(runs.c.id == text)).first() is not None:
            return text
        if len(text) < MIN_ID_PREFIX:
            raise NotFoundError(f"No run with id '{text}'; list runs with `loopml runs list`.")
        found = list(
            conn.execute(
                select(runs.c.id).where(runs.c.id.startswith(text, autoescape=True)).limit(5)
            ).scalars()
        )
    if not found:
        raise NotFoundError(f"No run with id '{text}' (nor one starting with it); see `loopml runs list`.")
    if len(found) > 1:
        raise ValidationError(
            f"Run id prefix '{text}' matches several runs ({', '.join(found[:3])}, ...); give more characters."
        )
    return found[0]


def _require_run(conn: Connection, run_id: str) -> None:
    if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is None:
        raise NotFoundError(f"No run with id '{run_id}'; list runs with `loopml runs list`.")


def _details(
    conn: Connection, run_ids: list[str]
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """Params, latest metrics and tags of these runs: one query per table."""
    params: dict[str, dict[str, str]] = {run_id: {} for run_id in run_ids}
    metrics: dict[str, dict[str, float]] = {run_id: {} for run_id in run_ids}
    tags: dict[str, dict[str, str]] = {run_id: {} for run_id in run_ids}
    for table, into in ((run_params, params), (run_latest_metrics, metrics), (run_tags, tags)):
        query = select(table.c.run_id, table.c.key, table.c.value).where(table.c.run_id.in_(run_ids))
        for run_id, key, value in conn.execute(query.order_by(table.c.run_id, table.c.key)):
            into[run_id][key] = value
    return params, metrics, tags


def _run(
    row: Any,
    params: dict[str, dict[str, str]],
    metrics: dict[str, dict[str, float]],
    tags: dict[str, dict[str, str]],
    artifacts: dict[str, StoredFile] | None = None,
) -> Run:
    run_id = row["id"]
    return Run(
        id=run_id,
        pipeline=row["pipeline"],
        status=row["status"],
        code_version=row["code_version"],
        dataset_id=row["dataset_id"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        params=params[run_id],
        metrics=metrics[run_id],
        name=row["name"],
        parent_run_id=row["parent_run_id"],
        error=row["error"],
        tags=tags[run_id],
        environment=row.get("environment"),
        artifacts=artifacts,
    )


# -------------------------------------------------------------------------------------------------- search


def search_runs(
    metadata: MetadataStore,
    filter: str = "",
    order_by: Sequence[str] = (),
    max_results: int = 100,
    pipeline: str | None = None,
    *,
    offset: int = 0,
) -> RunPage:
    """Runs matching `filter`, sorted by `order_by` (newest first by default), `max_results` from `offset`.

    `order_by` items are `metrics.NAME`, `params.NAME`, `tags.NAME` or `attributes.NAME`, each optionally
    followed by ASC or DESC; runs lacking a metric, param or tag sorted on come last.
    """
    if not 1 <= max_results <= MAX_RESULTS:
        raise ValidationError(f"max_results must be between 1 and {MAX_RESULTS}, got {max_results}.")
    if offset < 0:
        raise ValidationError(f"offset must be 0 or more, got {offset}.")
    with metadata.begin() as conn:
        query = _search_query(conn, filter, order_by, pipeline, max_results + 1, offset)
        ids = list(conn.execute(query).scalars())
        more = len(ids) > max_results
        ids = ids[:max_results]
        if not ids:
            return RunPage([], None)
        rows = {
            row.id: row._mapping for row in conn.execute(select(*_SUMMARY_COLUMNS).where(runs.c.id.in_(ids)))
        }
        params, metrics, tags = _details(conn, ids)
    found = [_run(rows[run_id], params, metrics, tags) for run_id in ids]
    return RunPage(found, offset + max_results if more else None)


def search_plan(
    metadata: MetadataStore,
    filter: str = "",
    order_by: Sequence[str] = (),
    max_results: int = 100,
    pipeline: str | None = None,
) -> list[str]:
    """The database's plan for `search_runs` with these arguments (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on
    PostgreSQL), one line per step: to check that a search uses the indexes."""
    with metadata.begin() as conn:
        compiled = _search_query(conn, filter, order_by, pipeline, max_results + 1, 0).compile(
            dialect=conn.dialect
        )
        if conn.dialect.name == "sqlite":
            values = tuple(compiled.params[name] for name in compiled.positiontup or ())
            return [str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values)]
        return [str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)]


def _search_query(
    conn: Connection, filter: str, order_by: Sequence[str], pipeline: str | None, limit: int, offset: int
) -> Select[Any]:
    dialect = conn.dialect.name
    driver = _smallest_condition(conn, parse_filter(filter), dialect) if dialect == "sqlite" else None
    return build_search_query(
        filter, order_by, pipeline=pipeline, limit=limit, offset=offset, dialect=dialect, driver=driver
    )


def build_search_query(
    filter: str,
    order_by: Sequence[str] = (),
    *,
    pipeline: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    dialect: str = "sqlite",
    driver: int | None = None,
) -> Select[Any]:
    """The SELECT of matching run ids in order (exposed so tests and tools can EXPLAIN it).

    `driver` names the condition (by position) whose runs are read first, as a materialized set that the
    others are then checked against by primary key: SQLite's planner, blind to bound values, may otherwise
    start from the largest candidate set (7x slower at 100k runs).
    """
    conditions = parse_filter(filter)
    orders = [parse_order(text) for text in order_by]
    joined_conditions = [i for i, c in enumerate(conditions) if c.kind != "attributes"]
    # The runs table is read only when an attribute is asked for; otherwise the first condition's run ids
    # are the result (PostgreSQL would otherwise hash-join all of runs).
    needs_runs = (
        pipeline is not None
        or not orders
        or not joined_conditions
        or any(c.kind == "attributes" for c in conditions)
        or any(o.kind == "attributes" for o in orders)
    )
    where: list[ColumnElement[bool]] = []
    if driver is not None:
        first = conditions[driver]
        table = _TABLES[first.kind]
        matching = (
            select(table.c.run_id)
            .where(table.c.key == first.key, _compare(table.c.value, first, dialect))
            .cte("driver")
            .prefix_with("MATERIALIZED")
        )
        source: FromClause = matching
        anchor: Any = matching.c.run_id
    elif needs_runs:
        source, anchor = runs, runs.c.id
    else:
        first = conditions[joined_conditions[0]]
        source = _TABLES[first.kind].alias(f"f{joined_conditions[0]}")
        anchor = source.c.run_id
        where += [source.c.key == first.key, _compare(source.c.value, first, dialect)]
    if needs_runs and source is not runs:
        source = source.join(runs, runs.c.id == anchor)
    filtered_metrics: dict[str, FromClause] = {}
    if driver is None and not needs_runs and conditions[joined_conditions[0]].kind == "metrics":
        filtered_metrics[conditions[joined_conditions[0]].key] = source
    for index, condition in enumerate(conditions):
        if condition.kind == "attributes":
            where.append(_compare(runs.c[condition.key], condition, dialect))
            continue
        if driver is None and not needs_runs and index == joined_conditions[0]:
            continue  # the base of the query: its conditions are in WHERE
        if index == driver and condition.kind != "metrics":
            continue  # the driver set is exactly the runs meeting it (a metric is joined again, for its value)
        joined = _TABLES[condition.kind].alias(f"f{index}")
        source = source.join(
            joined,
            and_(
                joined.c.run_id == anchor,
                joined.c.key == condition.key,
                _compare(joined.c.value, condition, dialect),
            ),
        )
        if condition.kind == "metrics":
            filtered_metrics.setdefault(condition.key, joined)
    sort: list[Any] = []
    for index, order in enumerate(orders):
        if order.kind == "attributes":
            column: Any = runs.c[order.key]
        elif order.kind == "metrics" and order.key in filtered_metrics:
            column = filtered_metrics[order.key].c.value  # inner-joined: every matching run has it
        else:
            joined = _TABLES[order.kind].alias(f"o{index}")
            source = source.outerjoin(joined, and_(joined.c.run_id == anchor, joined.c.key == order.key))
            column = joined.c.value
        sort.append((column.desc() if order.descending else column.asc()).nulls_last())
    if not orders:
        sort.append(runs.c.started_at.desc())
    sort.append(anchor)
    if pipeline is not None:
        where.append(runs.c.pipeline == pipeline)
    query = select(anchor.label("id")).select_from(source).where(*where).order_by(*sort)
    if limit is not None:
        query = query.limit(limit)
    return query.offset(offset) if offset else query


def _smallest_condition(conn: Connection, conditions: list[Condition], dialect: str) -> int | None:
    """The position of the param, tag or metric condition with the fewest candidate runs (when there are two
    or more), counted on the (key, value) indexes alone and capped at PROBE_LIMIT: one cheap query."""
    joined = [i for i, c in enumerate(conditions) if c.kind != "attributes"]
    if len(joined) < 2:
        return None
    counts = []
    for i in joined:
        table, condition = _TABLES[conditions[i].kind], conditions[i]
        candidates = (
            select(table.c.key)
            .where(table.c.key == condition.key, _compare(table.c.value, condition, dialect))
            .limit(PROBE_LIMIT)
            .subquery()
        )
        counts.append(select(func.count()).select_from(candidates).scalar_subquery())
    found = conn.execute(select(*counts)).one()
    return joined[min(range(len(joined)), key=lambda k: found[k])]


_TABLES = {"metrics": run_latest_metrics, "params": run_params, "tags": run_tags}
_ATTRIBUTES = {
    "id": "id",
    "run_id": "id",
    "name": "name",
    "run_name": "name",
    "pipeline": "pipeline",
    "status": "status",
    "parent_run_id": "parent_run_id",
    "dataset_id": "dataset_id",
    "started_at": "started_at",
    "start_time": "started_at",
    "ended_at": "ended_at",
    "end_time": "ended_at",
}
_TIME_ATTRIBUTES = {"started_at", "ended_at"}


_COMPARISONS = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _compare(column: Any, condition: Condition, dialect: str) -> ColumnElement[bool]:
    op, value = condition.op, condition.value
    if op in _COMPARISONS:
        return _COMPARISONS[op](column, value)
    if op == "IN":
        return column.in_(value)
    if op == "NOT IN":
        return column.not_in(value)
    if op == "ILIKE":
        return column.ilike(value)
    if dialect == "sqlite":  # SQLite's LIKE ignores ASCII case; GLOB respects it (and can use the index)
        return column.op("GLOB")(_like_to_glob(value))
    return column.like(value)


def _like_to_glob(pattern: str) -> str:
    """A LIKE pattern as a GLOB pattern: % → *, _ → ?, GLOB's own wildcards taken literally."""
    out = []
    for char in pattern:
        if char == "%":
            out.append("*")
        elif char == "_":
            out.append("?")
        elif char in "*?[":
            out.append(f"[{char}]")
        else:
            out.append(char)
    return "".join(out)


# -------------------------------------------------------------------------------------------------- parser


@dataclass(frozen=True)
class Condition:
    """One `kind.key op value` term of a filter."""

    kind: str  # metrics, params, tags or attributes
    key: str
    op: str
    value: Any


@dataclass(frozen=True)
class Order:
    kind: str
    key: str
    descending: bool


@dataclass(frozen=True)
class _Token:
    kind: str  # name, quoted_name, string, number, op, dot, lparen, rparen, comma, end
    text: str
    value: Any
    position: int


_KINDS = {
    "metric": "metrics",
    "metrics": "metrics",
    "param": "params",
    "params": "params",
    "parameter": "params",
    "parameters": "params",
    "tag": "tags",
    "tags": "tags",
    "attribute": "attributes",
    "attributes": "attributes",
    "attr": "attributes",
    "run": "attributes",
}
_NUMERIC_OPS = ("=", "!=", "<", "<=", ">", ">=")
_TEXT_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN")
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<quoted_name>`[^`]*`)
  | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
  | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
  | (?P<name>[A-Za-z_][\w\-/:]*)
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<dot>\.)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
    """,
    re.VERBOSE,
)


def parse_filter(text: str) -> list[Condition]:
    """The conditions of a filter string (empty for an empty filter); a ValidationError points at the error."""
    parser = _Parser(text, "filter")
    conditions: list[Condition] = []
    if parser.peek().kind == "end":
        return conditions
    while True:
        conditions.append(parser.condition())
        token = parser.next()
        if token.kind == "end":
            return conditions
        if token.kind == "name" and token.text.upper() == "AND":
            continue
        if token.kind == "name" and token.text.upper() == "OR":
            parser.fail(token, "OR is not supported; conditions are joined with AND (run two searches)")
        parser.fail(token, f"expected AND or the end of the filter, got {token.text!r}")


def parse_order(text: str) -> Order:
    """One order_by item: `metrics.auc DESC`, `attributes.started_at`, `params.`my param` ASC`."""
    parser = _Parser(text, "order_by item")
    kind, key = parser.field()
    token = parser.next()
    descending = False
    if token.kind == "name" and token.text.upper() in ("ASC", "DESC"):
        descending = token.text.upper() == "DESC"
        token = parser.next()
    if token.kind != "end":
        parser.fail(token, f"expected ASC, DESC or the end, got {token.text!r}")
    return Order(kind, _ATTRIBUTES.get(key, key) if kind == "attributes" else key, descending)


class _Parser:
    def __init__(self, text: str, what: str) -> None:
        self.text, self.what = text, what
        self.tokens = self._tokenize()
        self.index = 0

    def _tokenize(self) -> list[_Token]:
        tokens, position = [], 0
        while position < len(self.text):
            match = _TOKEN.match(self.text, position)
            if match is None:
                quote = self.text[position] in "'\"`"
                self.fail_at(
                    position,
                    "unterminated string" if quote else f"unexpected character {self.text[position]!r}",
                )
            kind = match.lastgroup
            raw = match.group()
            if kind != "space":
                tokens.append(_Token(kind, raw, _token_value(kind, raw), position))
            position = match.end()
        tokens.append(_Token("end", "end of input", None, len(self.text)))
        return tokens

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def next(self) -> _Token:
        token = self.tokens[self.index]
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def field(self) -> tuple[str, str]:
        """`kind.key` where key may have dots, or be a backticked name."""
        token = self.next()
        if token.kind != "name" or token.text.lower() not in _KINDS:
            self.fail(
                token,
                f"expected metrics.NAME, params.NAME, tags.NAME or attributes.NAME, got {token.text!r}",
            )
        kind = _KINDS[token.text.lower()]
        dot = self.next()
        if dot.kind != "dot":
            self.fail(dot, f"expected '.' and a name after {token.text!r}")
        part = self.next()
        if part.kind == "quoted_name":
            key = part.value
        elif part.kind in ("name", "number"):
            pieces = [part.text]
            while self.peek().kind == "dot":
                self.next()
                piece = self.next()
                if piece.kind not in ("name", "number"):
                    self.fail(piece, "expected a name after '.' (put odd names in backticks)")
                pieces.append(piece.text)
            key = ".".join(pieces)
        else:
            self.fail(
                part, f"expected a name after '{token.text}.', got {part.text!r} (backticks for odd names)"
            )
        if not key:
            self.fail(part, "empty name")
        if kind == "attributes" and key not in _ATTRIBUTES:
            self.fail(
                part, f"unknown attribute {key!r}; known: {', '.join(sorted(set(_ATTRIBUTES.values())))}"
            )
        return kind, key

    def condition(self) -> Condition:
        kind, key = self.field()
        op = self._operator()
        numeric = kind == "metrics" or (kind == "attributes" and _ATTRIBUTES[key] in _TIME_ATTRIBUTES)
        allowed = _NUMERIC_OPS if numeric else _TEXT_OPS
        if op.value not in allowed:
            self.fail(op, f"{kind}.{key} takes {', '.join(allowed)}, not {op.value}")
        if op.value in ("IN", "NOT IN"):
            value: Any = self._list(kind, key)
        else:
            value = self._value(kind, key, self.next())
        return Condition(kind, _ATTRIBUTES.get(key, key) if kind == "attributes" else key, op.value, value)

    def _operator(self) -> _Token:
        token = self.next()
        if token.kind == "op":
            op = {"==": "=", "<>": "!="}.get(token.text, token.text)
            return _Token("op", token.text, op, token.position)
        word = token.text.upper() if token.kind == "name" else ""
        if word in ("LIKE", "ILIKE", "IN"):
            return _Token("op", token.text, word, token.position)
        if word == "NOT" and self.peek().kind == "name" and self.peek().text.upper() == "IN":
            self.next()
            return _Token("op", "NOT IN", "NOT IN", token.position)
        self.fail(
            token, f"expected an operator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN), got {token.text!r}"
        )

    def _list(self, kind: str, key: str) -> list[Any]:
        if (token := self.next()).kind != "lparen":
            self.fail(token, "expected '(' and a list of quoted values after IN")
        values = [self._value(kind, key, self.next())]
        while (token := self.next()).kind == "comma":
            values.append(self._value(kind, key, self.next()))
        if token.kind != "rparen":
            self.fail(token, f"expected ',' or ')' in the IN list, got {token.text!r}")
        return values

    def _value(self, kind: str, key: str, token: _Token) -> Any:
        if kind == "metrics":
            if token.kind != "number":
                self.fail(token, f"metrics.{key} compares with a number, got {token.text!r}")
            return token.value
        if token.kind != "string":
            self.fail(
                token, f"{kind}.{key} compares with a quoted string, e.g. '{token.text}', got {token.text!r}"
            )
        if kind == "attributes" and _ATTRIBUTES[key] in _TIME_ATTRIBUTES:
            try:
                return as_utc(datetime.fromisoformat(token.value))
            except ValueError:
                self.fail(
                    token,
                    f"attributes.{key} compares with an ISO time such as '2026-03-01T12:00', got {token.text}",
                )
        return token.value

    def fail(self, token: _Token, message: str) -> Any:
        self.fail_at(token.position, message)

    def fail_at(self, position: int, message: str) -> Any:
        raise ValidationError(
            f"Cannot parse {self.what} at position {position}: {message}.\n  {self.text}\n  {' ' * position}^"
        )


def _token_value(kind: str, raw: str) -> Any:
    if kind == "number":
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    if kind == "string":
        return raw[1:-1].replace(raw[0] * 2, raw[0])
    if kind == "quoted_name":
        return raw[1:-1]
    return raw
