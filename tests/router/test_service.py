"""The router's NATS shell on a real server: replica sync, the standalone service and its client, dumps on demand."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from protocol import subjects
from protocol.control import KvDump, control_decoder, control_encoder
from protocol.errors import InvalidRequest, WorkerUnavailable
from protocol.events import KvEvent, KvStored, StoredBlock, event_encoder
from router.core import Router
from router.service import RemoteRouter, RouterService, ServiceConfig, new_router_id, serve
from shell.bus import free_port, wait_for
from shell.config import NatsConfig
from tests.meshkit import nats_client
from tests.router.sim import card, heartbeat, route_request


async def beat(nc, namespace: str, worker_id: str, last_kv_event_id: int = 0) -> None:
    worker_card = card(worker_id, block_size=4, capacity=64, max_queue=64)
    await nc.publish(subjects.heartbeat(namespace, worker_id), event_encoder.encode(heartbeat(worker_card, last_kv_event_id)))
    await nc.flush()


@pytest.fixture
async def nc(nats_server):
    async with nats_client(nats_server.url) as client:
        yield client


async def test_replicas_share_predicted_load_over_the_sync_subject(nc, mesh):
    ns = mesh.namespace
    services = [RouterService(nc, ns, Router(router_id=new_router_id())) for _ in range(2)]
    for service in services:
        await service.start()
    try:
        for worker_id in ("w0", "w1"):
            await beat(nc, ns, worker_id)
        await wait_for(lambda: all(len(s.router.tracker.workers) == 2 for s in services))
        decision = await services[0].route(route_request("q1", range(20)))
        other = services[1].router.tracker
        await wait_for(lambda: other.workers[decision.worker_id].num_active == 1)
        assert other.workers[decision.worker_id].predicted_prefill_tokens == 20
        services[0].on_first_token("q1")
        services[0].on_finish("q1")
        await wait_for(lambda: other.workers[decision.worker_id].num_active == 0)
        assert other.workers[decision.worker_id].num_active_blocks == 0
    finally:
        for service in services:
            await service.stop()


async def test_standalone_router_serves_remote_clients(nats_server, nc, mesh):
    ns = mesh.namespace
    stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
    port = free_port()
    task = asyncio.create_task(serve(ServiceConfig(nats=NatsConfig(url=nats_server.url), namespace=ns, metrics_host="127.0.0.1",
                                                   metrics_port=port), stop, ready))
    standalone = await ready
    client = RemoteRouter(nc, ns, Router())
    await client.start()
    try:
        await beat(nc, ns, "w0")
        await wait_for(lambda: "w0" in standalone.router.tracker.workers and client.router.live_workers("m"))
        decision = await client.route(route_request("q1", range(16)))
        assert decision.worker_id == "w0" and decision.num_blocks == 4
        assert standalone.router.tracker.workers["w0"].num_active == 1
        client.on_first_token("q1")
        client.on_finish("q1")
        await wait_for(lambda: standalone.router.tracker.workers["w0"].num_active == 0)
        with pytest.raises(WorkerUnavailable):
            await client.route(route_request("q2", range(16), model="no-such-model"))
        with pytest.raises(InvalidRequest) as info:
            await client.route(route_request("q3", range(16), mode="fastest"))
        assert info.value.code == "invalid_request" and info.value.param == "$.nvext.router_mode"
        async with aiohttp.ClientSession() as session:
            async def scraped():
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
                return 'dynamo_router_requests_total{mode="kv"} 1.0' in text and 'dynamo_router_indexed_blocks{worker_id="w0"}' in text
            await wait_for(scraped, 5.0, 0.05)
    finally:
        await client.stop()
        stop.set()
        await task
    nobody = RemoteRouter(nc, ns, Router(), timeout_s=0.5)
    with pytest.raises(WorkerUnavailable):
        await nobody.route(route_request("q4", range(16)))


async def test_service_asks_a_new_worker_for_its_dump(nc, mesh):
    ns = mesh.namespace
    dump = KvDump(worker_id="w0", last_event_id=7, events=[
        KvEvent(event_id=7, data=KvStored(parent_hash=None, blocks=[StoredBlock(1, 11), StoredBlock(2, 22)]))])

    async def answer(msg):
        assert type(control_decoder.decode(msg.data)).__name__ == "DumpKv"
        await nc.publish(msg.reply, control_encoder.encode(dump))

    sub = await nc.subscribe(subjects.control(ns, "w0"), cb=answer)
    service = RouterService(nc, ns, Router())
    await service.start()
    try:
        await beat(nc, ns, "w0", last_kv_event_id=7)  # first sight with events already published: dump
        await wait_for(lambda: service.router.index.find_matches([11, 22]) == {"w0": 2})
        assert service.router.stats.num_dumps == 1 and service.router.feed.last_event_id["w0"] == 7
    finally:
        await service.stop()
        await sub.unsubscribe()
