"""/openapi.json generated from the protocol Structs."""

from __future__ import annotations

import msgspec

from protocol.openai import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, ErrorEnvelope, ModelInfo, ModelList
from protocol.openai_images import ImageEditRequest, ImageGenerationRequest, ImagesResponse
from protocol.openai_videos import Video, VideoCreateRequest
from shell.config import RequestLimits

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


def build_openapi(version: str = "0.1.0", limits: RequestLimits | None = None, models: list[str] = ()) -> dict:
    """The API as this frontend serves it: its request limits as maxima, the models served now as examples."""
    types = [*REQUEST_TYPES.values(), *RESPONSE_TYPES.values(), ErrorEnvelope, ModelList, ModelInfo]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    if limits is not None:
        _add_limits(components, limits)
    if models:
        for name in ("ChatCompletionRequest", "CompletionRequest", "ImageGenerationRequest"):
            components[name]["properties"]["model"]["examples"] = sorted(models)
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


def _add_limits(components: dict, limits: RequestLimits) -> None:
    """RequestLimits as JSON Schema maxima (what frontend.limits enforces with a 400)."""
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        props = components[request]["properties"]
        for name in ("max_tokens", "max_completion_tokens"):
            if name in props:
                _maximum(props[name], limits.max_tokens)
    components["ChatCompletionRequest"]["properties"]["messages"]["maxItems"] = limits.max_messages
    _maximum(components["NvExt"]["properties"]["steps"], limits.max_steps)
    _maximum(components["ImageNvExt"]["properties"]["num_inference_steps"], limits.max_image_steps)


def _maximum(schema: dict, maximum: int) -> None:
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "integer":
            option["maximum"] = maximum
