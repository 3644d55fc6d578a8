"""The Open Inference Protocol v2 (KServe V2 / Triton HTTP/REST), JSON only.

An OIP "model" is a loopml endpoint (the name clients call) and its versions are the model versions the
endpoint's routes have loaded. Tabular requests come in one of two forms:

- one tensor per column (MLServer's `pd` content type), shape [n] or [n, 1], named after the model's inputs,
  or after the entity keys and request-time inputs, in which case stored features are fetched;
- a single [n, k] tensor whose k columns are the model's inputs in order.

Outputs are `predict` (the model's own predict: class labels for a classifier) and, for classifiers,
`predict_proba` [n, n_classes]. Binary tensors (`Inference-Header-Content-Length`) are refused; a
`binary_data_output` request is answered in JSON, which Triton's client reads as well.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from loopml.errors import NotFoundError, NotReadyError, ValidationError, shown
from loopml.serving.bodies import json_response, openapi_body, parse_body
from loopml.serving.router import READY, UNAVAILABLE, LoadedModel, Router, ServedEndpoint
from loopml.serving.scoring import Scorer, is_number
from loopml.serving.service import PREDICT, PROBA, PredictionService, Scored

BINARY_HEADER = "inference-header-content-length"
EXTENSIONS = ["model_repository", "parameters"]
MAX_UNIT_ID_LENGTH = 256

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]
_INT_RANGES = {
    name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for name, dtype in {
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
    }.items()
}
_FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})
COLUMN_DATATYPES = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
}
Parameters = dict[str, Any]


class RequestInput(BaseModel):
    name: str = Field(min_length=1, description="A model input, entity key or request-time input.")
    shape: list[Annotated[int, Field(ge=0)]] = Field(description="[n] or [n, 1] per column; [n, k] for all.")
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] = Field(description="Row-major values, flat or nested.")


class RequestOutput(BaseModel):
    name: str = Field(description="'predict' or, for classifiers, 'predict_proba'.")
    parameters: Parameters | None = None


class InferRequest(BaseModel):
    """An inference request; `parameters.unit_id` names who it is for (sticky canary/experiment routing)."""

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="All outputs when left out.")


class IndexRequest(BaseModel):
    ready: bool = Field(default=False, description="List only the models ready for inference.")


class RepositoryRequest(BaseModel):
    parameters: Parameters | None = Field(default=None, description="Accepted and ignored.")


def oip_routes(service: PredictionService, router: Router) -> APIRouter:
    import loopml  # the package, fully imported by the time an app is built

    api = APIRouter(prefix="/v2")
    server = {"name": "loopml", "version": loopml.__version__, "extensions": EXTENSIONS}

    @api.get("")
    async def server_metadata() -> dict[str, Any]:
        return server

    @api.get("/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @api.get("/health/ready")
    async def ready() -> Response:
        return json_response({"ready": router.ready}, status_code=200 if router.ready else 503)

    @api.get("/models/{name}")
    async def model_metadata(name: str) -> Response:
        return json_response(metadata(router.served(name), None))

    @api.get("/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str) -> Response:
        return json_response(metadata(router.served(name), version))

    @api.get("/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        return json_response(readiness(router.served(name), None))

    @api.get("/models/{name}/versions/{version}/ready")
    async def version_ready(name: str, version: str) -> Response:
        return json_response(readiness(router.served(name), version))

    async def infer(request: Request, name: str, version: str | None) -> Response:
        if BINARY_HEADER in request.headers:
            raise ValidationError(
                "Binary tensor data (the Inference-Header-Content-Length header) is not supported; send the "
                "request as JSON (tritonclient: InferInput.set_data_from_numpy(..., binary_data=False))."
            )
        body = parse_body(InferRequest, await request.body())
        served = router.served(name)
        model, number = reference_model(served, version)
        methods = requested_methods(body.outputs, model.scorer)
        columns, rows = decode_inputs(body.inputs, model)
        scored, mirror = await service.predict(
            name, columns, rows, unit_id=unit_id_of(body.parameters), methods=methods, version=number
        )
        response = json_response(answer(scored, body.id, methods))
        if mirror is not None:
            response.background = BackgroundTask(mirror)
        return response

    @api.post("/models/{name}/infer", openapi_extra=openapi_body(InferRequest))
    async def model_infer(name: str, request: Request) -> Response:
        """Score the rows of the request's tensors with the route the unit (parameters.unit_id) gets."""
        return await infer(request, name, None)

    @api.post("/models/{name}/versions/{version}/infer", openapi_extra=openapi_body(InferRequest))
    async def version_infer(name: str, version: str, request: Request) -> Response:
        """Score the rows of the request's tensors with one loaded version of the endpoint."""
        return await infer(request, name, version)

    @api.post("/repository/index", openapi_extra=openapi_body(IndexRequest, required=False))
    async def repository_index(request: Request) -> Response:
        """Every endpoint with each loaded version and its state: READY, UNAVAILABLE or UNLOADED."""
        raw = await request.body()
        body = parse_body(IndexRequest, raw) if raw.strip() else IndexRequest()
        return json_response(index(router, ready_only=body.ready))

    @api.post("/repository/models/{name}/load", openapi_extra=openapi_body(RepositoryRequest, required=False))
    async def load(name: str, request: Request) -> Response:
        """Serve an endpoint again after an unload (or reload its routes now)."""
        await _repository_body(request)
        served = await asyncio.to_thread(router.load, name)
        if served.state == UNAVAILABLE:
            raise NotReadyError(
                f"Endpoint '{name}' was loaded but is not ready: {served.reason}; fix or redeploy that route "
                f"(`loopml endpoints show {name}`)."
            )
        return json_response({})

    @api.post(
        "/repository/models/{name}/unload", openapi_extra=openapi_body(RepositoryRequest, required=False)
    )
    async def unload(name: str, request: Request) -> Response:
        """Stop serving an endpoint in this server and free the model versions only it used."""
        await _repository_body(request)
        await asyncio.to_thread(router.unload, name)
        return json_response({})

    return api


