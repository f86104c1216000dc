"""The only router file that talks to NATS: feeds the Router from the event plane and serves decisions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec
import nats
from nats.aio.msg import Msg

from protocol import subjects
from protocol.control import DumpKv, control_encoder, dump_decoder
from protocol.events import Goodbye, Heartbeat, KvEventBatch, LoadReport, event_decoder
from protocol.routing import RouteDecision, RouteRequest
from router.core import Router

log = logging.getLogger("diffmesh.router")


class RouterService:
    """Embedded in a frontend: subscribes to every worker's heartbeats, KV events and load reports."""

    def __init__(self, nc: nats.NATS, namespace: str, router: Router, expire_interval_s: float = 0.25,
                 dump_timeout_s: float = 5.0):
        self.nc = nc
        self.ns = namespace
        self.router = router
        self.expire_interval_s = expire_interval_s
        self.dump_timeout_s = dump_timeout_s
        self._lost_listeners: list[Callable[[str], None]] = []
        self._subs: list = []
        self._tasks: set[asyncio.Task] = set()
        self._expiry: asyncio.Task | None = None

    def on_worker_lost(self, listener: Callable[[str], None]) -> None:
        """`listener(worker_id)` runs when a worker says goodbye or its heartbeat lapses."""
        self._lost_listeners.append(listener)

    async def start(self) -> None:
        ns = self.ns
        self._subs = [
            await self.nc.subscribe(subjects.heartbeat_all(ns), cb=self._on_event),
            await self.nc.subscribe(subjects.kv_events_all(ns), cb=self._on_event),
            await self.nc.subscribe(subjects.load_events_all(ns), cb=self._on_event),
        ]
        self._expiry = asyncio.create_task(self._expire_loop())
        await self.nc.flush()

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        if self._expiry:
            self._expiry.cancel()
        for task in list(self._tasks) + ([self._expiry] if self._expiry else []):
            task.cancel()
        await asyncio.gather(*self._tasks, *( [self._expiry] if self._expiry else []), return_exceptions=True)

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = event_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("bad event on %s: %s", msg.subject, exc)
            return
        match event:
            case Heartbeat():
                if self.router.on_heartbeat(event):
                    self._spawn(self._dump(event.card.worker_id))
            case KvEventBatch():
                if self.router.on_kv_events(event):
                    self._spawn(self._dump(event.worker_id))
            case LoadReport():
                self.router.on_load(event)
            case Goodbye(worker_id=worker_id):
                self.router.on_goodbye(worker_id)
                self._notify_lost(worker_id)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dump(self, worker_id: str) -> None:
        """Ask a worker for its whole cache (first sight or event-id gap)."""
        self.router.begin_dump(worker_id)
        try:
            reply = await self.nc.request(subjects.control(self.ns, worker_id), control_encoder.encode(DumpKv()),
                                          timeout=self.dump_timeout_s)
            self.router.apply_dump(dump_decoder.decode(reply.data))
        except (nats.errors.Error, msgspec.DecodeError, asyncio.TimeoutError) as exc:
            log.warning("kv dump from %s failed: %s", worker_id, exc)
            self.router.abort_dump(worker_id)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.expire_interval_s)
            for worker_id in self.router.expire():
                log.warning("worker %s heartbeat lapsed", worker_id)
                self._notify_lost(worker_id)

    def _notify_lost(self, worker_id: str) -> None:
        for listener in self._lost_listeners:
            listener(worker_id)

    async def route(self, request: RouteRequest) -> RouteDecision:
        return self.router.route(request)

    def on_first_token(self, request_id: str) -> None:
        self.router.on_first_token(request_id)

    def on_finish(self, request_id: str) -> None:
        self.router.on_finish(request_id)
