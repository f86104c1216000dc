"""The one table from mesh errors to HTTP status + OpenAI error envelope."""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from protocol.errors import InvalidRequest, MeshError
from protocol.openai import ErrorBody, ErrorEnvelope, json_encoder

# code -> (HTTP status, OpenAI error type)
HTTP_ERRORS: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "invalid_request_error"),
    "unauthorized": (401, "authentication_error"),
    "model_not_found": (404, "not_found_error"),
    "not_found": (404, "not_found_error"),
    "payload_too_large": (413, "invalid_request_error"),
    "cancelled": (499, "cancelled"),
    "engine_error": (500, "internal_error"),
    "internal_error": (500, "internal_error"),
    "worker_lost": (502, "upstream_error"),
    "overloaded": (503, "service_unavailable"),
    "worker_unavailable": (503, "service_unavailable"),
    "shutting_down": (503, "service_unavailable"),
    "deadline_exceeded": (504, "timeout_error"),
}

_PATH = re.compile(r" - at (?:`key` in )?`(\$[^`]*)`$")
_INT_GOT_FLOAT = re.compile(r"^Expected `[^`]*\bint\b[^`]*`, got `float`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`")


def envelope(exc: MeshError) -> bytes:
    _, kind = HTTP_ERRORS.get(exc.code, (500, "internal_error"))
    body = ErrorBody(message=exc.message, type=kind, param=exc.param, code=exc.code)
    return json_encoder.encode(ErrorEnvelope(error=body))


def error_response(exc: MeshError) -> web.Response:
    status, _ = HTTP_ERRORS.get(exc.code, (500, "internal_error"))
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else None
    return web.Response(status=status, body=envelope(exc), content_type="application/json", headers=headers)


def from_validation(exc: msgspec.DecodeError) -> InvalidRequest:
    """msgspec's message ends with the field path (`... - at `$.size``); surface it as `param`.

    An unknown field is named by its own path (`$.messages[0].foo`): the schema forbids fields it does not know."""
    text = str(exc)
    match = _PATH.search(text)
    path = match.group(1) if match else "$"
    unknown = _UNKNOWN.match(text)
    if unknown:
        param = f"{path}.{unknown.group(1)}"
        return InvalidRequest(f"unknown field `{param}`: diffmesh does not support it", param=param)
    if match:
        return InvalidRequest(text, param=path)
    if isinstance(exc, msgspec.ValidationError):
        return InvalidRequest(text, param="$")
    return InvalidRequest(f"request body is not valid JSON: {text}", param="$")


def decode_body(decoder: msgspec.json.Decoder, body: bytes):
    """A JSON request body as its Struct, else InvalidRequest naming the field.

    JSON Schema (and so /openapi.json) counts 3.0 as an integer; msgspec refuses a float where an int goes, so a body
    with an integral float there is decoded again with those floats as ints."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        if not _INT_GOT_FLOAT.search(str(exc)):
            raise from_validation(exc) from None
    except msgspec.DecodeError as exc:
        raise from_validation(exc) from None
    try:
        return msgspec.convert(_integral_floats_as_ints(msgspec.json.decode(body)), decoder.type)
    except msgspec.ValidationError as exc:
        raise from_validation(exc) from None


def _integral_floats_as_ints(value):
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    return value
