"""POST /v1/chat/completions and /v1/completions: preprocess, route, stream or collect."""

from __future__ import annotations

import time

import numpy as np
from aiohttp import web

from shell.logs import request_id_var
from frontend.errors import decode_body, envelope, error_response
from frontend.limits import check_prompt, check_text
from frontend.registry import ModelEntry
from frontend.state import STATE, AppState, Dispatched, new_request_id, raise_if_error, read_body, serve_request
from protocol.errors import InvalidRequest, MeshError, ModelNotFound
from protocol.openai import (
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, Completion,
    CompletionChoice, CompletionRequest, CompletionTokensDetails, Delta, PromptTokensDetails, UsageInfo, chat_decoder,
    completion_decoder, json_encoder,
)
from protocol.routing import RouteRequest
from protocol.work import Chunk, DiffusionOptions, Final, GenerateRequest, SamplingOptions, Usage

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "completions")


async def _handle(request: web.Request, kind: str) -> web.StreamResponse:
    state = request.app[STATE]
    model = "unknown"
    endpoint = "chat_completions" if kind == "chat" else "completions"
    try:
        body = await read_body(request, state.config.max_body_bytes)
        req = decode_body((chat_decoder if kind == "chat" else completion_decoder), body)
        check_text(req, state.config.limits)
        entry = await state.registry.get(req.model)
        model = req.model  # a label only once the model is known: client strings must not grow /metrics
        if kind not in entry.card.kinds:  # not found for this endpoint, as OpenAI answers
            raise ModelNotFound(f"model {req.model!r} does not serve {kind}", param="$.model")
        work = _build_work(req, entry, kind, request_id_var.get())
    except MeshError as exc:
        response = error_response(exc)
        state.metrics.model(model).request_done(endpoint, "unary", str(response.status))
        return response
    return await _serve(request, state, req, work, kind)


def _build_work(req: ChatCompletionRequest | CompletionRequest, entry: ModelEntry, kind: str, request_id: str | None) -> GenerateRequest:
    pre = entry.preprocessor
    tokens = pre.chat_tokens(req.messages) if kind == "chat" else pre.prompt_tokens(req.prompt)
    check_prompt(len(tokens), entry.card.context_length, "$.messages" if kind == "chat" else "$.prompt")
    limit = entry.card.context_length or 2**31
    requested = getattr(req, "max_completion_tokens", None) or req.max_tokens
    max_tokens = requested or min(int(entry.card.defaults.get("max_tokens", 256)), max(limit - len(tokens), 1))
    if len(tokens) + max_tokens > limit:
        raise InvalidRequest(f"prompt ({len(tokens)} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                             f"length {limit}", param="$.max_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    ext = req.nvext
    sampling = SamplingOptions(max_tokens=max_tokens, temperature=req.temperature or 0.0, top_p=req.top_p or 1.0,
                               seed=req.seed, stop=stop, ignore_eos=bool(ext and ext.ignore_eos))
    diffusion = None
    if ext is not None and (ext.steps or ext.block_length or ext.threshold or ext.remasking or ext.cfg_scale or ext.use_cache is not None):
        diffusion = DiffusionOptions(steps=ext.steps, block_length=ext.block_length, threshold=ext.threshold,
                                     remasking=ext.remasking or "low_confidence", cfg_scale=ext.cfg_scale or 0.0,
                                     use_cache=ext.use_cache)
    return GenerateRequest(request_id=new_request_id(request_id or "cmpl"), model=req.model,
                           token_ids=np.ascontiguousarray(tokens).tobytes(), sampling=sampling, diffusion=diffusion,
                           stream=req.stream)


class _Formatter:
    """Builds the OpenAI objects of one response (chat or text completion)."""

    def __init__(self, kind: str, request_id: str, model: str):
        self.kind, self.id, self.model, self.created = kind, request_id, model, int(time.time())
        self.sent_role = False

    def chunk(self, text: str, finish_reason: str | None = None, usage: UsageInfo | None = None, empty: bool = False) -> bytes:
        if self.kind == "chat":
            delta = Delta(content=text if text or not finish_reason else None)
            if not self.sent_role:
                delta, self.sent_role = Delta(role="assistant", content=delta.content), True
            choices = [] if empty else [ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)]
            obj = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        else:
            choices = [] if empty else [CompletionChoice(index=0, text=text, finish_reason=finish_reason)]
            obj = Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return b"data: " + json_encoder.encode(obj) + b"\n\n"

    def whole(self, text: str, finish_reason: str | None, usage: UsageInfo) -> bytes:
        if self.kind == "chat":
            choice = ChatChoice(index=0, message=AssistantMessage(content=text), finish_reason=finish_reason)
            return json_encoder.encode(ChatCompletion(id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage))
        choice = CompletionChoice(index=0, text=text, finish_reason=finish_reason)
        return json_encoder.encode(Completion(id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage))


