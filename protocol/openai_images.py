"""OpenAI Images API schema (generations request, response, stream events) plus the image `nvext` extensions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from protocol.openai import PositiveInt, Req, Resp, Seed

StepCacheChoice = bool | Literal["deepcache", "first_block", "teacache"]


class ImageNvExt(Req, kw_only=True):
    negative_prompt: str | None = None
    num_inference_steps: PositiveInt | None = None
    guidance_scale: Annotated[float, Meta(ge=0.0, le=100.0)] | None = None
    seed: Seed | None = None
    step_cache: StepCacheChoice | None = None  # true = the model's default cache, or name one
    strength: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None  # edits: how far the input is re-noised
    worker_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class ImageGenerationRequest(Req, kw_only=True):
    """Every optional field also takes null, meaning its default (the openai client sends what it is given)."""

    prompt: Annotated[str, Meta(min_length=1, max_length=32000)]
    model: str | None = None  # None = the only image model, if exactly one is registered
    n: Annotated[int, Meta(ge=1, le=10)] | None = 1
    size: Annotated[str, Meta(pattern=r"^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$")] | None = "auto"
    quality: Literal["standard", "hd", "low", "medium", "high", "xhigh", "max", "auto"] | None = "auto"
    response_format: Literal["url", "b64_json"] | None = "b64_json"
    output_format: Literal["png", "jpeg", "webp", "gif", "svg"] | None = "png"
    output_compression: Annotated[int, Meta(ge=0, le=100)] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = "auto"
    moderation: Literal["low", "auto"] | None = "auto"
    style: Literal["vivid", "natural"] | None = None
    complexity: Literal["low", "medium", "high"] | None = None
    frame_count: Annotated[int, Meta(ge=2, le=16)] | None = None
    frame_duration_ms: Annotated[int, Meta(ge=0)] | None = None
    svg: Any = None
    stream: bool | None = False
    partial_images: Annotated[int, Meta(ge=0, le=3)] | None = 0
    seed: Seed | None = None  # also accepted inside nvext
    user: str | None = None
    safety_identifier: str | None = None  # takes precedence over `user` when non-empty
    nvext: ImageNvExt | None = None


class ImageEditRequest(Req, kw_only=True):
    """POST /v1/images/edits form fields (multipart); the files `image` / `image[]`, `mask` and `markup` come beside
    them. Every optional field also takes null, meaning its default, as for generations."""

    prompt: Annotated[str, Meta(min_length=1, max_length=32000)]
    model: str | None = None
    n: Annotated[int, Meta(ge=1, le=10)] | None = 1
    size: Annotated[str, Meta(pattern=r"^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$")] | None = "auto"
    quality: Literal["standard", "low", "medium", "high", "xhigh", "max", "auto"] | None = "auto"
    response_format: Literal["url", "b64_json"] | None = "b64_json"
    output_format: Literal["png", "jpeg", "webp", "gif", "svg"] | None = "png"
    output_compression: Annotated[int, Meta(ge=0, le=100)] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = "auto"
    input_fidelity: Literal["high", "low"] | None = None  # high keeps more of the input (a lower strength)
    complexity: Literal["low", "medium", "high"] | None = None
    frame_count: Annotated[int, Meta(ge=2, le=16)] | None = None
    frame_duration_ms: Annotated[int, Meta(ge=0)] | None = None
    svg: Any = None
    stream: bool | None = False
    partial_images: Annotated[int, Meta(ge=0, le=3)] | None = 0
    seed: Seed | None = None  # also accepted inside nvext
    user: str | None = None
    safety_identifier: str | None = None
    nvext: ImageNvExt | None = None


class ImageData(Resp, kw_only=True):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImageUsage(Resp, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class ImagesResponse(Resp, kw_only=True):
    created: int
    data: list[ImageData]
    background: str | None = None
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    usage: ImageUsage | None = None


class ImagePartialEvent(Resp, kw_only=True, tag_field="type", tag="image_generation.partial_image"):
    b64_json: str
    created_at: int
    partial_image_index: int
    output_format: str
    size: str
    quality: str
    background: str


class ImageCompletedEvent(Resp, kw_only=True, tag_field="type", tag="image_generation.completed"):
    b64_json: str
    created_at: int
    output_format: str
    size: str
    quality: str
    background: str
    usage: ImageUsage | None = None


class ImageEditPartialEvent(ImagePartialEvent, kw_only=True, tag="image_edit.partial_image"):
    """Same fields as the generation event; `type` says it is an edit."""


class ImageEditCompletedEvent(ImageCompletedEvent, kw_only=True, tag="image_edit.completed"):
    """Same fields as the generation event; `type` says it is an edit."""


image_decoder = msgspec.json.Decoder(ImageGenerationRequest)
