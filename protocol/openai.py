"""OpenAI HTTP schema (chat, completions, models, errors; images in openai_images) plus the `nvext` extensions.

Requests decode with msgspec.json; constraint failures name the field path (`$.nvext.steps`). Request Structs
forbid unknown fields, so a field this schema does not know is a 400 naming it. Fields that only some models
support (tools, response_format json, logit_bias, ...) decode here and are checked against the model card by
frontend/capabilities.py, which also holds the documented list of accepted-but-inert fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from protocol.events import HealthCheck

PositiveInt = Annotated[int, Meta(ge=1)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Seed = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
TokenId = Annotated[int, Meta(ge=0, le=2**31 - 1)]
MAX_CHOICES = 128  # n (times the prompts of a completions request) at most, as OpenAI caps n
Metadata = Annotated[dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]], Meta(max_length=16)]
LogitBias = dict[str, Annotated[float, Meta(ge=-100.0, le=100.0)]]  # token id (as a string) -> bias


class Req(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Base of HTTP request bodies: an unknown field is a validation error naming it."""


class Resp(msgspec.Struct, kw_only=True):
    """Base of HTTP response bodies (None fields are sent as null, UNSET ones are left out)."""


# --- chat -------------------------------------------------------------------------------------------


class TextPart(Req, kw_only=True, tag_field="type", tag="text"):
    text: str
    prompt_cache_breakpoint: Any = None  # accepted: every full KV block is cached anyway


class ImageUrl(Req, kw_only=True):
    url: Annotated[str, Meta(min_length=1)]
    detail: Literal["auto", "low", "high", "original"] = "auto"


class ImageUrlPart(Req, kw_only=True, tag_field="type", tag="image_url"):
    image_url: ImageUrl
    prompt_cache_breakpoint: Any = None


class InputAudioPart(Req, kw_only=True, tag_field="type", tag="input_audio"):
    input_audio: Any
    prompt_cache_breakpoint: Any = None


class FilePart(Req, kw_only=True, tag_field="type", tag="file"):
    file: Any
    prompt_cache_breakpoint: Any = None


class RefusalPart(Req, kw_only=True, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = TextPart | ImageUrlPart | InputAudioPart | FilePart | RefusalPart


class ChatMessage(Req, kw_only=True):
    """One message of any role; which fields a role may carry is checked in frontend/capabilities.py."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # passed to the chat template
    tool_calls: Any = None
    tool_call_id: str | None = None
    function_call: Any = None
    audio: Any = None
    refusal: str | None = None


class StreamOptions(Req, kw_only=True):
    include_usage: bool = False
    include_obfuscation: bool = False  # pad every chunk with a random `obfuscation` string (size side channels)


class ResponseFormatText(Req, kw_only=True, tag_field="type", tag="text"):
    pass


class ResponseFormatJsonObject(Req, kw_only=True, tag_field="type", tag="json_object"):
    pass


class ResponseFormatJsonSchema(Req, kw_only=True, tag_field="type", tag="json_schema"):
    json_schema: dict[str, Any]


ResponseFormat = ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema


class PromptCacheOptions(Req, kw_only=True):
    mode: Literal["implicit", "explicit"] = "implicit"
    ttl: Literal["30m"] = "30m"


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
NumChoices = Annotated[int, Meta(ge=1, le=MAX_CHOICES)]


class TextRequest(Req, kw_only=True):
    """Fields chat and completions share."""

    model: Annotated[str, Meta(min_length=1)]
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    n: NumChoices | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Seed | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    user: str | None = None
    nvext: NvExt | None = None


class ChatCompletionRequest(TextRequest, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    metadata: Metadata | None = None
    safety_identifier: Annotated[str, Meta(max_length=128)] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    store: bool | None = None
    response_format: ResponseFormat | None = None
    modalities: list[Literal["text", "audio", "image"]] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    # no diffmesh model supports these yet; decoded loosely so the 400 can name them
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    moderation: Any = None


TokenIds = Annotated[list[TokenId], Meta(min_length=1)]


class CompletionRequest(TextRequest, kw_only=True):
    # a string, a list of strings, a list of token ids, or a list of token-id lists (checked by the frontend)
    prompt: str | Annotated[list[str | TokenId | TokenIds], Meta(min_length=1)]
    echo: bool | None = False
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    best_of: Annotated[int, Meta(ge=1, le=20)] | None = None
    suffix: str | None = None


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


class TopLogprob(Resp, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(Resp, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(Resp, kw_only=True):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(Resp, kw_only=True):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class AssistantMessage(Resp, kw_only=True):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(Resp, kw_only=True):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(Resp, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo | None = None
    service_tier: str | UnsetType = UNSET  # sent when the request named one


class Delta(Resp, kw_only=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(Resp, kw_only=True):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(Resp, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None
    service_tier: str | UnsetType = UNSET
    obfuscation: str | UnsetType = UNSET  # stream_options.include_obfuscation


class CompletionChoice(Resp, kw_only=True):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(Resp, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    obfuscation: str | UnsetType = UNSET


# --- models and errors ------------------------------------------------------------------------------


class DiffusionDefaults(Resp, kw_only=True):
    """A diffusion LM's per-request defaults (each overridable in `nvext`)."""

    steps: int | None = None  # None: one denoising step per generated token
    block_length: int | None = None
    threshold: float | None = None  # None: a fixed number of tokens per step
    remasking: str = "low_confidence"


class ModelInfo(Resp, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "diffmesh"
    shutdown_date: str | None = None
    kinds: list[str] = []  # diffmesh: chat, completions, images
    workers: int = 0  # diffmesh: live workers serving it
    component: str | None = None  # diffmesh: mocker, dllm, image, ...
    input_modalities: list[str] = []
    output_modalities: list[str] = []
    context_length: int | None = None  # tokens (prompt + completion); None for models without a token context
    features: list[str] = []  # optional request features (protocol.events.KNOWN_FEATURES)
    diffusion: DiffusionDefaults | None = None  # diffusion LMs only
    defaults: dict[str, float | int | str | bool] = {}  # the model card's request defaults
    health_check: HealthCheck | None = None  # diffmesh: a request that exercises the model (POST body at path)


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


json_encoder = msgspec.json.Encoder()
chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
completion_decoder = msgspec.json.Decoder(CompletionRequest)
