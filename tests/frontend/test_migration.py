"""A worker that died before answering: the request moves to another worker instead of failing."""

from __future__ import annotations

import os
import signal

import aiohttp


async def test_requests_to_a_dead_worker_migrate_before_any_output(mesh):
    await mesh.start_frontend(router_mode="round_robin")
    await mesh.add_mocker()
    dead = mesh.spawn_worker("mocker", "--speedup-ratio", "inf", "--heartbeat", "30")  # stays "live" for 90 s
    await mesh.wait_models("mocker", 2)
    os.killpg(dead.pid, signal.SIGKILL)
    dead.wait()
    body = {"model": "mocker", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
    async with aiohttp.ClientSession() as session:
        served = set()
        for _ in range(4):  # round robin sends every other request to the dead worker first
            async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
                assert response.status == 200, await response.text()
                served.add(response.headers["x-diffmesh-worker"])
        async with session.get(f"{mesh.url}/metrics") as response:
            metrics = await response.text()
    assert served == {mesh.workers[0].worker_id}
    line = next(l for l in metrics.splitlines() if l.startswith("dynamo_frontend_model_migration_total{"))
    assert float(line.rsplit(" ", 1)[1]) >= 2
