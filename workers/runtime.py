"""Shared worker bus loop: endpoint subscription, bounded concurrency, cancel, heartbeats, KV events, drain.

The engine (workers/<kind>/worker.py) implements WorkerEngine; this module owns everything that touches NATS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

import msgspec
import nats
from nats.aio.msg import Msg

from protocol import subjects
from protocol.control import Cancel, ClearCache, ControlAck, DumpKv, KvDump, control_decoder, control_encoder
from protocol.errors import EngineError, MeshError, Overloaded
from protocol.events import Goodbye, Heartbeat, KvEvent, KvEventBatch, LoadReport, WorkerCard, event_encoder
from protocol.work import Ack, Error, Final, WorkRequest, work_decoder
from shell.blobs import BlobStore
from shell.bus import LinkWatch, close_bus, connect_unless
from shell.config import RuntimeConfig
from shell.health import start_health_server
from shell.logs import request_id_var
from shell.process import EXIT_BROKER_LOST, EXIT_DRAIN_TIMEOUT, EXIT_OK, install_stop_handlers
from shell.registry import publish_model
from workers.contract import KvEventSink, RequestContext, WorkerEngine
from workers.drain import bounded, cancel_all, cut, wait_in_flight
from workers.replies import ReplyLane, ReplyLanes, publish_reply

__all__ = ["KvEventSink", "RequestContext", "RuntimeConfig", "WorkerEngine", "WorkerRuntime", "serve"]

log = logging.getLogger("diffmesh.worker")
HARD_EXIT_GRACE_S = 20.0  # after SIGTERM a worker is gone by drain_timeout_s + this, whatever hangs


class WorkerRuntime:
    """Serves one engine on the bus until `drain()`."""

    def __init__(self, engine: WorkerEngine, config: RuntimeConfig, nc: nats.NATS, link: LinkWatch | None = None):
        self.engine = engine
        self.config = config
        self.nc = nc
        if link is None:  # the caller connected without a watch: trust the connection as it is now
            link = LinkWatch()
            link.mark_up()
        self.link = link
        self.exit_code = EXIT_OK  # set by serve(): what the process's exit status should say
        self.worker_id = config.worker_id or f"{engine.component}-{uuid.uuid4().hex[:12]}"
        subjects.check_token(self.worker_id, "worker id")
        fields = engine.worker_card()
        self.card = WorkerCard(
            worker_id=self.worker_id,
            namespace=config.namespace,
            component=engine.component,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=time.time(),
            **fields,
        )
        self.blobs = BlobStore(nc, config.namespace, config.max_inline_bytes, config.js_replicas)
        self.contexts: dict[str, RequestContext] = {}
        self.num_active = 0
        self.num_waiting = 0
        self.num_cancelled = 0  # requests that ended because of a Cancel message
        self.num_served = 0
        self.num_refused = 0  # requests answered Overloaded (full or draining)
        self.last_event_id = 0
        self._slots = asyncio.Semaphore(self.card.capacity)
        self._tasks: set[asyncio.Task] = set()
        self._subs: list = []
        self._background: list[asyncio.Task] = []
        self._sink: KvEventSink | None = None
        self._draining = False
        self._serving = False
        self._load_dirty = asyncio.Event()
        self.lanes = ReplyLanes(config.keepalive_s)  # reply streams in flight, kept alive while quiet

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register the model, start the engine, subscribe, and begin heartbeats."""
        ns, wid = self.config.namespace, self.worker_id
        await publish_model(self.nc, ns, self.engine.model_card(), self.engine.model_files(), self.config.js_replicas)
        self._sink = KvEventSink(asyncio.get_running_loop())
        await self.engine.start(self._sink)
        self._subs = [
            await self.nc.subscribe(subjects.generate_direct(ns, self.card.component, wid), cb=self._on_request),
            await self.nc.subscribe(
                subjects.generate_any(ns, self.card.component),
                queue=subjects.queue_group(self.card.component),
                cb=self._on_request,
            ),
        ]
        self._control_sub = await self.nc.subscribe(subjects.control(ns, wid), cb=self._on_control)
        self._background = [
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._kv_loop()),
            asyncio.create_task(self._load_loop()),
            asyncio.create_task(self.lanes.run()),
        ]
        await self.nc.flush()
        self._serving = True
        log.info("worker %s serving %s (%s)", wid, self.card.model, self.card.component)

    async def drain(self, deadline: float | None = None) -> bool:
        """Stop taking requests and say so, let in-flight ones finish until `deadline` (loop time; default
        drain_timeout_s from now) or until NATS is gone, cut the rest, say goodbye. True if nothing was cut."""
        if self._draining:
            return True
        self._draining = True
        deadline = asyncio.get_running_loop().time() + self.config.drain_timeout_s if deadline is None else deadline
        for sub in self._subs:  # local at once; the server hears of it when connected
            await bounded(sub.unsubscribe, "unsubscribe")
        if self.link.is_up:
            await bounded(self._publish_heartbeat, "draining heartbeat")
        finished = await wait_in_flight(self._tasks, self.link, deadline)
        if not finished:
            log.warning("cutting %d in-flight requests (%s)", len(self._tasks),
                        "NATS is unreachable" if not self.link.is_up else f"--drain-timeout {self.config.drain_timeout_s:g} s")
            for ctx in list(self.contexts.values()):
                ctx.cancel()
            await cut(self._tasks)
        await cancel_all(self._background)
        if self.link.is_up:
            goodbye = Goodbye(worker_id=self.worker_id)
            await bounded(self._flush_kv, "kv events")
            await bounded(lambda: self._publish_event(subjects.heartbeat(self.config.namespace, self.worker_id), goodbye), "goodbye")
            await bounded(self._control_sub.unsubscribe, "unsubscribe")
        await bounded(self.engine.stop, "engine stop")
        return finished

    def health(self) -> dict:
        """The worker's state for `GET /health`: healthy only while serving with NATS reachable."""
        status = ("draining" if self._draining else "disconnected" if not self.link.is_up
                  else "serving" if self._serving else "starting")
        return {"healthy": status == "serving", "status": status, "nats": self.link.is_up, "worker_id": self.worker_id,
                "model": self.card.model, "active": self.num_active, "waiting": self.num_waiting}

    # --- request plane --------------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            request = work_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("bad work request on %s dropped: %s", msg.subject, exc)
            await publish_reply(self.nc, msg.reply, Error(request_id="", seq=0, code="invalid_request",
                                                          message=f"bad work request: {exc}"))
            return
        if self._draining or not self.link.is_up or self.num_active + self.num_waiting >= self.card.capacity + self.card.max_queue:
            self.num_refused += 1
            error = Overloaded(f"worker {self.worker_id} is {'full' if self.link.is_up else 'reconnecting'}", retry_after=1.0)
            await publish_reply(self.nc, msg.reply, _error_reply(request.request_id, 0, error))
            return
        deadline = time.monotonic() + request.deadline_s if request.deadline_s else None
        ctx = RequestContext(request.request_id, self.worker_id, deadline, self.blobs)
        self.contexts[request.request_id] = ctx
        lane = self.lanes.open(self.nc, msg.reply, request.request_id, self.worker_id)
        self.num_waiting += 1  # counted now: the next message's admission check must see it
        self._load_dirty.set()
        task = asyncio.create_task(self._serve(request, ctx, lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: WorkRequest, ctx: RequestContext, lane: ReplyLane) -> None:
        request_id_var.set(request.request_id)  # this task's context: engine logs carry the id
        if self._slots.locked():
            await lane.send(Ack(request_id=request.request_id, worker_id=self.worker_id, queued=True))
        try:
            async with self._slots:
                self.num_waiting -= 1
                self.num_active += 1
                lane.is_waiting = False
                self._load_dirty.set()
                try:
                    await self._run_engine(request, ctx, lane)
                finally:
                    self.num_active -= 1
                    self._load_dirty.set()
        finally:
            self.contexts.pop(request.request_id, None)
            self.lanes.close(request.request_id)
            self.num_served += 1

    async def _run_engine(self, request: WorkRequest, ctx: RequestContext, lane: ReplyLane) -> None:
        try:
            if ctx.is_cancelled():
                raise _CancelledBeforeStart
            async for out in self.engine.generate(request, ctx):
                if isinstance(out, Final):
                    out = msgspec.structs.replace(out, worker_id=self.worker_id)
                await lane.send(out)
                if lane.is_done:
                    break
            if not lane.is_done:
                raise EngineError("engine ended without a final message")
        except _CancelledBeforeStart:
            await lane.send(Final(request_id=request.request_id, seq=0, finish_reason="cancelled", worker_id=self.worker_id))
        except MeshError as exc:
            await lane.send(_error_reply(request.request_id, 0, exc))
        except Exception as exc:  # an engine bug must not kill the worker or hang the client
            log.exception("engine failed on %s", request.request_id)
            await lane.send(_error_reply(request.request_id, 0, EngineError(f"{type(exc).__name__}: {exc}")))
        if ctx.is_cancelled():
            self.num_cancelled += 1

    # --- control plane --------------------------------------------------------------------------

    async def _on_control(self, msg: Msg) -> None:
        try:
            command = control_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("bad control message on %s dropped: %s", msg.subject, exc)
            await self._respond(msg, ControlAck(ok=False, detail=str(exc)))
            return
        match command:
            case Cancel(request_id=request_id):
                ctx = self.contexts.get(request_id)
                if ctx is not None:
                    ctx.cancel()
                await self._respond(msg, ControlAck(ok=ctx is not None))
            case ClearCache():
                self.engine.clear_cache()
                await self._respond(msg, ControlAck())
            case DumpKv():
                await self._flush_kv()
                events = [KvEvent(event_id=self.last_event_id, data=data) for data in self.engine.kv_dump()]
                await self._respond(msg, KvDump(worker_id=self.worker_id, last_event_id=self.last_event_id, events=events))

    async def _respond(self, msg: Msg, payload) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, control_encoder.encode(payload))

    # --- event plane ----------------------------------------------------------------------------

    def load(self) -> LoadReport:
        fields = self.engine.load_report()
        return LoadReport(worker_id=self.worker_id, active_requests=self.num_active, waiting_requests=self.num_waiting, **fields)

    async def _publish_event(self, subject: str, event) -> None:
        await self.nc.publish(subject, event_encoder.encode(event))

    async def _publish_heartbeat(self) -> None:
        beat = Heartbeat(card=self.card, load=self.load(), last_kv_event_id=self.last_event_id,
                         interval_s=self.config.heartbeat_s, draining=self._draining)
        await self._publish_event(subjects.heartbeat(self.config.namespace, self.worker_id), beat)

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._publish_heartbeat()
            await asyncio.sleep(self.config.heartbeat_s)

    async def _load_loop(self) -> None:
        subject = subjects.load_events(self.config.namespace, self.worker_id)
        while True:
            await self._load_dirty.wait()
            self._load_dirty.clear()
            await self._publish_event(subject, self.load())
            await asyncio.sleep(self.config.load_interval_s)

    async def _kv_loop(self) -> None:
        while True:
            await self._sink._wake.wait()
            self._sink._wake.clear()
            await self._flush_kv()

    async def _flush_kv(self) -> None:
        if self._sink is None:
            return
        taken = self._sink.take()
        if not taken:
            return
        events = []
        for data in taken:
            self.last_event_id += 1
            events.append(KvEvent(event_id=self.last_event_id, data=data))
        batch = KvEventBatch(worker_id=self.worker_id, events=events)
        await self._publish_event(subjects.kv_events(self.config.namespace, self.worker_id), batch)


