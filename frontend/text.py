"""POST /v1/chat/completions and /v1/completions: validate against the model, plan the choices, stream or collect."""

from __future__ import annotations

import time
from contextlib import aclosing

from aiohttp import web

from frontend.capabilities import check_chat, check_completion
from frontend.errors import decode_body, envelope, error_response
from frontend.limits import check_text_limits
from frontend.logprobs import mean_logprob
from frontend.multimodal import delete_blobs, embed_images
from frontend.registry import ModelEntry
from frontend.state import (
    STATE, AppState, Dispatched, first_error, merged_replies, new_request_id, raise_if_error, read_body, serve_choices,
)
from frontend.textformat import ChoiceResult, Formatter, total_usage
from frontend.textplan import Choice, Plan, build_plan, with_images
from protocol.errors import MeshError, ModelNotFound
from protocol.openai import ChatCompletionRequest, CompletionRequest, chat_decoder, completion_decoder
from protocol.routing import RouteRequest
from protocol.work import Chunk, Final, Usage
from shell.logs import request_id_var

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
        req = decode_body(chat_decoder if kind == "chat" else completion_decoder, body)
        check_text_limits(req, state.config.limits)
        entry = await state.registry.get(req.model)
        model = req.model  # a label only once the model is known: client strings must not grow /metrics
        if kind not in entry.card.kinds:  # not found for this endpoint, as OpenAI answers
            raise ModelNotFound(f"model {req.model!r} does not serve {kind}", param="$.model")
        (check_chat if kind == "chat" else check_completion)(req, entry.card)
        started = time.monotonic()
        plan = build_plan(req, entry, kind, new_request_id(request_id_var.get() or "cmpl"))
        if plan.prompts[0].images:
            prompt = plan.prompts[0]
            plan = with_images(plan, *await embed_images(state, entry, prompt.images, prompt.offsets, plan.request_id,
                                                         len(prompt.tokens) * 4))
    except MeshError as exc:
        response = error_response(exc)
        state.metrics.model(model).request_done(endpoint, "unary", str(response.status))
        return response
    try:
        return await _serve(request, state, req, entry, plan, kind, started)
    finally:
        await delete_blobs(state, plan.choices[0].work)


async def _serve(request: web.Request, state: AppState, req: ChatCompletionRequest | CompletionRequest, entry: ModelEntry,
                 plan: Plan, kind: str, started: float) -> web.StreamResponse:
    model = req.model
    for prompt in plan.prompts:
        state.metrics.model(model).input_tokens.observe(len(prompt.tokens))
    worker_id = req.nvext.worker_id if req.nvext else None
    jobs = [(RouteRequest(request_id=c.work.request_id, model=model, token_ids=c.work.token_ids,
                          mm_objects=c.work.mm_objects, worker_id=worker_id), c.work) for c in plan.choices]
    options = req.stream_options
    fmt = Formatter(kind, plan.request_id, model, plan, entry.preprocessor.tokenizer,
                    service_tier=getattr(req, "service_tier", None), obfuscate=bool(options and options.include_obfuscation))

    async def respond(dispatched: list[Dispatched]) -> web.StreamResponse:
        if req.stream:
            return await _stream(request, state, dispatched, plan, fmt, bool(options and options.include_usage), model)
        return await _collect(state, dispatched, plan, fmt, model)

    endpoint = "chat_completions" if kind == "chat" else "completions"
    return await serve_choices(state, jobs, endpoint, bool(req.stream), respond, started)


def _workers_header(ds: list[Dispatched]) -> dict[str, str]:
    return {"x-diffmesh-worker": ",".join(dict.fromkeys(d.decision.worker_id for d in ds))}


async def _collect(state: AppState, ds: list[Dispatched], plan: Plan, fmt: Formatter, model: str) -> web.Response:
    results = await first_error([_collect_one(d, c) for d, c in zip(ds, plan.choices)])
    for result in results:
        _count_output(state, model, result.usage)
    body = fmt.whole(best_of(plan, results), total_usage(plan, results))
    return web.Response(body=body, content_type="application/json", headers=_workers_header(ds))


async def _collect_one(d: Dispatched, choice: Choice) -> ChoiceResult:
    parts: list[str] = []
    segments = []
    reply = d.first
    while True:
        if isinstance(reply, (Chunk, Final)):
            parts.append(reply.text)
            if reply.logprobs is not None:
                segments.append((reply.token_ids, reply.logprobs))
        if isinstance(reply, Final):
            return ChoiceResult(choice, "".join(parts), reply.finish_reason, reply.usage, segments)
        reply = raise_if_error(await d.stream.next())


def best_of(plan: Plan, results: list[ChoiceResult]) -> list[ChoiceResult]:
    """The n choices per prompt to return: all of them, or (best_of) those of highest mean token log-probability."""
    if plan.per_prompt == plan.num_returned:
        return results
    picked = []
    for p in range(len(plan.prompts)):
        candidates = [r for r in results if r.choice.prompt_index == p]
        candidates.sort(key=lambda r: -mean_logprob([lp for _, lp in r.segments]))  # stable: ties keep sample order
        picked += candidates[: plan.num_returned]
    return picked


async def _stream(request: web.Request, state: AppState, ds: list[Dispatched], plan: Plan, fmt: Formatter,
                  include_usage: bool, model: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, **_workers_header(ds)})
    await response.prepare(request)
    itl = state.metrics.model(model).itl
    results: list[ChoiceResult] = []
    last: dict[int, float] = {}  # per choice; the first chunk's latency is TTFT, not an inter-token gap
    try:
        if plan.echo:
            await response.write(b"".join(fmt.event(c, plan.prompts[c.prompt_index].text) for c in plan.choices))
        async with aclosing(merged_replies(ds)) as replies:  # closed at once: its pumps stop with the response
            async for i, reply in replies:
                choice = plan.choices[i]
                await response.write(_events(fmt, choice, reply))
                if isinstance(reply, Chunk) and reply.text:
                    now = time.monotonic()
                    if i in last:
                        itl.observe((now - last[i]) / max(len(reply.token_ids) // 4, 1))
                    last[i] = now
                elif isinstance(reply, Final):
                    results.append(ChoiceResult(choice, "", reply.finish_reason, reply.usage))
    except MeshError as exc:  # headers are out: report in-band, as OpenAI clients expect
        await response.write(b"data: " + envelope(exc) + b"\n\n")
        return response
    if include_usage:
        await response.write(fmt.usage_event(total_usage(plan, results)))
    await response.write(DONE)
    for result in results:
        _count_output(state, model, result.usage)
    return response


def _events(fmt: Formatter, choice: Choice, reply) -> bytes:
    """The SSE events of one reply: a chunk's pieces (one per token), or one event with its logprobs."""
    if isinstance(reply, Chunk):
        if reply.logprobs is None and reply.pieces:
            return b"".join(fmt.event(choice, piece) for piece in reply.pieces)
        return fmt.event(choice, reply.text, reply.token_ids, reply.logprobs) if reply.text or reply.logprobs else b""
    if isinstance(reply, Final):
        out = fmt.event(choice, reply.text, reply.token_ids, reply.logprobs) if reply.text or reply.logprobs else b""
        return out + fmt.event(choice, "", finish_reason=reply.finish_reason)
    return b""


def _count_output(state: AppState, model: str, usage: Usage) -> None:
    m = state.metrics.model(model)
    m.output_tokens.observe(usage.completion_tokens)
    m.output_tokens_total.inc(usage.completion_tokens)
    m.cached_tokens.inc(usage.cached_tokens)
