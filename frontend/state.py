"""Per-app objects handlers share, created at startup and passed down (no module globals)."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from shell.blobs import BlobStore
from shell.config import FrontendConfig
from shell.images import ImageLoader
from shell.metrics import FrontendMetrics
from frontend.bus import Requester
from frontend.migration import Continue, MigratingStream, Restart
from frontend.registry import ModelRegistry
from protocol.errors import MeshError, PayloadTooLarge, error_from_code
from protocol.routing import RouteDecision, RouteRequest
from frontend.errors import error_response
from protocol.work import Error, Final, GenerateRequest, Reply

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
    """A request under way: its first reply, and the stream of the rest (which migrates between workers)."""

    stream: MigratingStream  # .next() raises the MeshError that ends the request; never returns an Ack or Error
    first: Reply  # first reply that is not an Ack

    @property
    def decision(self) -> RouteDecision:
        return self.stream.decision  # the worker serving it now

    @property
    def bus_id(self) -> str:
        return self.stream.bus_id


class _IdSource:
    """Ids unique across processes without a syscall each (uuid4 reads os.urandom): a random base and a counter."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.base, self.counter = secrets.token_hex(6), itertools.count()


_IDS = _IdSource()
os.register_at_fork(after_in_child=_IDS.reset)  # a forked child must not repeat its parent's ids


def new_request_id(prefix: str) -> str:
    """Unique bus id; `prefix` may be a client's x-request-id, kept for log correlation."""
    return f"{prefix[:40]}-{_IDS.base}{next(_IDS.counter):x}"


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


async def dispatch(state: AppState, route: RouteRequest, work, model: str, timeout_s: float | None = None) -> Dispatched:
    """Route, send and wait for the first reply; the request moves to another worker whenever its worker fails
    (frontend.migration), before its first reply or after."""
    resume = Continue(work) if isinstance(work, GenerateRequest) else Restart(work)
    stream = MigratingStream(state, route, resume, model, timeout_s)
    try:
        return Dispatched(stream, await stream.start())
    except BaseException:  # an error, or the client went away (or a sibling choice failed) before the first reply
        stream.close()
        raise


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
    return await dispatch(state, route, work, model)  # the stream tells the router of each attempt's first token


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
    if dispatched is not None:
        dispatched.stream.close()


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
