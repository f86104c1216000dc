"""The KV router through the real mesh: frontend, NATS, two mocker workers, the x-diffmesh-worker header."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

import router
from router.service import ServiceConfig
from shell.bus import wait_for
from shell.config import NatsConfig
from tests.meshkit import FAST_MOCKER
from workers.mocker.engine import MockerConfig

BLOCK = FAST_MOCKER.block_size  # 64 tokens
PACED_MOCKER = MockerConfig(speedup_ratio=1.0)  # real simulated time: a burst stays in flight together


def prefix(seed: int, num_blocks: int = 8) -> list[int]:
    """Token ids of whole blocks, distinct per seed (the mocker's vocabulary has 800 ids)."""
    return [(seed * 7919 + i * 31) % 700 + 50 for i in range(num_blocks * BLOCK)]


async def complete(session: aiohttp.ClientSession, url: str, tokens: list[int], max_tokens: int = 4) -> str:
    body = {"model": "mocker", "prompt": tokens, "max_tokens": max_tokens}
    async with session.post(f"{url}/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        return response.headers["x-diffmesh-worker"]


async def metric(session: aiohttp.ClientSession, url: str, name: str, **labels) -> float:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}{{{wanted}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def indexed(session, url: str, worker_id: str, at_least: int) -> None:
    """The frontend's router has seen the worker's KV events for at least this many blocks."""
    async def enough():
        return await metric(session, url, "dynamo_router_indexed_blocks", worker_id=worker_id) >= at_least

    await wait_for(enough, 10.0, 0.02)


@pytest.fixture
async def two_mockers(mesh):
    await mesh.start_frontend()
    await mesh.add_mocker(config=PACED_MOCKER)
    await mesh.add_mocker(config=PACED_MOCKER)
    await mesh.wait_models("mocker", 2)
    return mesh


async def test_request_sharing_a_long_prefix_goes_to_the_worker_that_served_the_first(two_mockers):
    url = two_mockers.url
    async with aiohttp.ClientSession() as session:
        for seed in range(4):  # 4 independent prefixes: a coin flip would get all 4 right 1 time in 16
            first = await complete(session, url, prefix(seed) + [1, 2, 3])
            await indexed(session, url, first, 8)
            second = await complete(session, url, prefix(seed) + [4, 5, 6, 7, 8])
            assert second == first, f"prefix {seed}: second request went to {second}, first to {first}"
        assert await metric(session, url, "dynamo_router_kv_hit_rate") > 0.4  # 8 of 8 blocks on every second request
        # first tokens came back after simulated prefill time: the router has learned the rate of the worker it used
        assert await metric(session, url, "dynamo_router_worker_prefill_tokens_per_second", worker_id=first) > 0
        assert await metric(session, url, "dynamo_component_kv_cache_events_applied", event_type="stored",
                            status="ok") >= 4


async def test_burst_of_identical_prefixes_does_not_all_land_on_one_worker(two_mockers):
    url = two_mockers.url
    shared = prefix(99)
    async with aiohttp.ClientSession() as session:
        owner = await complete(session, url, shared + [1])
        await indexed(session, url, owner, 8)
        burst = [complete(session, url, shared + [100 + i] * (3 * BLOCK), max_tokens=24) for i in range(8)]
        workers = await asyncio.gather(*burst)
    assert len(set(workers)) == 2, workers  # the prefix alone would send all 8 to its owner
    assert workers.count(owner) >= 2  # ...and it still takes its share


async def test_frontend_uses_the_standalone_router_when_router_url_is_nats(mesh, nats_server):
    stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
    task = asyncio.create_task(router.serve(ServiceConfig(nats=NatsConfig(url=nats_server.url), namespace=mesh.namespace), stop, ready))
    standalone = await ready
    try:
        await mesh.start_frontend(router_url="nats")
        worker = await mesh.add_mocker()
        await mesh.wait_models("mocker", 1)
        async with aiohttp.ClientSession() as session:
            served = await complete(session, mesh.url, prefix(5) + [9])
            assert served == worker.worker_id
            await wait_for(lambda: standalone.router.tracker.workers[served].num_routed == 1
                           and standalone.router.tracker.workers[served].num_active == 0)
            await indexed_in(standalone, served, 8)
            await complete(session, mesh.url, prefix(5) + [10])
            assert await metric(session, mesh.url, "dynamo_router_kv_hit_rate") > 0.4  # counted from remote decisions
    finally:
        await mesh.close()
        stop.set()
        await task


async def indexed_in(service, worker_id: str, at_least: int) -> None:
    await wait_for(lambda: service.router.index.num_blocks(worker_id) >= at_least)