async def _repository_body(request: Request) -> None:
    raw = await request.body()
    if raw.strip():
        parse_body(RepositoryRequest, raw)


def loaded_versions(served: ServedEndpoint) -> list[str]:
    return [str(v) for v in served.versions]


def reference_model(served: ServedEndpoint, version: str | None) -> tuple[LoadedModel, int | None]:
    """The model a request is described by: the pinned version, else the primary's; and the pinned number."""
    served.require_loaded()
    if version is None:
        primary = served.table.primary
        if primary is None or primary.served is None:
            raise served.no_model()
        return primary.served, None
    number = int(version) if version.isascii() and version.isdigit() else None
    for model in served.models():
        if model.version.version == number:
            return model, number
    raise NotFoundError(
        f"Endpoint '{served.endpoint.name}' has no version {shown(version)} loaded; loaded versions: "
        f"{loaded_versions(served)}."
    )


def metadata(served: ServedEndpoint, version: str | None) -> dict[str, Any]:
    model, _ = reference_model(served, version)
    scorer = model.scorer
    outputs = [{"name": PREDICT, "datatype": predict_datatype(scorer), "shape": [-1]}]
    if scorer.is_classifier:
        classes = scorer.classes
        outputs.append({"name": PROBA, "datatype": "FP64", "shape": [-1, len(classes) if classes else -1]})
    return {
        "name": served.endpoint.name,
        "versions": loaded_versions(served),
        "platform": f"loopml_{model.version.flavor}",
        "inputs": [
            {"name": column.name, "datatype": COLUMN_DATATYPES.get(column.type, "BYTES"), "shape": [-1]}
            for column in scorer.columns
        ],
        "outputs": outputs,
    }


def readiness(served: ServedEndpoint, version: str | None) -> dict[str, Any]:
    """Ready: the endpoint serves all its routes (with a version: that version is loaded and served)."""
    reference_model(served, version)
    if version is None and served.state != READY:
        name = served.endpoint.name
        raise NotReadyError(
            f"Endpoint '{name}' is not ready: {served.reason}; fix or redeploy that route "
            f"(`loopml endpoints show {name}`)."
        )
    return {"name": served.endpoint.name, "ready": True}


def index(router: Router, *, ready_only: bool) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for name, served in sorted(router.endpoints.items()):
        if ready_only and served.state != READY:
            continue
        head = {"name": name}
        tail = {"state": served.state, "reason": served.reason}
        versions = loaded_versions(served)
        entries += [{**head, "version": v, **tail} for v in versions] or [{**head, **tail}]
    return entries


def requested_methods(outputs: list[RequestOutput] | None, scorer: Scorer) -> tuple[str, ...]:
    """The model methods to run: one per requested output, all of them when none is named (no list, or [])."""
    available = (PREDICT, PROBA) if scorer.is_classifier else (PREDICT,)
    if not outputs:
        return available
    unknown = [output.name for output in outputs if output.name not in available]
    if unknown:
        raise ValidationError(
            f"Unknown output(s) {unknown}; model {scorer.ref} has outputs {list(available)}."
        )
    return tuple(dict.fromkeys(output.name for output in outputs))


