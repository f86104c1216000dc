"""One client request's replies across workers: when its worker is lost, stalls or is full, the request moves on.

Before any output the request is simply sent again. A text stream already under way continues on another worker
with the tokens the client already has appended to the prompt (`GenerateRequest.num_generated`) and max_tokens
reduced by as many, so the client sees one stream with no token twice and none missing. Other requests (images)
start over on the other worker. At most `FrontendConfig.migration_limit` re-sends; a direct `worker_id` never moves.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from frontend.bus import ReplyStream
from protocol import subjects
from protocol.errors import Overloaded, WorkerLost, WorkerUnavailable, error_from_code
from protocol.routing import RouteDecision, RouteRequest
from protocol.work import Ack, Chunk, Error, Final, GenerateRequest, ImageOutput, Reply, Usage, work_encoder

log = logging.getLogger("diffmesh.frontend")
RETRIABLE = (WorkerUnavailable, WorkerLost, Overloaded)


def encode_for(work, bus_id: str) -> bytes:
    """The work request as sent on the bus, renamed to `bus_id` after a migration."""
    if bus_id != work.request_id:
        work = msgspec.structs.replace(work, request_id=bus_id)
    return work_encoder.encode(work)


class Restart:
    """Every attempt sends the whole request again (images: the frontend fixed the seed, so it draws the same)."""

    def __init__(self, work):
        self.work = work
        self.has_output = False  # the client got part of the answer (partial images) before a restart

    def payload(self, bus_id: str) -> bytes:
        return encode_for(self.work, bus_id)

    def note(self, reply: Reply) -> None:
        self.has_output = self.has_output or isinstance(reply, ImageOutput)

    def moved(self) -> None:
        pass

    def finish(self, final: Final) -> Final:
        return final


class Continue(Restart):
    """Text: the next attempt continues after the tokens already delivered to the client."""

    def __init__(self, work: GenerateRequest):
        super().__init__(work)
        self.delivered = bytearray()  # int32 LE ids of the output the client has, over all attempts
        self.passes_before = 0  # forward passes spent by earlier attempts
        self._passes = 0  # this attempt's latest cumulative count
        self.num_resumed = 0  # delivered tokens the current attempt started from

    @property
    def num_delivered(self) -> int:
        return len(self.delivered) // 4

    def note(self, reply: Reply) -> None:
        if isinstance(reply, Chunk):
            self.delivered += reply.token_ids
            self.has_output = bool(self.delivered)
            self._passes = reply.forward_passes

    def moved(self) -> None:
        self.passes_before += self._passes
        self._passes = 0

    def payload(self, bus_id: str) -> bytes:
        work = self.work
        k = self.num_resumed = self.num_delivered
        if k:
            sampling = msgspec.structs.replace(work.sampling, max_tokens=work.sampling.max_tokens - k)
            work = msgspec.structs.replace(work, token_ids=work.token_ids + bytes(self.delivered), num_generated=k,
                                           sampling=sampling)
        return encode_for(work, bus_id)

    def finish(self, final: Final) -> Final:
        """A continuation's worker counted the delivered tokens as prompt: give the client the whole request's usage."""
        k = self.num_resumed
        if not k:
            return final
        u = final.usage
        prompt = max(u.prompt_tokens - k, 0)
        usage = Usage(prompt_tokens=prompt, completion_tokens=u.completion_tokens + k, cached_tokens=min(u.cached_tokens, prompt),
                      forward_passes=u.forward_passes + self.passes_before, images=u.images)
        return msgspec.structs.replace(final, usage=usage)


class MigratingStream:
    """The replies of one request, whichever workers serve it; `next()` never returns an Ack or an Error."""

    def __init__(self, state, route: RouteRequest, resume: Restart, model: str, timeout_s: float | None = None):
        self.state = state  # frontend.state.AppState
        self.route = route
        self.resume = resume
        self.model = model
        self.deadline = time.monotonic() + (timeout_s or state.config.request_timeout_s)  # videos: video_timeout_s
        self.num_attempts = 0
        self.excluded: list[str] = []
        self.bus_id = route.request_id
        self.decision: RouteDecision | None = None
        self.stream: ReplyStream | None = None
        self.is_cancelled = False  # the client went away: a cancelled Final is ours, not a worker giving up
        self._has_replied = False  # this attempt sent something other than an Ack
        self._is_open = False  # an attempt's stream and router load are held

    @property
    def done(self) -> bool:
        return self.stream is None or self.stream.done

    async def start(self) -> Reply:
        """Route, send, and return the first reply (moving on while workers fail before answering)."""
        await self._send()
        return await self.next()

    async def next(self) -> Reply:
        """The next reply of the request; raises the MeshError that ends it."""
        while True:
            try:
                reply = await self.stream.next()
                if isinstance(reply, Ack):
                    continue
                if isinstance(reply, Error):
                    raise error_from_code(reply.code, reply.message, param=reply.param, retry_after=reply.retry_after)
                if isinstance(reply, Final) and reply.finish_reason == "cancelled" and not self.is_cancelled:
                    raise WorkerLost(f"worker {self.decision.worker_id} gave the request up (shutting down)")
            except RETRIABLE as exc:
                await self._move_on(exc)
                continue
            self._on_reply(reply)
            return self.resume.finish(reply) if isinstance(reply, Final) else reply

    def _on_reply(self, reply: Reply) -> None:
        if not self._has_replied:
            self._has_replied = True
            self.state.router.on_first_token(self.bus_id)
        self.resume.note(reply)

    async def _move_on(self, exc: Exception) -> None:
        worker_id = self.decision.worker_id
        self._end_attempt(cancel=isinstance(exc, WorkerLost))  # it may be alive but cut off: stop its work
        if self.num_attempts > self.state.config.migration_limit or self.route.worker_id is not None:
            raise exc
        self.excluded.append(worker_id)
        kind = "ongoing_request" if self.resume.has_output else "new_request"
        self.state.metrics.migrations.labels(self.model, kind).inc()
        log.info("request %s moves on from worker %s (%s: %s)", self.route.request_id, worker_id, type(exc).__name__, exc)
        self.resume.moved()
        await self._send()

    async def _send(self) -> None:
        n = self.num_attempts
        self.bus_id = self.route.request_id if n == 0 else f"{self.route.request_id}-m{n}"
        self.num_attempts += 1
        self._has_replied = False
        self._is_open = False
        decision = await self._route(msgspec.structs.replace(self.route, request_id=self.bus_id, exclude=self.excluded))
        self.state.metrics.router.observe(decision)
        self.decision = decision
        self._is_open = True
        subject = subjects.generate_direct(self.state.config.namespace, decision.component, decision.worker_id)
        self.stream = await self.state.requester.send(subject, self.bus_id, self.resume.payload(self.bus_id),
                                                      decision.worker_id, max(self.deadline - time.monotonic(), 0.0))

    async def _route(self, route: RouteRequest) -> RouteDecision:
        try:
            return await self.state.router.route(route)
        except WorkerUnavailable:
            if not route.exclude:
                raise
            # every other worker is gone: a worker that failed this request once (a bus blip) may serve it now
            return await self.state.router.route(msgspec.structs.replace(route, exclude=[]))

    def _end_attempt(self, cancel: bool) -> None:
        if not self._is_open:
            return
        self._is_open = False
        if cancel:
            asyncio.ensure_future(self.state.requester.cancel(self.decision.worker_id, self.bus_id))
        self.state.requester.close(self.bus_id)
        self.state.router.on_finish(self.bus_id)

    def close(self) -> None:
        """Done with the request: a worker still producing for it is told to stop (fire-and-forget; we may be inside
        a cancelled task). Idempotent."""
        self.is_cancelled = True
        self._end_attempt(cancel=not self.done)
