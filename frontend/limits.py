"""Request limits and admission: what one request may ask for (RequestLimits), and how many a frontend serves at once.

Validation beyond the schema lives here, apart from the OpenAI schema (protocol/openai.py) and the handlers, so each
limit is one check with its field path. A request over a limit is a 400 naming the field; a frontend at
`max_inflight` answers 503 with Retry-After before reading the body, so memory stays bounded under any overload.
"""

from __future__ import annotations

from aiohttp import web

from frontend.errors import error_response
from protocol.errors import InvalidRequest, Overloaded
from protocol.openai import ChatCompletionRequest, CompletionRequest, ImageUrlPart
from protocol.openai_images import ImageGenerationRequest
from shell.config import RequestLimits

RETRY_AFTER_S = 1.0


def _over(value: int | None, limit: int, param: str, what: str) -> None:
    if value is not None and value > limit:
        raise InvalidRequest(f"{what} is {value}; this server allows at most {limit}", param=param)


def check_text_limits(req: ChatCompletionRequest | CompletionRequest, limits: RequestLimits) -> None:
    """Counts a chat or text completion request may not exceed (message count, images, max_tokens, dLLM steps)."""
    _over(req.max_tokens, limits.max_tokens, "$.max_tokens", "max_tokens")
    _over(getattr(req, "max_completion_tokens", None), limits.max_tokens, "$.max_completion_tokens", "max_completion_tokens")
    _over(req.nvext.steps if req.nvext else None, limits.max_steps, "$.nvext.steps", "nvext.steps")
    if isinstance(req, ChatCompletionRequest):
        _over(len(req.messages), limits.max_messages, "$.messages", "the number of messages")
        _check_images(req, limits.max_images)


def _check_images(req: ChatCompletionRequest, limit: int) -> None:
    seen = 0
    for i, message in enumerate(req.messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
            seen += isinstance(part, ImageUrlPart)
            if seen > limit:
                raise InvalidRequest(f"more than {limit} images in one request", param=f"$.messages[{i}].content[{j}]")


def check_prompt(num_tokens: int, context_length: int, param: str) -> None:
    """The prompt alone must leave room for at least one generated token in the model's context."""
    if context_length and num_tokens >= context_length:
        raise InvalidRequest(f"the prompt is {num_tokens} tokens; the model's context length is {context_length}",
                             param=param)


def check_image_limits(req: ImageGenerationRequest, limits: RequestLimits) -> None:
    if req.size and req.size != "auto":
        width, height = (int(v) for v in req.size.split("x"))
        _over(max(width, height), limits.max_image_side, "$.size", "the image side")
    steps = req.nvext.num_inference_steps if req.nvext else None
    _over(steps, limits.max_image_steps, "$.nvext.num_inference_steps", "num_inference_steps")


class Admission:
    """Counts the requests a frontend is serving; past `max_inflight` new ones are turned away."""

    def __init__(self, max_inflight: int):
        self.max_inflight = max_inflight
        self.num_inflight = 0
        self.peak = 0  # high-water mark of num_inflight
        self.num_rejected = 0


def admission_middleware(admission: Admission, on_reject, paths: tuple[str, ...] = ("/v1/chat/", "/v1/completions",
                                                                                   "/v1/images/")):
    """`on_reject(request, response)` counts a turned-away request (metrics)."""

    @web.middleware
    async def admit(request: web.Request, handler):
        if request.method != "POST" or not request.path.startswith(paths):
            return await handler(request)
        if admission.num_inflight >= admission.max_inflight:
            admission.num_rejected += 1
            response = error_response(Overloaded(f"this frontend is serving {admission.num_inflight} requests, its "
                                                 "limit; retry later", retry_after=RETRY_AFTER_S))
            on_reject(request, response)
            return response
        admission.num_inflight += 1
        admission.peak = max(admission.peak, admission.num_inflight)
        try:
            return await handler(request)
        finally:
            admission.num_inflight -= 1

    return admit