class _CancelledBeforeStart(Exception):
    pass


def _error_reply(request_id: str, seq: int, exc: MeshError) -> Error:
    return Error(request_id=request_id, seq=seq, code=exc.code, message=exc.message, param=exc.param, retry_after=exc.retry_after)


async def serve(engine: WorkerEngine, config: RuntimeConfig, *, ready: asyncio.Future | None = None,
                stop: asyncio.Event | None = None) -> WorkerRuntime | None:
    """Connect, register and serve until `stop` (default: SIGTERM/SIGINT; a second one exits at once), then drain,
    bounded. `ready` gets the runtime; `runtime.exit_code` says how it ended (EXIT_BROKER_LOST once NATS stayed
    unreachable past `nats_give_up_after_s`). None when stopped before NATS was reached."""
    if stop is None:
        stop = asyncio.Event()
        install_stop_handlers(stop, hard_exit_after_s=config.drain_timeout_s + HARD_EXIT_GRACE_S)
    link = LinkWatch(config.nats_give_up_after_s)
    watch = asyncio.create_task(link.run())
    try:
        nc = await connect_unless(stop, config.nats, f"diffmesh-{engine.component}", link)
        if nc is None:
            return None
        runtime = WorkerRuntime(engine, config, nc, link)
        await _serve_until(runtime, ready, stop)
        return runtime
    finally:
        await cancel_all([watch])


async def _serve_until(runtime: WorkerRuntime, ready: asyncio.Future | None, stop: asyncio.Event) -> None:
    config, link = runtime.config, runtime.link
    health = None
    try:
        if config.health_port is not None:
            health = await start_health_server(config.health_host, config.health_port, runtime.health)
        await runtime.start()
        if ready is not None:
            ready.set_result(runtime)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(link.gave_up.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        await cancel_all(waits)
        if link.gave_up.is_set():
            log.error("NATS unreachable for %g s (--nats-give-up-after): exiting", config.nats_give_up_after_s)
        finished = await runtime.drain()
        runtime.exit_code = EXIT_BROKER_LOST if link.gave_up.is_set() else EXIT_OK if finished else EXIT_DRAIN_TIMEOUT
    finally:
        await close_bus(runtime.nc)
        if health is not None:
            await health.cleanup()
