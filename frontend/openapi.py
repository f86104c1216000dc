"""/openapi.json generated from the protocol Structs."""

from __future__ import annotations

import msgspec

from protocol.openai import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, ErrorEnvelope, ModelInfo, ModelList
from protocol.openai_images import ImageEditRequest, ImageGenerationRequest, ImagesResponse
from protocol.openai_videos import Video, VideoCreateRequest

REQUEST_TYPES = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/images/generations": ImageGenerationRequest,
    "/v1/images/edits": ImageEditRequest,
    "/v1/videos": VideoCreateRequest,
}
RESPONSE_TYPES = {
    "/v1/chat/completions": ChatCompletion,
    "/v1/completions": Completion,
    "/v1/images/generations": ImagesResponse,
    "/v1/images/edits": ImagesResponse,
    "/v1/videos": Video,
}
ERROR_STATUSES = ("400", "401", "404", "413", "502", "503", "504")
MULTIPART = ("/v1/images/edits", "/v1/videos")  # form fields as the schema says, files beside them


def build_openapi(version: str = "0.1.0") -> dict:
    types = [*REQUEST_TYPES.values(), *RESPONSE_TYPES.values(), ErrorEnvelope, ModelList, ModelInfo]
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
    paths["/v1/models/{model}"] = {"get": {
        "operationId": "v1_models_retrieve",
        "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "one live model", "content": {"application/json": {"schema": refs[ModelInfo]}}},
                      "404": error}}}
    for path in ("/health", "/live", "/ready"):
        paths[path] = {"get": {"operationId": path.strip("/"), "responses": {"200": {"description": "ok"}, "503": {"description": "not ready"}}}}
    paths["/metrics"] = {"get": {"operationId": "metrics", "responses": {"200": {"description": "Prometheus text format"}}}}
    return {"openapi": "3.1.0", "info": {"title": "diffmesh", "version": version}, "paths": paths,
            "components": {"schemas": components}}
