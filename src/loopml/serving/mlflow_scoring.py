"""MLflow's scoring protocol (`mlflow models serve`), so MLflow clients move over unchanged.

Requests read as MLflow 3's scoring server reads them: JSON with exactly one of `dataframe_split`,
`dataframe_records`, `instances` or `inputs` (plus optional `params`), or a CSV table; the answer is
`{"predictions": [...]}` with `model.predict`'s output (class labels for a classifier, as MLflow's sklearn
flavor answers) and errors are `{"error_code": ..., "message": ...}`. MLflow's server holds one model, this one
many: `POST /invocations` answers for the only deployed endpoint, or for the one named by `?endpoint=` or the
`X-Loopml-Endpoint` header; `POST /v1/endpoints/{name}/invocations` names it in the path.

loopml additions, all optional: `params.predict_method` ("predict" or "predict_proba"),
`params.return_prediction_ids` (adds `prediction_ids` beside `predictions`, for `/v1/feedback`), the
`X-Loopml-Unit-Id` header (sticky routing), and `X-Loopml-*` response headers naming the version that answered.
"""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from loopml import __version__
from loopml.errors import LoopmlError, NotFoundError, ValidationError, listed, shown
from loopml.serving.bodies import json_response, openapi_body
from loopml.serving.router import Router
from loopml.serving.scoring import Scorer
from loopml.serving.service import PREDICT, PROBA, Columns, PredictionService, status_of

ENDPOINT_HEADER = "X-Loopml-Endpoint"
UNIT_HEADER = "X-Loopml-Unit-Id"
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PREDICT_METHODS = {"predict": PREDICT, "predict_proba": PROBA}
CONTENT_JSON, CONTENT_CSV = "application/json", "text/csv"
# MLflow's error codes (mlflow.protos.databricks_pb2) for the statuses loopml answers with.
ERROR_CODES = {
    400: "BAD_REQUEST",
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "BAD_REQUEST",
    415: "BAD_REQUEST",
    503: "TEMPORARILY_UNAVAILABLE",
}


class DataframeSplit(BaseModel):
    columns: list[str] | None = Field(default=None, description="Column names; omitted: the model's inputs.")
    data: list[list[Any]] = Field(description="One list of values per row.")
    index: list[Any] | None = Field(default=None, description="Row labels (ignored).")


class InvocationRequest(BaseModel):
    """Exactly one of the four input formats, as MLflow's scoring server takes them (documentation only)."""

    dataframe_split: DataframeSplit | None = None
    dataframe_records: list[dict[str, Any]] | None = Field(default=None, description="One object per row.")
    instances: list[Any] | dict[str, Any] | None = Field(
        default=None, description="Rows as objects or as lists in the model's input order, or column lists."
    )
    inputs: list[Any] | dict[str, Any] | None = Field(
        default=None, description="Like `instances`; also one object of scalars for a single row."
    )
    params: dict[str, Any] | None = Field(
        default=None,
        description="Optional: predict_method ('predict' or 'predict_proba'), return_prediction_ids.",
    )


_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            CONTENT_JSON: {
                "schema": openapi_body(InvocationRequest)["requestBody"]["content"]["application/json"][
                    "schema"
                ]
            },
            CONTENT_CSV: {
                "schema": {"type": "string", "description": "A header row, then one row per line."}
            },
        },
    }
}


@dataclass
class Invocation:
    """A parsed scoring request: the request columns, how many rows, and what to return."""

    columns: Columns
    rows: int
    method: str = PREDICT
    return_ids: bool = False


