"""Per-app objects handlers share, created at startup and passed down (no module globals)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web

from shell.blobs import BlobStore
from shell.config import FrontendConfig
from shell.images import ImageLoader
from shell.metrics import FrontendMetrics
from frontend.bus import ReplyStream, Requester
from frontend.registry import ModelRegistry
from protocol import subjects
from protocol.errors import MeshError, Overloaded, PayloadTooLarge, WorkerLost, WorkerUnavailable, error_from_code
from protocol.routing import RouteDecision, RouteRequest
from frontend.errors import error_response
from protocol.work import Ack, Error, Final, Reply, work_encoder

MAX_MIGRATIONS = 2  # re-sends to other workers before any output reached the client
RETRIABLE = (WorkerUnavailable, WorkerLost, Overloaded)


@dataclass
class AppState:
    config: FrontendConfig
    requester: Requester
    router: object  # RouterService (embedded) or RemoteRouter: route(), on_first_token(), on_finish()
    registry: ModelRegistry
    metrics: FrontendMetrics
    media: ImageLoader  # chat image parts
    blobs: BlobStore  # bytes too large for one bus message
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
    chunks, size = [], 0
    while chunk := await request.content.read(limit + 1 - size):  # read(n) returns what has arrived, up to n
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return b"".join(chunks)


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
        except asyncio.CancelledError:  # the client went away (or a sibling choice failed) before the first reply
            release(state, Dispatched(bus_id, decision, stream, None))
            raise
    raise last  # unreachable: the loop either returns or raises


async def dispatch_all(state: AppState, jobs: list[tuple[RouteRequest, object]], model: str) -> list[Dispatched]:
    """Dispatch every bus request of one HTTP request (n choices) at once; if one fails, stop the others and raise."""
    if len(jobs) == 1:
        return [await _dispatch_started(state, *jobs[0], model)]
    started: list[Dispatched] = []  # those still running on the cancelled path release themselves in dispatch()

    async def one(route: RouteRequest, work) -> Dispatched:
        dispatched = await _dispatch_started(state, route, work, model)
        started.append(dispatched)
        return dispatched

    try:
        return await first_error([one(route, work) for route, work in jobs])
    except BaseException:
        for dispatched in started:
            release(state, dispatched)
        raise


async def _dispatch_started(state: AppState, route: RouteRequest, work, model: str) -> Dispatched:
    dispatched = await dispatch(state, route, lambda bus_id: encode_for(work, bus_id), model)
    state.router.on_first_token(dispatched.bus_id)
    return dispatched


async def first_error(coros) -> list:
    """Run coroutines together; on the first failure cancel the rest and raise it (gather leaves them running)."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    for task in pending:
        task.cancel()
    error = next((t.exception() for t in done if not t.cancelled() and t.exception() is not None), None)
    if error is not None:
        raise error
    return [task.result() for task in tasks]


async def merged_replies(ds: list[Dispatched]) -> AsyncIterator[tuple[int, Reply]]:
    """(choice, reply) from every stream as they arrive, each stream's ending with its Final; errors raise."""
    if len(ds) == 1:
        reply = ds[0].first
        while True:
            yield 0, reply
            if isinstance(reply, Final):
                return
            reply = raise_if_error(await ds[0].stream.next())
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, d: Dispatched) -> None:
        reply = d.first
        try:
            while True:
                queue.put_nowait((i, reply))
                if isinstance(reply, Final):
                    return
                reply = raise_if_error(await d.stream.next())
        except MeshError as exc:
            queue.put_nowait((i, exc))

    tasks = [asyncio.ensure_future(pump(i, d)) for i, d in enumerate(ds)]
    try:
        remaining = len(ds)
        while remaining:
            i, item = await queue.get()
            if isinstance(item, MeshError):
                raise item
            remaining -= isinstance(item, Final)
            yield i, item
    finally:
        for task in tasks:
            task.cancel()


def release(state: AppState, dispatched: Dispatched | None) -> None:
    """Forget the request; a worker still producing for it is told to stop (fire-and-forget)."""
    if dispatched is None:
        return
    if not dispatched.stream.done:
        asyncio.ensure_future(state.requester.cancel(dispatched.decision.worker_id, dispatched.bus_id))
    state.requester.close(dispatched.bus_id)
    state.router.on_finish(dispatched.bus_id)


def encode_for(work, bus_id: str) -> bytes:
    """The work request as sent on the bus, renamed to `bus_id` after a migration."""
    if bus_id != work.request_id:
        work = msgspec.structs.replace(work, request_id=bus_id)
    return work_encoder.encode(work)


async def serve_request(state: AppState, route: RouteRequest, work, endpoint: str, is_stream: bool,
                        respond: Callable[[Dispatched], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """One request's lifecycle: dispatch, hand the replies to `respond`, map errors, cancel on disconnect, count."""
    return await serve_choices(state, [(route, work)], endpoint, is_stream, lambda ds: respond(ds[0]))


async def serve_choices(state: AppState, jobs: list[tuple[RouteRequest, object]], endpoint: str, is_stream: bool,
                        respond: Callable[[list[Dispatched]], Awaitable[web.StreamResponse]],
                        started: float | None = None) -> web.StreamResponse:
    """serve_request over several bus requests (the n choices of one HTTP request); all start or none does.

    `started` (time.monotonic) is when the request's own preparation began (image loading and encoding count too).
    """
    model = jobs[0][0].model
    metrics = state.metrics.model(model)
    started = time.monotonic() if started is None else started
    metrics.inflight.inc()
    dispatched: list[Dispatched] = []
    status = "200"
    try:
        metrics.queued.inc()
        try:
            dispatched = await dispatch_all(state, jobs, model)
        finally:
            metrics.queued.dec()
        metrics.ttft.observe(time.monotonic() - started)
        return await respond(dispatched)
    except MeshError as exc:
        response = error_response(exc)
        status = str(response.status)
        return response
    except asyncio.CancelledError:
        status = "499"
        metrics.disconnected.inc()
        raise
    finally:
        for d in dispatched:
            release(state, d)
        metrics.inflight.dec()
        metrics.duration.observe(time.monotonic() - started)
        metrics.request_done(endpoint, "stream" if is_stream else "unary", status)
