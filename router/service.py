"""The only router file that talks to NATS: feeds the Router from the event plane, syncs replicas, serves decisions."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import nats
from nats.aio.msg import Msg

from protocol import subjects
from protocol.control import DumpKv, control_encoder, dump_decoder
from protocol.errors import MeshError, WorkerUnavailable, error_from_code
from protocol.events import Goodbye, Heartbeat, KvEventBatch, LoadReport, event_decoder
from protocol.routing import (
    RouteDecision, RouteError, RouteRequest, SyncBatch, SyncEvent, route_reply_decoder, route_request_decoder, routing_encoder,
    sync_decoder,
)
from router.core import Router, RouterConfig
from router.policy import PolicyConfig
from router.tracker import heartbeat_problem
from shell.bus import close_bus, connect
from shell.config import ConfigError, NatsConfig, from_env

log = logging.getLogger("diffmesh.router")
MAX_DUMP_TRIES = 3  # dumps in a row for one worker when newer events still show a gap
ROUTER_QUEUE_GROUP = "diffmesh-router"


def new_router_id(prefix: str = "router") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class RouterService:
    """Subscribes to every worker's heartbeats, KV events and load reports; shares predicted load with replicas.

    Embedded in a frontend by default; with `serve=True` it also answers RouteRequests (`diffmesh router`).
    """

    def __init__(self, nc: nats.NATS, namespace: str, router: Router, expire_interval_s: float = 0.25,
                 dump_timeout_s: float = 5.0, serve: bool = False, track_kv: bool = True,
                 on_decision: Callable[[RouteDecision], None] | None = None, sync_interval_s: float = 0.005):
        self.nc = nc
        self.ns = namespace
        self.router = router
        self.expire_interval_s = expire_interval_s
        self.dump_timeout_s = dump_timeout_s
        self.serve = serve
        self.track_kv = track_kv  # False: liveness only (a RemoteRouter's local view)
        self.on_decision = on_decision  # served decisions go here (the standalone router's metrics)
        self._lost_listeners: list[Callable[[str], None]] = []
        self._subs: list = []
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._outbox_ready = asyncio.Event()
        self.sync_interval_s = sync_interval_s  # batching window of replica sync messages

    def on_worker_lost(self, listener: Callable[[str], None]) -> None:
        """`listener(worker_id)` runs when a worker says goodbye or its heartbeat lapses."""
        self._lost_listeners.append(listener)

    async def start(self) -> None:
        ns = self.ns
        wanted = [subjects.heartbeat_all(ns), subjects.load_events_all(ns)]
        if self.track_kv:
            wanted.append(subjects.kv_events_all(ns))
        self._subs = [await self.nc.subscribe(subject, cb=self._on_event) for subject in wanted]
        if self.router.router_id:
            self._subs.append(await self.nc.subscribe(subjects.router_sync(ns), cb=self._on_sync))
        if self.serve:
            self._subs.append(await self.nc.subscribe(subjects.router_service(ns), queue=ROUTER_QUEUE_GROUP,
                                                      cb=self._on_route))
        self._loops = [asyncio.create_task(self._expire_loop()), asyncio.create_task(self._outbox_loop())]
        await self.nc.flush()

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        await self._publish_outbox()
        tasks = [*self._tasks, *self._loops]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- event plane ----------------------------------------------------------------------------

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = event_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("bad event on %s: %s", msg.subject, exc)
            return
        match event:
            case Heartbeat() if (problem := heartbeat_problem(event)) is not None:
                log.warning("bad heartbeat on %s dropped: %s", msg.subject, problem)
            case Heartbeat():
                if self.router.on_heartbeat(event) and self.track_kv:
                    self._spawn(self._dump(event.card.worker_id))
            case KvEventBatch():
                if self.router.on_kv_events(event):
                    self._spawn(self._dump(event.worker_id))
            case LoadReport():
                self.router.on_load(event)
            case Goodbye(worker_id=worker_id):
                self.router.on_goodbye(worker_id)
                self._notify_lost(worker_id)

    async def _on_sync(self, msg: Msg) -> None:
        try:
            batch = sync_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("bad router sync batch: %s", exc)
            return
        if batch.router_id == self.router.router_id:
            return  # our own batch, echoed back by NATS
        for event in batch.events:
            self.router.apply_sync(event)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dump(self, worker_id: str) -> None:
        """Ask a worker for its whole cache (first sight, event-id gap, or events announced but never seen)."""
        for _ in range(MAX_DUMP_TRIES):
            self.router.begin_dump(worker_id)
            try:
                reply = await self.nc.request(subjects.control(self.ns, worker_id), control_encoder.encode(DumpKv()),
                                              timeout=self.dump_timeout_s)
                if not self.router.apply_dump(dump_decoder.decode(reply.data)):
                    return
            except (nats.errors.Error, msgspec.DecodeError, asyncio.TimeoutError) as exc:
                log.warning("kv dump from %s failed: %s", worker_id, exc)
                break
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

    # --- replica sync ---------------------------------------------------------------------------

    def _flush_soon(self) -> None:
        if self.router.outbox:
            self._outbox_ready.set()

    async def _outbox_loop(self) -> None:
        """One sync message per interval at most: replicas see load a few ms late, at a fraction of the cost."""
        while True:
            await self._outbox_ready.wait()
            await asyncio.sleep(self.sync_interval_s)
            self._outbox_ready.clear()
            await self._publish_outbox()

    async def _publish_outbox(self) -> None:
        events = self.router.take_outbox()
        if events:
            batch = SyncBatch(router_id=events[0].router_id, events=events)
            await self.nc.publish(subjects.router_sync(self.ns), routing_encoder.encode(batch))

    # --- decisions ------------------------------------------------------------------------------

    async def route(self, request: RouteRequest) -> RouteDecision:
        try:
            return self.router.route(request)
        finally:
            self._flush_soon()

    def on_first_token(self, request_id: str) -> None:
        self.router.on_first_token(request_id)
        self._flush_soon()

    def on_finish(self, request_id: str) -> None:
        self.router.on_finish(request_id)
        self._flush_soon()

    async def _on_route(self, msg: Msg) -> None:
        """Standalone service: one RouteRequest in, a RouteDecision or RouteError out."""
        try:
            answer = await self.route(route_request_decoder.decode(msg.data))
        except msgspec.DecodeError as exc:
            answer = RouteError(code="invalid_request", message=f"bad route request: {exc}")
        except MeshError as exc:
            answer = RouteError(code=exc.code, message=exc.message, retry_after=exc.retry_after, param=exc.param)
        except Exception as exc:  # the edge of the service: answer, never leave the client waiting for a timeout
            log.exception("route request failed")
            answer = RouteError(code="internal_error", message=f"router error: {type(exc).__name__}")
        else:
            if self.on_decision is not None:
                self.on_decision(answer)
        if msg.reply:
            await self.nc.publish(msg.reply, routing_encoder.encode(answer))


class RemoteRouter(RouterService):
    """Frontend side of a standalone `diffmesh router`: decisions by request/reply, liveness from heartbeats.

    First-token and finish notices go out as sync events, which every router replica applies.
    """

    def __init__(self, nc: nats.NATS, namespace: str, router: Router, timeout_s: float = 2.0,
                 client_id: str | None = None):
        super().__init__(nc, namespace, router, track_kv=False)
        self.timeout_s = timeout_s
        self.client_id = client_id or new_router_id("client")

    async def route(self, request: RouteRequest) -> RouteDecision:
        try:
            reply = await self.nc.request(subjects.router_service(self.ns), routing_encoder.encode(request),
                                          timeout=self.timeout_s)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, asyncio.TimeoutError) as exc:
            raise WorkerUnavailable(f"no router service answered on {subjects.router_service(self.ns)}: "
                                    f"{type(exc).__name__}", retry_after=self.router.config.retry_after_s) from None
        try:
            answer = route_reply_decoder.decode(reply.data)
        except msgspec.DecodeError as exc:
            log.warning("bad answer from the router service dropped: %s", exc)
            raise WorkerUnavailable("the router service answered nonsense", retry_after=self.router.config.retry_after_s) from None
        if isinstance(answer, RouteError):
            raise error_from_code(answer.code, answer.message, param=answer.param, retry_after=answer.retry_after)
        self.router.note_decision(answer)
        return answer

    def on_first_token(self, request_id: str) -> None:
        self._notify(request_id, "prefill_done")

    def on_finish(self, request_id: str) -> None:
        self._notify(request_id, "free")

    def _notify(self, request_id: str, kind: str) -> None:
        self.router.outbox.append(SyncEvent(router_id=self.client_id, request_id=request_id, kind=kind))
        self._outbox_ready.set()


def build_router_service(nc: nats.NATS, namespace: str, mode: str, router_url: str | None) -> RouterService:
    """A frontend's router: embedded and synced with other frontends (router_url None), or a client of `diffmesh router`.

    Policy knobs other than the mode come from DIFFMESH_ROUTER_* variables, as for `diffmesh router`.
    """
    try:
        config = RouterConfig(policy=from_env(PolicyConfig, prefix="DIFFMESH_ROUTER_", mode=mode))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if router_url is None:
        return RouterService(nc, namespace, Router(config, router_id=new_router_id("frontend")))
    if router_url == "nats":
        return RemoteRouter(nc, namespace, Router(config))
    raise ConfigError(f"router_url={router_url!r}: use 'nats' for the standalone router service, or leave it unset")


@dataclass(frozen=True)
class ServiceConfig:
    """The standalone router process (`diffmesh router`): bus, namespace, routing settings, optional metrics."""

    nats: NatsConfig = field(default_factory=NatsConfig)
    namespace: str = "dm"
    router: RouterConfig = field(default_factory=RouterConfig)
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = None  # None = no metrics server


async def serve(config: ServiceConfig, stop: asyncio.Event, ready: asyncio.Future | None = None) -> None:
    """Connect, answer RouteRequests until `stop`, drain. `ready` gets the RouterService once it answers."""
    nc = await connect(config.nats, name="diffmesh-router")
    router = Router(config.router, router_id=new_router_id())
    server, gauges = _start_metrics(config.metrics_host, config.metrics_port) if config.metrics_port else (None, None)
    service = RouterService(nc, config.namespace, router, serve=True, on_decision=gauges.observe if gauges else None)
    await service.start()
    refresher = asyncio.create_task(_refresh_metrics(gauges, router)) if gauges else None
    log.info("router %s serving %s in namespace %s", router.router_id, config.router.policy.mode, config.namespace)
    if ready is not None:
        ready.set_result(service)
    try:
        await stop.wait()
    finally:
        if refresher is not None:
            refresher.cancel()
            server.shutdown()
        await service.stop()
        await close_bus(nc)


def _start_metrics(host: str, port: int):
    from prometheus_client import CollectorRegistry, start_http_server

    from shell.metrics import RouterMetrics

    registry = CollectorRegistry()
    server, _ = start_http_server(port, host, registry=registry)
    return server, RouterMetrics(registry)


async def _refresh_metrics(gauges, router, interval_s: float = 1.0) -> None:
    while True:
        gauges.refresh(router)
        await asyncio.sleep(interval_s)