def usage_info(usage: Usage) -> UsageInfo:
    return UsageInfo(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                     total_tokens=usage.prompt_tokens + usage.completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
                     completion_tokens_details=CompletionTokensDetails(forward_passes=usage.forward_passes or None))


async def _serve(request: web.Request, state: AppState, req, work: GenerateRequest, kind: str) -> web.StreamResponse:
    model = req.model
    state.metrics.model(model).input_tokens.observe(len(work.token_ids) // 4)
    route = RouteRequest(request_id=work.request_id, model=model, token_ids=work.token_ids,
                         worker_id=req.nvext.worker_id if req.nvext else None)
    fmt = _Formatter(kind, work.request_id, model)

    async def respond(dispatched: Dispatched) -> web.StreamResponse:
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await _stream(request, state, dispatched, fmt, include_usage, model)
        return await _collect(state, dispatched, fmt, model)

    endpoint = "chat_completions" if kind == "chat" else "completions"
    return await serve_request(state, route, work, endpoint, req.stream, respond)


async def _collect(state: AppState, d: Dispatched, fmt: _Formatter, model: str) -> web.Response:
    parts: list[str] = []
    reply = d.first
    while not isinstance(reply, Final):
        if isinstance(reply, Chunk):
            parts.append(reply.text)
        reply = raise_if_error(await d.stream.next())
    parts.append(reply.text)
    _count_output(state, model, reply.usage)
    body = fmt.whole("".join(parts), reply.finish_reason, usage_info(reply.usage))
    return web.Response(body=body, content_type="application/json", headers={"x-diffmesh-worker": d.decision.worker_id})


async def _stream(request: web.Request, state: AppState, d: Dispatched, fmt: _Formatter, include_usage: bool, model: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, "x-diffmesh-worker": d.decision.worker_id})
    await response.prepare(request)
    itl = state.metrics.model(model).itl
    reply, last = d.first, None  # the first chunk's latency is TTFT, not an inter-token gap
    try:
        while not isinstance(reply, Final):
            if isinstance(reply, Chunk) and reply.text:
                pieces = reply.pieces or [reply.text]
                await response.write(b"".join(fmt.chunk(piece) for piece in pieces))
                now = time.monotonic()
                if last is not None:
                    itl.observe((now - last) / max(len(reply.token_ids) // 4, 1))
                last = now
            reply = raise_if_error(await d.stream.next())
    except MeshError as exc:  # headers are out: report in-band, as OpenAI clients expect
        await response.write(b"data: " + envelope(exc) + b"\n\n")
        return response
    if reply.text:
        await response.write(fmt.chunk(reply.text))
    await response.write(fmt.chunk("", finish_reason=reply.finish_reason))
    if include_usage:
        await response.write(fmt.chunk("", usage=usage_info(reply.usage), empty=True))
    await response.write(DONE)
    _count_output(state, model, reply.usage)
    return response


def _count_output(state: AppState, model: str, usage: Usage) -> None:
    m = state.metrics.model(model)
    m.output_tokens.observe(usage.completion_tokens)
    m.output_tokens_total.inc(usage.completion_tokens)
    m.cached_tokens.inc(usage.cached_tokens)

