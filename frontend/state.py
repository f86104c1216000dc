"""Per-app objects handlers share, created at startup and passed down (no module globals)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from shell.config import FrontendConfig
from shell.metrics import FrontendMetrics
from frontend.bus import Requester
from frontend.migration import Continue, MigratingStream, Restart
from frontend.registry import ModelRegistry
from protocol.errors import MeshError, PayloadTooLarge, error_from_code
from protocol.routing import RouteDecision, RouteRequest
from frontend.errors import error_response
from protocol.work import Error, GenerateRequest, Reply


@dataclass
class AppState:
    config: FrontendConfig
    requester: Requester
    router: object  # RouterService (embedded) or RemoteRouter: route(), on_first_token(), on_finish()
    registry: ModelRegistry
    metrics: FrontendMetrics


STATE: web.AppKey[AppState] = web.AppKey("diffmesh_state", AppState)


@dataclass
class Dispatched:
    """A request under way: its first reply, and the stream of the rest (which migrates between workers)."""

    stream: MigratingStream  # .next() raises the MeshError that ends the request; never returns an Ack or Error
    first: Reply  # first reply that is not an Ack

    @property
    def decision(self) -> RouteDecision:
        return self.stream.decision  # the worker serving it now

    @property
    def bus_id(self) -> str:
        return self.stream.bus_id


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


async def serve_request(state: AppState, route: RouteRequest, work, endpoint: str, is_stream: bool,
                        respond: Callable[[Dispatched], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """One request's lifecycle: dispatch, hand the replies to `respond`, map errors, cancel on disconnect, count."""
    model = route.model
    metrics = state.metrics.model(model)
    started = time.monotonic()
    metrics.inflight.inc()
    resume = Continue(work) if isinstance(work, GenerateRequest) else Restart(work)
    stream = MigratingStream(state, route, resume, model)
    status = "200"
    try:
        metrics.queued.inc()
        try:
            first = await stream.start()
        finally:
            metrics.queued.dec()
        metrics.ttft.observe(time.monotonic() - started)
        return await respond(Dispatched(stream, first))
    except MeshError as exc:
        response = error_response(exc)
        status = str(response.status)
        return response
    except asyncio.CancelledError:
        status = "499"
        metrics.disconnected.inc()
        stream.abandon()
        raise
    finally:
        stream.release()
        metrics.inflight.dec()
        metrics.duration.observe(time.monotonic() - started)
        metrics.request_done(endpoint, "stream" if is_stream else "unary", status)
