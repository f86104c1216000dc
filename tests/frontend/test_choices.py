"""n choices are n bus requests with one lifecycle: all start or none does, and a disconnect stops them all."""

from __future__ import annotations

import aiohttp

from shell.bus import wait_for
from workers.mocker.engine import MockerConfig
from workers.mocker.worker import MockerEngine

SLOW = MockerConfig(speedup_ratio=1.0, max_num_seqs=1)  # real simulated time, one sequence at a time


def body(**fields) -> dict:
    return {"model": "mocker", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2000, **fields}


async def test_a_choice_that_cannot_start_fails_the_request_and_stops_the_others(mesh):
    await mesh.start_frontend()
    worker = await mesh.add_worker(MockerEngine("mocker", SLOW, max_queue=0))
    await mesh.wait_models("mocker", 1)
    async with aiohttp.ClientSession() as session, session.post(f"{mesh.url}/v1/chat/completions", json=body(n=2)) as response:
        assert response.status == 503 and response.headers["Retry-After"]
    await wait_for(lambda: worker.runtime.num_cancelled == 1, timeout_s=20)  # the choice that did start
    assert not worker.engine.scheduler.running and worker.runtime.num_active == 0


async def test_disconnect_cancels_every_choice_on_the_workers(mesh):
    await mesh.start_frontend()
    worker = await mesh.add_worker(MockerEngine("mocker", MockerConfig(speedup_ratio=1.0)))
    await mesh.wait_models("mocker", 1)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{mesh.url}/v1/chat/completions", json=body(n=3, stream=True)) as response:
            assert response.status == 200
            await response.content.readline()
    await wait_for(lambda: worker.runtime.num_cancelled == 3, timeout_s=20)
    assert not worker.engine.scheduler.running and not worker.engine.scheduler.waiting
