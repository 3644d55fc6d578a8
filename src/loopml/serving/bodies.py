"""Request bodies parsed straight from bytes, and JSON answers written by orjson, for the hot routes.

FastAPI's own body handling (dependency solving, `jsonable_encoder`, thread hops for plain functions) costs
more than a feature read itself; these routes take the raw request and keep their documented schema through
`openapi_body`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
import pydantic
from fastapi.responses import Response

from loopml.errors import ValidationError

Body = TypeVar("Body", bound=pydantic.BaseModel)


def parse_body(model: type[Body], raw: bytes) -> Body:
    """`raw` validated as `model`; a bad body is a ValidationError naming each problem and where."""
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"Invalid request body: {describe_errors(exc.errors())}") from None


def describe_errors(errors: list[Any]) -> str:
    """Pydantic's errors as 'where: what' phrases."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)


def openapi_body(model: type[pydantic.BaseModel], *, required: bool = True) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses `model` itself, with nested models written inline
    (pydantic's `#/$defs/...` references would point nowhere inside the OpenAPI document)."""
    schema = _inline_refs(model.model_json_schema())
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def _inline_refs(schema: dict[str, Any]) -> Any:
    defs = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


def json_bytes(payload: Any) -> bytes:
    """`payload` as JSON; what orjson cannot write (an integer past 64 bits) goes through the json module."""
    try:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return json.dumps(payload, default=str).encode()


def json_response(payload: Any, status_code: int = 200) -> Response:
    return Response(json_bytes(payload), status_code=status_code, media_type="application/json")
