"""A 3-node NATS cluster loses a node under load: clients reconnect, resubscribe, and lost streams migrate.

The killed node is the frontend's and two workers' own; the third worker is on another node. Core NATS delivers at
most once, so whatever was in flight on the dead node's sockets is gone: a reply stream that lost messages shows a
seq gap, or goes quiet past the stall timeout, and migrates; a request that never arrived goes quiet the same way.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from shell.bus import wait_for
from shell.config import NatsConfig
from tests.clusterkit import NatsCluster
from tests.meshkit import Mesh
from workers.mocker.engine import MockerConfig
from workers.mocker.worker import MockerEngine

pytestmark = pytest.mark.slow
TIMED = MockerConfig(speedup_ratio=1.0)  # ~6 ms per decode step: requests are in flight when the node dies
NUM_REQUESTS, CONCURRENCY, MAX_TOKENS = 160, 24, 60


@pytest.fixture
async def cluster_mesh():
    cluster = NatsCluster(3).start()
    mesh = Mesh(cluster.url)
    try:
        yield cluster, mesh
    finally:
        await mesh.close()
        cluster.stop()


def _ordered(cluster: NatsCluster, first: int) -> NatsConfig:
    """All nodes, `first` tried first (no shuffling), so the test knows who sits on which node."""
    nodes = cluster.nodes[first:] + cluster.nodes[:first]
    return NatsConfig(url=",".join(n.url for n in nodes), randomize=False, reconnect_wait_s=0.1)


async def _chat(session, url: str, prompt: str) -> str:
    body = {"model": "mocker", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS, "stream": True}
    text = []
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                event = json.loads(line[6:])
                assert "error" not in event, event
                if event["choices"]:
                    text.append(event["choices"][0]["delta"].get("content") or "")
    return "".join(text)


async def test_losing_one_node_of_three_under_load_fails_no_request(cluster_mesh):
    cluster, mesh = cluster_mesh
    await mesh.start_frontend(nats=_ordered(cluster, 0), stall_timeout_s=2.0)
    workers = [await mesh.add_worker(MockerEngine("mocker", TIMED), nats=_ordered(cluster, first), heartbeat_s=0.5)
               for first in (0, 0, 1)]
    await mesh.wait_models("mocker", 3)
    doomed = cluster.nodes[0]
    assert cluster.node_of("diffmesh-frontend") is doomed
    assert [w.runtime.nc.connected_url.port for w in workers] == [doomed.port, doomed.port, cluster.nodes[1].port]
    prompts = [f"prompt number {i}" for i in range(8)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        expected = {p: await _chat(session, mesh.url, p) for p in prompts}  # deterministic: the clean answers
        done: list[bool] = []
        queue = list(range(NUM_REQUESTS))

        async def client():
            while queue:
                i = queue.pop()
                text = await _chat(session, mesh.url, prompts[i % len(prompts)])
                done.append(text == expected[prompts[i % len(prompts)]])

        clients = [asyncio.ensure_future(client()) for _ in range(CONCURRENCY)]
        await wait_for(lambda: len(done) >= NUM_REQUESTS // 4, 60)
        doomed.kill()  # SIGKILL: the frontend and two workers lose their connection mid-load
        await asyncio.gather(*clients)
        assert len(done) == NUM_REQUESTS and all(done)  # every request completed, with the clean run's text
        await wait_for(lambda: all(w.runtime.nc.is_connected for w in workers), 30)
        assert {w.runtime.nc.connected_url.port for w in workers} <= {n.port for n in cluster.live}
        async with session.get(f"{mesh.url}/metrics") as response:
            metrics = await response.text()
        # the registry (R3 buckets) still takes a new model's card with one node gone, and the frontend reads it
        assert set(cluster.streams(cluster.nodes[1]).values()) == {3}
        await mesh.add_worker(MockerEngine("after-loss", MockerConfig(speedup_ratio=float("inf"))), nats=_ordered(cluster, 1))
        await mesh.wait_models("after-loss", 1)
        body = {"model": "after-loss", "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 4}
        async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200, await response.text()
    migrated = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("dynamo_frontend_model_migration_total{"))
    print(f"node loss: {NUM_REQUESTS} requests, all completed, {migrated:.0f} migrated")
