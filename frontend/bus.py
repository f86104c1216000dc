"""Requester side of the request plane: one wildcard reply inbox per process, demultiplexed by request id."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque

import msgspec
import nats
from nats.aio.msg import Msg

from protocol import subjects
from protocol.control import Cancel, control_encoder
from protocol.errors import DeadlineExceeded, MeshError, ShuttingDown, WorkerLost, WorkerUnavailable
from protocol.work import Reply, is_terminal, reply_decoder

NO_RESPONDERS = "503"


class ReplyStream:
    """Replies of one request in seq order; raises instead of hanging when the worker fails.

    Workers send something at least every `keepalive_s` (runtime), so a stream quiet for `stall_s` lost its worker
    or its messages (a NATS node went away): it ends with WorkerLost, which the frontend migrates.
    """

    def __init__(self, request_id: str, worker_id: str, deadline: float, stall_s: float = 0.0):
        self.request_id = request_id
        self.worker_id = worker_id
        self.deadline = deadline  # time.monotonic() seconds
        self.stall_s = stall_s  # 0 = no watchdog
        self._items: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._next_seq = 0
        self.done = False
        self._loop = loop = asyncio.get_running_loop()
        self._last = loop.time()  # when the worker last sent anything
        self._timer = loop.call_at(loop.time() + max(deadline - time.monotonic(), 0.0), self._expire)
        self._watchdog = loop.call_at(self._last + stall_s, self._check_stall) if stall_s > 0 else None

    def _expire(self) -> None:
        self.push(DeadlineExceeded(f"no reply from worker {self.worker_id} within the request deadline"))

    def _check_stall(self) -> None:
        if self.done:
            return
        quiet = self._loop.time() - self._last
        if quiet >= self.stall_s:
            self.push(WorkerLost(f"worker {self.worker_id} sent nothing for {quiet:.1f} s"))
        else:
            self._watchdog = self._loop.call_at(self._last + self.stall_s, self._check_stall)

    def push(self, item: bytes | MeshError) -> None:
        if isinstance(item, bytes):
            self._last = self._loop.time()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> Reply:
        """The next reply; raises DeadlineExceeded, WorkerLost or WorkerUnavailable."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, MeshError):
            self.close()
            raise item
        try:
            reply = reply_decoder.decode(item)
        except msgspec.DecodeError as exc:
            self.close()
            raise WorkerLost(f"undecodable reply from {self.worker_id}: {exc}") from exc
        if reply.seq != self._next_seq:
            self.close()
            raise WorkerLost(f"reply stream from {self.worker_id} skipped from seq {self._next_seq} to {reply.seq}")
        self._next_seq += 1
        if is_terminal(reply):
            self.close()
        return reply

    def close(self) -> None:
        self.done = True
        self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()


class Requester:
    """Publishes work with a reply subject under this process's inbox and routes replies to their streams."""

    def __init__(self, nc: nats.NATS, namespace: str, requester_id: str | None = None, stall_s: float = 0.0):
        self.nc = nc
        self.ns = namespace
        self.stall_s = stall_s  # see ReplyStream
        self.requester_id = requester_id or uuid.uuid4().hex[:16]
        self._streams: dict[str, ReplyStream] = {}
        self._sub = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.reply_inbox(self.requester_id), cb=self._on_reply)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for stream in list(self._streams.values()):
            stream.push(ShuttingDown("frontend shutting down", retry_after=1.0))

    async def _on_reply(self, msg: Msg) -> None:
        request_id = msg.subject.rsplit(".", 1)[-1]
        stream = self._streams.get(request_id)
        if stream is None:
            return
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            stream.push(WorkerUnavailable(f"worker {stream.worker_id} is not listening"))
        else:
            stream.push(msg.data)

    async def send(self, subject: str, request_id: str, payload: bytes, worker_id: str, timeout_s: float) -> ReplyStream:
        """Publish one work request; its replies arrive on the returned stream."""
        stream = ReplyStream(request_id, worker_id, time.monotonic() + timeout_s, self.stall_s)
        self._streams[request_id] = stream
        try:
            await self.nc.publish(subject, payload, reply=subjects.reply_subject(self.requester_id, request_id))
        except nats.errors.Error as exc:  # closed, or the reconnect buffer is full: another try may go through
            stream.push(WorkerUnavailable(f"request not sent to {worker_id}: {type(exc).__name__}", retry_after=1.0))
        return stream

    def close(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.close()

    def fail_worker(self, worker_id: str) -> None:
        """The worker is gone: every stream it serves ends with WorkerLost."""
        for stream in self._streams.values():
            if stream.worker_id == worker_id:
                stream.push(WorkerLost(f"worker {worker_id} went away mid-request"))

    async def cancel(self, worker_id: str, request_id: str) -> None:
        """Tell the worker to stop (client disconnected, or the request moved on); fire-and-forget."""
        try:
            await self.nc.publish(subjects.control(self.ns, worker_id), control_encoder.encode(Cancel(request_id=request_id)))
        except nats.errors.Error:
            pass  # the bus is down: the worker's own deadline ends the work

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)