def mlflow_routes(service: PredictionService, router: Router) -> APIRouter:
    api = APIRouter(tags=["mlflow"])

    async def ping() -> Response:
        """200 once every deployed endpoint's models are loaded (MLflow's health check), else 503."""
        if router.ready:
            return json_response({"ready": True})
        return json_response({"ready": False, "error": "Models are still loading or failed to load."}, 503)

    api.get("/ping")(ping)
    api.get("/health")(ping)

    @api.get("/version")
    async def version() -> Response:
        """The server's version, as text (MLflow's server answers with its own)."""
        return Response(__version__, media_type="text/plain")

    @api.post("/invocations", openapi_extra=_OPENAPI)
    async def invocations(
        request: Request,
        endpoint: str | None = Query(default=None, description="The endpoint to score with."),
        header: str | None = Header(default=None, alias=ENDPOINT_HEADER),
        unit_id: str | None = Header(default=None, alias=UNIT_HEADER, max_length=256),
    ) -> Response:
        """Score with MLflow's request format; name the endpoint unless exactly one is deployed."""
        try:
            name = choose_endpoint(router, endpoint, header)
        except LoopmlError as exc:
            return mlflow_error(exc)
        return await _invoke(service, router, name, request, unit_id)

    @api.post("/v1/endpoints/{name}/invocations", openapi_extra=_OPENAPI)
    async def endpoint_invocations(
        name: str,
        request: Request,
        unit_id: str | None = Header(default=None, alias=UNIT_HEADER, max_length=256),
    ) -> Response:
        """Score endpoint `name` with MLflow's request format."""
        return await _invoke(service, router, name, request, unit_id)

    return api


async def _invoke(
    service: PredictionService, router: Router, name: str, request: Request, unit_id: str | None
) -> Response:
    try:
        scorer = _input_scorer(router, name)
        call = parse_invocation(await request.body(), request.headers.get("content-type"), scorer)
        scored, mirror = await service.predict(
            name, call.columns, call.rows, unit_id=unit_id, methods=(call.method,)
        )
    except LoopmlError as exc:
        return mlflow_error(exc)
    answer: dict[str, Any] = {"predictions": scored.outputs[call.method].tolist()}
    if call.return_ids:
        answer["prediction_ids"] = scored.prediction_ids
    response = json_response(answer)
    response.headers.update(
        {
            ENDPOINT_HEADER: scored.endpoint,
            "X-Loopml-Model": scored.model.version.model_name,
            "X-Loopml-Model-Version": str(scored.version),
            "X-Loopml-Route": scored.route,
        }
    )
    if mirror is not None:
        response.background = BackgroundTask(mirror)
    return response


def choose_endpoint(router: Router, query: str | None, header: str | None) -> str:
    """The endpoint a `/invocations` request is for: named by the query or header, or the only one deployed."""
    if query is not None and header is not None and query != header:
        raise ValidationError(
            f"The query names endpoint {shown(query)} but the {ENDPOINT_HEADER} header names {shown(header)}; send one."
        )
    name = query if query is not None else header
    if name is not None:
        return name
    deployed = sorted(router.endpoints)
    if len(deployed) == 1:
        return deployed[0]
    if not deployed:
        raise NotFoundError("No endpoint is deployed in this server; deploy one with `loopml deploy`.")
    raise ValidationError(
        f"{len(deployed)} endpoints are deployed ({deployed}); name one with ?endpoint=NAME, the "
        f"{ENDPOINT_HEADER} header, or POST /v1/endpoints/NAME/invocations."
    )


def mlflow_error(exc: LoopmlError) -> Response:
    """An error in MLflow's shape, with loopml's `error` key beside it."""
    status = 415 if isinstance(exc, _Unsupported) else status_of(exc)
    code = ERROR_CODES.get(status, "INTERNAL_ERROR")
    return json_response({"error_code": code, "message": str(exc), "error": str(exc)}, status)


def _input_scorer(router: Router, name: str) -> Scorer | None:
    """The scorer of the endpoint's primary version: its input order and types read unnamed and CSV rows."""
    primary = router.served(name).table.primary
    return primary.served.scorer if primary is not None and primary.served is not None else None


def parse_invocation(raw: bytes, content_type: str | None, scorer: Scorer | None) -> Invocation:
    """A scoring request's body as request columns (JSON or CSV, as MLflow's server reads them)."""
    mime, charset = _content_type(content_type)
    if charset not in ("utf-8", "utf8"):
        raise _Unsupported(f"Content type charset {shown(charset)} is not supported; send UTF-8.")
    if mime == CONTENT_CSV:
        columns, rows = csv_columns(raw, scorer)
        return Invocation(columns, rows)
    if mime != CONTENT_JSON:
        raise _Unsupported(
            f"Content type {shown(content_type)} is not supported; send {CONTENT_JSON} or {CONTENT_CSV}."
        )
    return json_invocation(_load_json(raw), scorer)


def _content_type(header: str | None) -> tuple[str, str]:
    """The media type and charset; a request without a content type is read as JSON."""
    if not header:
        return CONTENT_JSON, "utf-8"
    mime, *parameters = (part.strip() for part in header.split(";"))
    charset = "utf-8"
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return mime.lower(), charset