def unit_id_of(parameters: Parameters | None) -> str | None:
    value = (parameters or {}).get("unit_id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(f"parameters.unit_id must be a string, got {value!r}.")
    unit = str(value)
    if len(unit) > MAX_UNIT_ID_LENGTH:
        raise ValidationError(
            f"parameters.unit_id is {len(unit)} characters; the limit is {MAX_UNIT_ID_LENGTH}."
        )
    return unit


def decode_inputs(inputs: Sequence[RequestInput], model: LoadedModel) -> tuple[dict[str, list[Any]], int]:
    """Request tensors as columns of Python values and their row count."""
    if len(inputs) == 1 and len(inputs[0].shape) == 2:
        tensor = inputs[0]
        known = {*model.scorer.input_names, *model.join_keys, *model.request_features}
        if tensor.shape[1] != 1 or tensor.name not in known:
            return _matrix_columns(tensor, model.scorer.input_names)
    columns: dict[str, list[Any]] = {}
    rows: dict[str, int] = {}
    for tensor in inputs:
        if tensor.name in columns:
            raise ValidationError(f"Input '{tensor.name}' is sent twice; send each input once.")
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise ValidationError(
                f"Input '{tensor.name}' has shape {tensor.shape}; send one column per input with shape [n] or "
                "[n, 1], or a single [n, k] tensor of all the model's inputs."
            )
        columns[tensor.name] = tensor_values(tensor)
        rows[tensor.name] = tensor.shape[0]
    counts = set(rows.values())
    if len(counts) != 1:
        raise ValidationError(f"The inputs have different row counts {rows}; send the same number of rows.")
    count = counts.pop()
    if count == 0:
        raise ValidationError("The inputs have no rows; send at least one.")
    return columns, count


def _matrix_columns(tensor: RequestInput, names: list[str]) -> tuple[dict[str, list[Any]], int]:
    rows, width = tensor.shape
    if width != len(names):
        raise ValidationError(
            f"Input '{tensor.name}' has {width} columns but the model takes {len(names)} inputs {names}; send "
            "an [n, k] tensor with the inputs in that order, or one tensor per input."
        )
    if rows == 0:
        raise ValidationError(f"Input '{tensor.name}' has no rows; send at least one.")
    values = tensor_values(tensor)
    return {name: values[j::width] for j, name in enumerate(names)}, rows


def tensor_values(tensor: RequestInput) -> list[Any]:
    """The tensor's elements, flat and row-major, checked against its shape and coerced to its datatype."""
    values = _flat(tensor.data)
    size = math.prod(tensor.shape)
    if len(values) != size:
        raise ValidationError(
            f"Input '{tensor.name}' has {len(values)} values but its shape {tensor.shape} needs {size}."
        )
    return _coerce(tensor.name, tensor.datatype, values)


def _flat(data: list[Any]) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _coerce(name: str, datatype: str, values: list[Any]) -> list[Any]:
    """Values as the datatype says (null is passed on; the endpoint's NaN policy decides about it)."""
    if datatype == "BYTES":
        return _checked(name, datatype, values, lambda v: isinstance(v, str), "strings")
    if datatype == "BOOL":
        return _checked(name, datatype, values, lambda v: isinstance(v, bool), "true or false")
    if datatype in _FLOATS:
        _checked(name, datatype, values, is_number, "numbers")
        try:
            return [None if v is None else float(v) for v in values]
        except OverflowError:
            raise ValidationError(
                f"Input '{name}' ({datatype}) has a number too large for a float."
            ) from None
    low, high = _INT_RANGES[datatype]
    _checked(name, datatype, values, _is_integral, "integers")
    coerced = [None if v is None else int(v) for v in values]
    present = [v for v in coerced if v is not None]
    if present and (min(present) < low or max(present) > high):
        bad = next(v for v in present if not low <= v <= high)
        raise ValidationError(f"Input '{name}' ({datatype}) has {bad}, outside [{low}, {high}].")
    return coerced


def _checked(name: str, datatype: str, values: list[Any], ok: Any, what: str) -> list[Any]:
    for index, value in enumerate(values):
        if value is not None and not ok(value):
            raise ValidationError(
                f"Input '{name}' is {datatype} but element {index} is {shown(value)} ({type(value).__name__}); "
                f"send {what}, or declare the datatype that matches the data."
            )
    return values


def _is_integral(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def predict_datatype(scorer: Scorer) -> str:
    if not scorer.is_classifier:
        return "FP64"
    classes = scorer.classes
    return _datatype(np.asarray(classes)) if classes else "BYTES"


def _datatype(array: np.ndarray) -> str:
    return {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64"}.get(array.dtype.kind, "BYTES")


def answer(scored: Scored, request_id: str | None, methods: tuple[str, ...]) -> dict[str, Any]:
    """The inference response: each requested output, the version and route that answered, prediction ids."""
    return {
        "model_name": scored.endpoint,
        "model_version": str(scored.version),
        "id": request_id if request_id is not None else scored.prediction_ids[0],
        "parameters": {"prediction_ids": scored.prediction_ids, "route": scored.route},
        "outputs": [_tensor(method, scored.outputs[method]) for method in methods],
    }


def _tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = _datatype(array)
    if datatype == "BYTES":
        data: Any = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel().tolist()]
    else:
        data = np.ascontiguousarray(array.ravel(), dtype=np.float64 if datatype == "FP64" else None)
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}
