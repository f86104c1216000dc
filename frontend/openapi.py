"""/openapi.json generated from the protocol Structs."""

from __future__ import annotations

import msgspec

from protocol.openai import REQUEST_TYPES, RESPONSE_TYPES, ErrorEnvelope, ModelList

ERROR_STATUSES = ("400", "401", "404", "413", "502", "503", "504")
MULTIPART = ("/v1/images/edits", "/v1/videos")  # form fields as the schema says, files beside them


def build_openapi(version: str = "0.1.0") -> dict:
    types = [*REQUEST_TYPES.values(), *RESPONSE_TYPES.values(), ErrorEnvelope, ModelList]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    refs = dict(zip(types, schemas))
    error = {"description": "OpenAI error envelope", "content": {"application/json": {"schema": refs[ErrorEnvelope]}}}
    paths: dict = {}
    for path, request_type in REQUEST_TYPES.items():
        ok = {"description": "JSON, or an SSE stream when `stream` is true",
              "content": {"application/json": {"schema": refs[RESPONSE_TYPES[path]]}, "text/event-stream": {}}}
        paths[path] = {"post": {
            "operationId": path.strip("/").replace("/", "_"),
            "requestBody": {"required": True, "content": {
                "multipart/form-data" if path in MULTIPART else "application/json": {"schema": refs[request_type]}}},
            "responses": {"200": ok, **{code: error for code in ERROR_STATUSES}},
        }}
    paths["/v1/models"] = {"get": {"operationId": "v1_models", "responses": {
        "200": {"description": "live models", "content": {"application/json": {"schema": refs[ModelList]}}}}}}
    for path in ("/health", "/live", "/ready"):
        paths[path] = {"get": {"operationId": path.strip("/"), "responses": {"200": {"description": "ok"}, "503": {"description": "not ready"}}}}
    paths["/metrics"] = {"get": {"operationId": "metrics", "responses": {"200": {"description": "Prometheus text format"}}}}
    return {"openapi": "3.1.0", "info": {"title": "diffmesh", "version": version}, "paths": paths,
            "components": {"schemas": components}}