def _load_json(raw: bytes) -> Any:
    """The body as JSON. orjson first; what it refuses but Python's json reads (NaN and Infinity, which
    MLflow's Python client writes for missing values) is read the second way."""
    if not raw.strip():
        raise ValidationError(f"The request body is empty; send a JSON object with one of {list(FORMATS)}.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        first = str(exc)
    try:
        return json.loads(raw, parse_int=_int_or_float)
    except RecursionError:
        raise ValidationError("The request body is nested too deeply to be a scoring request.") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise ValidationError(f"The request body is not valid JSON ({first}).") from None


def _int_or_float(text: str) -> int | float:
    """An integer within 64 bits, else a float (as orjson reads it; past a double's range, infinity)."""
    if len(text.lstrip("-")) <= 20:
        value = int(text)
        if -(2**63) <= value < 2**64:
            return value
    return float(text)


def json_invocation(document: Any, scorer: Scorer | None) -> Invocation:
    """A JSON scoring request: exactly one format key, optional params."""
    if not isinstance(document, dict):
        raise ValidationError(
            f"The body must be a JSON object with exactly one of {list(FORMATS)}, got a {_kind(document)}."
        )
    given = [key for key in FORMATS if key in document]
    unknown = [key for key in document if key not in FORMATS and key != "params"]
    if len(given) != 1 or unknown:
        raise ValidationError(
            f"The body must have exactly one of {list(FORMATS)} (and optionally 'params'); it has "
            f"{listed(document)}."
        )
    key = given[0]
    value = document[key]
    if key == "dataframe_split":
        columns, rows = split_columns(value, scorer)
    elif key == "dataframe_records":
        if not isinstance(value, list):
            raise ValidationError(f"'dataframe_records' must be a list of row objects, got a {_kind(value)}.")
        columns, rows = records_columns(value, key)
    else:
        columns, rows = tensor_columns(value, key, scorer)
    return _with_params(Invocation(columns, rows), document.get("params"))


def _with_params(call: Invocation, params: Any) -> Invocation:
    if params is None:
        return call
    if not isinstance(params, dict):
        raise ValidationError(f"'params' must be an object, got a {_kind(params)}.")
    method = params.get("predict_method", "predict")
    if method not in PREDICT_METHODS:
        raise ValidationError(
            f"params.predict_method is {method!r}; use one of {sorted(PREDICT_METHODS)} (or leave it out)."
        )
    ids = params.get("return_prediction_ids", False)
    if not isinstance(ids, bool):
        raise ValidationError(f"params.return_prediction_ids must be true or false, got {ids!r}.")
    call.method, call.return_ids = PREDICT_METHODS[method], ids
    return call


def split_columns(value: Any, scorer: Scorer | None) -> tuple[Columns, int]:
    """`dataframe_split`: {columns, data[, index]} (pandas' 'split' orient)."""
    if not isinstance(value, dict):
        raise ValidationError(
            f"'dataframe_split' must be an object with 'columns' and 'data', got a {_kind(value)}."
        )
    extra = sorted(set(value) - {"columns", "data", "index"})
    if "data" not in value or extra:
        raise ValidationError(
            f"'dataframe_split' must have 'data' and optionally 'columns' and 'index'; it has {listed(value)}."
        )
    names = value.get("columns")
    if names is None:
        names = _input_order(scorer, "dataframe_split without 'columns'")
    names = _column_names(names, "dataframe_split.columns")
    data = value["data"]
    if not isinstance(data, list) or not data:
        raise ValidationError(
            "'dataframe_split.data' must be a non-empty list of rows (each a list of values)."
        )
    if value.get("index") is not None and (
        not isinstance(value["index"], list) or len(value["index"]) != len(data)
    ):
        raise ValidationError(f"'dataframe_split.index' must be a list with one label per row ({len(data)}).")
    return _rows_to_columns(data, names, "dataframe_split.data"), len(data)


def records_columns(records: list[Any], where: str) -> tuple[Columns, int]:
    """Row objects as columns; a field missing from a row is null there (as pandas reads records)."""
    if not records:
        raise ValidationError(f"'{where}' is empty; send at least one row.")
    names: dict[str, None] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValidationError(f"Row {index} of '{where}' must be an object, got a {_kind(record)}.")
        names.update(dict.fromkeys(record))
    columns = {name: [record.get(name) for record in records] for name in names}
    return columns, len(records)


def tensor_columns(value: Any, where: str, scorer: Scorer | None) -> tuple[Columns, int]:
    """`instances` / `inputs`: row objects, column lists, one row's scalars, or rows as lists in input order."""
    if isinstance(value, dict):
        if not value:
            raise ValidationError(f"'{where}' is empty; send at least one row.")
        lists = [isinstance(v, list) for v in value.values()]
        if all(lists):
            lengths = {len(v) for v in value.values()}
            if len(lengths) != 1 or 0 in lengths:
                raise ValidationError(
                    f"The '{where}' column lists have lengths {sorted(lengths)}; send the same number of "
                    "values (at least one) for every input."
                )
            return {name: list(v) for name, v in value.items()}, lengths.pop()
        if any(lists):
            mixed = sorted(name for name, is_list in zip(value, lists, strict=True) if not is_list)
            raise ValidationError(
                f"'{where}' mixes lists and single values ({listed(mixed)} are single values); send one list per input, "
                "or one value per input for a single row."
            )
        return {name: [v] for name, v in value.items()}, 1
    if not isinstance(value, list):
        raise ValidationError(
            f"'{where}' must be a list of rows or an object of column lists, got a {_kind(value)}."
        )
    if not value:
        raise ValidationError(f"'{where}' is empty; send at least one row.")
    if all(isinstance(row, dict) for row in value):
        return records_columns(value, where)
    if all(isinstance(row, list) for row in value):
        names = _input_order(scorer, f"'{where}' as lists of values")
        return _rows_to_columns(value, names, where), len(value)
    if not any(isinstance(row, list | dict) for row in value):
        names = _input_order(scorer, f"'{where}' as a list of values")
        if len(names) != 1:
            raise ValidationError(
                f"'{where}' is a flat list of values, which fits a model of one input; this model takes "
                f"{names}: send one list (or object) per row."
            )
        return {names[0]: list(value)}, len(value)
    raise ValidationError(
        f"'{where}' mixes kinds of rows; send every row as an object, or every row as a list."
    )


def csv_columns(raw: bytes, scorer: Scorer | None) -> tuple[Columns, int]:
    """A CSV table (header row first) as columns; the model's text inputs stay text, the rest is inferred."""
    text_inputs = {c.name: str for c in scorer.columns if c.type in ("string", "binary")} if scorer else {}
    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype=text_inputs, encoding="utf-8-sig")  # type: ignore[arg-type]
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:  # UnicodeDecodeError too
        raise ValidationError(f"The CSV body could not be read as a table with a header row: {exc}") from None
    if frame.empty:
        raise ValidationError("The CSV body has no rows; send a header row and at least one row of values.")
    _column_names(list(frame.columns), "the CSV header")
    columns = {str(name): [_cell(v) for v in frame[name].tolist()] for name in frame.columns}
    return columns, len(frame)


def _rows_to_columns(rows: list[Any], names: list[str], where: str) -> Columns:
    columns: Columns = {name: [] for name in names}
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(names):
            raise ValidationError(
                f"Row {index} of '{where}' must be a list of {len(names)} values (for {names}), got "
                f"{shown(row)}."
            )
        for name, cell in zip(names, row, strict=True):
            columns[name].append(cell)
    return columns


def _column_names(names: Any, where: str) -> list[str]:
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValidationError(
            f"{where} must be a non-empty list of column names (strings), got {shown(names)}."
        )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValidationError(f"{where} names {listed(duplicated)} more than once; name each column once.")
    return names


def _input_order(scorer: Scorer | None, what: str) -> list[str]:
    if scorer is None:
        raise ValidationError(
            f"{what} is matched to the model's inputs in order, but the endpoint has no model loaded; name the "
            "columns."
        )
    return scorer.input_names


def _cell(value: Any) -> Any:
    """A CSV cell as JSON would give it: an empty cell is null, an integer past 64 bits a float."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        if abs(value) > sys.float_info.max:
            return math.inf if value > 0 else -math.inf
        return float(value)
    return value


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


class _Unsupported(ValidationError):
    """A content type the scoring routes do not read (answered 415, as MLflow does)."""
