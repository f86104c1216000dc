"""OpenAI HTTP schema (chat, completions, images, models, errors) plus the `nvext` extensions.

Requests decode with msgspec.json; constraint failures name the field path (`$.nvext.steps`).
Unknown request fields are ignored (OpenAI clients send many optional ones); known ones are validated.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PositiveInt = Annotated[int, Meta(ge=1)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Seed = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class Req(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of HTTP request bodies."""


class Resp(msgspec.Struct, kw_only=True):
    """Base of HTTP response bodies (None fields are left out)."""


# --- chat -------------------------------------------------------------------------------------------


class TextPart(Req, kw_only=True, tag_field="type", tag="text"):
    text: str


class ImageUrl(Req, kw_only=True):
    url: Annotated[str, Meta(min_length=1)]
    detail: Literal["auto", "low", "high"] = "auto"


class ImageUrlPart(Req, kw_only=True, tag_field="type", tag="image_url"):
    image_url: ImageUrl


ContentPart = TextPart | ImageUrlPart


class ChatMessage(Req, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(Req, kw_only=True):
    include_usage: bool = False


class NvExt(Req, kw_only=True):
    """diffmesh extensions, sent as `nvext` (Dynamo's name, so Dynamo clients carry over)."""

    worker_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None  # route directly to this worker
    steps: PositiveInt | None = None  # dLLM denoising steps
    block_length: PositiveInt | None = None  # dLLM block size in tokens
    threshold: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None  # dLLM parallel-decoding threshold
    remasking: Literal["low_confidence", "random"] | None = None
    cfg_scale: Annotated[float, Meta(ge=0.0, le=100.0)] | None = None
    use_cache: bool | None = None
    ignore_eos: bool = False


Stop = str | Annotated[list[str], Meta(max_length=4)] | None


class ChatCompletionRequest(Req, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1  # one choice per request; fan out on the client side
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Seed | None = None
    user: str | None = None
    nvext: NvExt | None = None


class CompletionRequest(Req, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    prompt: str | Annotated[list[Annotated[int, Meta(ge=0, le=2**31 - 1)]], Meta(min_length=1)]
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Seed | None = None
    echo: bool = False
    user: str | None = None
    nvext: NvExt | None = None


class CompletionTokensDetails(Resp, kw_only=True):
    forward_passes: int | None = None  # diffmesh: model forwards spent (NFE)


class PromptTokensDetails(Resp, kw_only=True):
    cached_tokens: int = 0


class UsageInfo(Resp, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class AssistantMessage(Resp, kw_only=True):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(Resp, kw_only=True):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(Resp, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo | None = None


class Delta(Resp, kw_only=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(Resp, kw_only=True):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(Resp, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None


class CompletionChoice(Resp, kw_only=True):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(Resp, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# --- images -----------------------------------------------------------------------------------------


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
    prompt: Annotated[str, Meta(min_length=1, max_length=32000)]
    model: str | None = None  # None = the only image model, if exactly one is registered
    n: Annotated[int, Meta(ge=1, le=10)] = 1
    size: Annotated[str, Meta(pattern=r"^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$")] = "auto"
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] = "auto"
    response_format: Literal["url", "b64_json"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: Annotated[int, Meta(ge=0, le=100)] | None = None
    background: Literal["transparent", "opaque", "auto"] = "auto"
    moderation: Literal["low", "auto"] = "auto"
    style: Literal["vivid", "natural"] | None = None
    stream: bool = False
    partial_images: Annotated[int, Meta(ge=0, le=3)] = 0
    seed: Seed | None = None  # also accepted inside nvext
    user: str | None = None
    nvext: ImageNvExt | None = None


class ImageEditRequest(Req, kw_only=True):
    """POST /v1/images/edits form fields (multipart); `image` / `image[]` and `mask` are file parts beside them."""

    prompt: Annotated[str, Meta(min_length=1, max_length=32000)]
    model: str | None = None
    n: Annotated[int, Meta(ge=1, le=10)] = 1
    size: Annotated[str, Meta(pattern=r"^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$")] = "auto"
    quality: Literal["standard", "low", "medium", "high", "auto"] = "auto"
    response_format: Literal["url", "b64_json"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: Annotated[int, Meta(ge=0, le=100)] | None = None
    background: Literal["transparent", "opaque", "auto"] = "auto"
    input_fidelity: Literal["high", "low"] | None = None  # high keeps more of the input (a lower strength)
    stream: bool = False
    partial_images: Annotated[int, Meta(ge=0, le=3)] = 0
    seed: Seed | None = None
    user: str | None = None
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


# --- videos -----------------------------------------------------------------------------------------


class VideoNvExt(Req, kw_only=True):
    num_inference_steps: PositiveInt | None = None
    guidance_scale: Annotated[float, Meta(ge=0.0, le=100.0)] | None = None
    negative_prompt: str | None = None
    step_cache: StepCacheChoice | None = None
    worker_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class VideoCreateRequest(Req, kw_only=True):
    """POST /v1/videos (multipart as the openai client sends it, or JSON); num_frames, fps, seed are diffmesh's."""

    prompt: Annotated[str, Meta(min_length=1, max_length=32000)]
    model: str | None = None
    seconds: Annotated[str, Meta(pattern=r"^[0-9]{1,3}(\.[0-9]{1,3})?$")] | None = None  # OpenAI sends "4", "8"
    size: Annotated[str, Meta(pattern=r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$")] | None = None
    num_frames: PositiveInt | None = None
    fps: Annotated[int, Meta(ge=1, le=120)] | None = None
    seed: Seed | None = None
    user: str | None = None
    nvext: VideoNvExt | None = None


class VideoError(Resp, kw_only=True):
    code: str
    message: str
    param: str | None = None


class Video(Resp, kw_only=True):
    """OpenAI's Video object, plus num_frames and fps."""

    id: str
    object: str = "video"
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = 0  # percent
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    error: VideoError | None = None
    model: str
    prompt: str | None = None
    seconds: str
    size: str
    remixed_from_video_id: str | None = None
    num_frames: int = 0
    fps: int = 0


class VideoRecord(msgspec.Struct, kw_only=True):
    """A video job as frontends share it in the `{ns}_videos` JetStream KV bucket (the owner writes it)."""

    video: Video
    worker_id: str = ""
    bus_id: str = ""  # request id on the bus, for Cancel
    key: str | None = None  # the MP4 in the worker's media store
    url: str | None = None


class VideoDeleted(Resp, kw_only=True):
    id: str
    object: str = "video.deleted"
    deleted: bool = True


class VideoList(Resp, kw_only=True):
    object: str = "list"
    data: list[Video] = []
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# --- models and errors ------------------------------------------------------------------------------


class ModelInfo(Resp, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "diffmesh"
    kinds: list[str] = []  # diffmesh: chat, completions, images
    workers: int = 0  # diffmesh: live workers serving it


class ModelList(Resp, kw_only=True):
    object: str = "list"
    data: list[ModelInfo] = []


class ErrorBody(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorEnvelope(msgspec.Struct, kw_only=True):
    error: ErrorBody


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
    "/v1/models": ModelList,
}

json_encoder = msgspec.json.Encoder()
chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
completion_decoder = msgspec.json.Decoder(CompletionRequest)
image_decoder = msgspec.json.Decoder(ImageGenerationRequest)
video_decoder = msgspec.json.Decoder(VideoCreateRequest)
video_record_decoder = msgspec.json.Decoder(VideoRecord)
