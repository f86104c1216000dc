"""A worker's side of the reply plane: one numbered, kept-alive reply stream per request.

Every message of a request's stream carries the next `seq`; a request that has said nothing for `keepalive_s`
(queued, or a long prefill / image pipeline) gets an `Ack`, so a requester can treat a stream that stays quiet
much longer than that as lost (a dead worker, or messages dropped while a NATS node went away).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import nats

from protocol.errors import EngineError
from protocol.work import Ack, Error, Reply, is_terminal, work_encoder

log = logging.getLogger("diffmesh.worker")


async def publish_reply(nc: nats.NATS, subject: str, message: Reply) -> bool:
    """Publish one reply; False (logged) when the bus would not take it. A lost reply is the requester's to detect."""
    try:
        await nc.publish(subject, work_encoder.encode(message))
        return True
    except nats.errors.MaxPayloadError:
        error = EngineError("reply exceeds the NATS max_payload; the engine must chunk it")
        return await publish_reply(nc, subject, Error(request_id=message.request_id, seq=message.seq, code=error.code,
                                                      message=error.message))
    except nats.errors.Error as exc:  # closed, or the reconnect buffer is full
        log.warning("reply to %s not sent: %s", message.request_id, type(exc).__name__)
        return False


class ReplyLane:
    """Numbers one request's replies 0, 1, 2, ... and remembers when it last sent one."""

    def __init__(self, nc: nats.NATS, subject: str, request_id: str, worker_id: str):
        self.nc = nc
        self.subject = subject
        self.request_id = request_id
        self.worker_id = worker_id
        self.next_seq = 0
        self.last_sent = time.monotonic()
        self.is_waiting = True  # queued for a slot (what keepalive Acks say)
        self.is_done = False  # the terminal message went out

    async def send(self, message: Reply) -> None:
        """Send `message` with the next seq (its own seq is ignored); nothing goes out after the terminal one."""
        if self.is_done:
            return
        message = msgspec.structs.replace(message, seq=self.next_seq)
        self.next_seq += 1
        self.last_sent = time.monotonic()
        self.is_done = is_terminal(message)
        await publish_reply(self.nc, self.subject, message)

    async def keepalive(self) -> None:
        await self.send(Ack(request_id=self.request_id, worker_id=self.worker_id, queued=self.is_waiting))


class ReplyLanes:
    """The lanes of a worker's requests in flight, and the loop that keeps quiet ones alive."""

    def __init__(self, keepalive_s: float):
        self.keepalive_s = keepalive_s  # 0 = never
        self.lanes: dict[str, ReplyLane] = {}
        self.num_keepalives = 0

    def open(self, nc: nats.NATS, subject: str, request_id: str, worker_id: str) -> ReplyLane:
        lane = self.lanes[request_id] = ReplyLane(nc, subject, request_id, worker_id)
        return lane

    def close(self, request_id: str) -> None:
        self.lanes.pop(request_id, None)

    async def keepalive_once(self) -> None:
        now = time.monotonic()
        for lane in list(self.lanes.values()):
            if not lane.is_done and now - lane.last_sent >= self.keepalive_s:
                self.num_keepalives += 1
                await lane.keepalive()

    async def run(self) -> None:
        if not self.keepalive_s > 0:
            return
        while True:
            await asyncio.sleep(self.keepalive_s / 2)
            await self.keepalive_once()
