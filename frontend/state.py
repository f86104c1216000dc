"""Per-app objects handlers share, created at startup and passed down (no module globals)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web

from shell.config import FrontendConfig
from shell.metrics import FrontendMetrics
from frontend.bus import ReplyStream, Requester
from frontend.registry import ModelRegistry
from protocol import subjects
from protocol.errors import MeshError, Overloaded, PayloadTooLarge, WorkerLost, WorkerUnavailable, error_from_code
from protocol.routing import RouteDecision, RouteRequest
from frontend.errors import error_response
from protocol.work import Ack, Error, Reply, work_encoder

MAX_MIGRATIONS = 2  # re-sends to other workers before any output reached the client
RETRIABLE = (WorkerUnavailable, WorkerLost, Overloaded)


@dataclass
class AppState:
    config: FrontendConfig
    requester: Requester
    router: object  # RouterService (embedded) or RemoteRouter: route(), on_first_token(), on_finish()
    registry: ModelRegistry
    metrics: FrontendMetrics
    videos: object = None  # frontend.videos.VideoJobs: video job records and the tasks following them


STATE: web.AppKey[AppState] = web.AppKey("diffmesh_state", AppState)


@dataclass
class Dispatched:
    bus_id: str  # request id on the bus (changes on migration)
    decision: RouteDecision
    stream: ReplyStream
    first: Reply | None  # first reply that is not an Ack


def new_request_id(prefix: str) -> str:
    """Unique bus id; `prefix` may be a client's x-request-id, kept for log correlation."""
    return f"{prefix[:40]}-{uuid.uuid4().hex[:16]}"


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds the limit of {limit}")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return body


def raise_if_error(reply: Reply) -> Reply:
    if isinstance(reply, Error):
        raise error_from_code(reply.code, reply.message, param=reply.param, retry_after=reply.retry_after)
    return reply


async def dispatch(state: AppState, route: RouteRequest, payload_for, model: str, timeout_s: float | None = None) -> Dispatched:
    """Route, send and wait for the first reply; migrate to another worker if the chosen one is gone or full."""
    excluded: list[str] = []
    deadline = time.monotonic() + (timeout_s or state.config.request_timeout_s)
    for attempt in range(MAX_MIGRATIONS + 1):
        bus_id = route.request_id if attempt == 0 else f"{route.request_id}-m{attempt}"
        attempt_route = msgspec.structs.replace(route, request_id=bus_id, exclude=excluded)
        decision = await state.router.route(attempt_route)
        state.metrics.router.observe(decision)
        subject = subjects.generate_direct(state.config.namespace, decision.component, decision.worker_id)
        stream = await state.requester.send(subject, bus_id, payload_for(bus_id), decision.worker_id,
                                            max(deadline - time.monotonic(), 0.0))
        try:
            first = await stream.next()
            while isinstance(first, Ack):
                first = await stream.next()
            return Dispatched(bus_id, decision, stream, raise_if_error(first))
        except RETRIABLE as exc:
            state.requester.close(bus_id)
            state.router.on_finish(bus_id)
            if attempt == MAX_MIGRATIONS or route.worker_id is not None:
                raise
            excluded = [*excluded, decision.worker_id]
            state.metrics.migrations.labels(model, "new_request").inc()  # rare: no cached child
            last = exc
        except MeshError:
            state.requester.close(bus_id)
            state.router.on_finish(bus_id)
            raise
        except asyncio.CancelledError:  # the client went away before the first reply
            abandon(state, Dispatched(bus_id, decision, stream, None), model)
            raise
    raise last  # unreachable: the loop either returns or raises


def release(state: AppState, dispatched: Dispatched | None) -> None:
    if dispatched is not None:
        state.requester.close(dispatched.bus_id)
        state.router.on_finish(dispatched.bus_id)


def abandon(state: AppState, dispatched: Dispatched, model: str) -> None:
    """Client disconnected: tell the worker to stop (fire-and-forget; we may be inside a cancelled task)."""
    state.metrics.model(model).disconnected.inc()
    if not dispatched.stream.done:
        asyncio.ensure_future(state.requester.cancel(dispatched.decision.worker_id, dispatched.bus_id))
    release(state, dispatched)



def encode_for(work, bus_id: str) -> bytes:
    """The work request as sent on the bus, renamed to `bus_id` after a migration."""
    if bus_id != work.request_id:
        work = msgspec.structs.replace(work, request_id=bus_id)
    return work_encoder.encode(work)


async def serve_request(state: AppState, route: RouteRequest, work, endpoint: str, is_stream: bool,
                        respond: Callable[[Dispatched], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """One request's lifecycle: dispatch, hand the replies to `respond`, map errors, cancel on disconnect, count."""
    model = route.model
    metrics = state.metrics.model(model)
    started = time.monotonic()
    metrics.inflight.inc()
    dispatched: Dispatched | None = None
    status = "200"
    try:
        metrics.queued.inc()
        try:
            dispatched = await dispatch(state, route, lambda bus_id: encode_for(work, bus_id), model)
        finally:
            metrics.queued.dec()
        metrics.ttft.observe(time.monotonic() - started)
        state.router.on_first_token(dispatched.bus_id)
        return await respond(dispatched)
    except MeshError as exc:
        response = error_response(exc)
        status = str(response.status)
        return response
    except asyncio.CancelledError:
        status = "499"
        if dispatched is not None:
            abandon(state, dispatched, model)
        raise
    finally:
        release(state, dispatched)
        metrics.inflight.dec()
        metrics.duration.observe(time.monotonic() - started)
        metrics.request_done(endpoint, "stream" if is_stream else "unary", status)
