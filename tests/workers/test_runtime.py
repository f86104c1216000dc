"""Worker runtime on a real bus: reply ordering, one terminal message, cancel, overload, drain, worker death."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp

from shell.bus import wait_for
from frontend.bus import Requester
from protocol import subjects
from protocol.kv import tokens_to_bytes
from protocol.work import Chunk, Final, GenerateRequest, SamplingOptions, is_terminal, work_encoder
from tests.meshkit import nats_client
from workers.mocker.engine import MockerConfig
from workers.mocker.worker import MockerEngine

SLOW = MockerConfig(speedup_ratio=1.0)  # real simulated time: ~6 ms per decode step


def _request(request_id: str, max_tokens: int, prompt: str = "hello") -> bytes:
    tokens = tokens_to_bytes([ord(c) for c in prompt])
    return work_encoder.encode(GenerateRequest(request_id=request_id, model="mocker", token_ids=tokens,
                                               sampling=SamplingOptions(max_tokens=max_tokens)))


async def _drain_stream(stream) -> list:
    replies = []
    while True:
        reply = await stream.next()
        replies.append(reply)
        if is_terminal(reply):
            return replies


async def test_replies_arrive_in_seq_order_and_end_with_exactly_one_terminal(mesh):
    worker = await mesh.add_mocker()
    async with nats_client(mesh.nats_url) as nc:
        requester = Requester(nc, mesh.namespace)
        await requester.start()
        subject = subjects.generate_direct(mesh.namespace, "mocker", worker.worker_id)
        streams = [await requester.send(subject, f"r{i}", _request(f"r{i}", 20 + i), worker.worker_id, 30) for i in range(8)]
        results = await asyncio.gather(*(_drain_stream(s) for s in streams))
        for i, replies in enumerate(results):
            assert [r.seq for r in replies] == list(range(len(replies)))
            assert sum(is_terminal(r) for r in replies) == 1 and isinstance(replies[-1], Final)
            assert replies[-1].usage.completion_tokens == 20 + i
            assert sum(len(r.token_ids) // 4 for r in replies if isinstance(r, Chunk)) == 20 + i
        await requester.stop()


async def test_full_worker_refuses_with_overloaded_and_frontend_answers_503_retry_after(mesh):
    await mesh.start_frontend()
    await mesh.add_worker(MockerEngine("mocker", MockerConfig(speedup_ratio=1.0, max_num_seqs=1), max_queue=1))
    await mesh.wait_models("mocker", 1)
    body = {"model": "mocker", "messages": [{"role": "user", "content": "x"}], "max_tokens": 150}
    async with aiohttp.ClientSession() as session:
        async def post():
            async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
                return response.status, response.headers.get("Retry-After"), await response.json()

        results = await asyncio.gather(*(post() for _ in range(8)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}
    for status, retry_after, payload in results:
        if status == 503:
            assert retry_after is not None and int(retry_after) >= 1
            assert payload["error"]["type"] == "service_unavailable"


async def test_client_disconnect_cancels_work_on_the_worker(mesh):
    await mesh.start_frontend()
    worker = await mesh.add_mocker(config=SLOW)
    await mesh.wait_models("mocker", 1)
    body = {"model": "mocker", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2000, "stream": True}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200
            await response.content.readline()  # first SSE event arrived: the worker is generating
    # the connection is closed; the frontend must send Cancel and the worker must stop generating
    await wait_for(lambda: worker.runtime.num_cancelled == 1, timeout_s=20)
    assert not worker.engine.scheduler.running and not worker.engine.scheduler.waiting
    assert worker.runtime.num_active == 0


async def test_worker_killed_mid_stream_with_no_other_worker_gives_client_an_error_not_a_hang(mesh):
    await mesh.start_frontend()
    process = mesh.spawn_worker("mocker", "--speedup-ratio", "1", "--heartbeat", "0.2")
    await mesh.wait_models("mocker", 1)
    body = {"model": "mocker", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000, "stream": True}
    events = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                events.append(line[6:].strip())
                if len(events) == 3:
                    os.killpg(process.pid, signal.SIGKILL)
    assert events[-1] != b"[DONE]"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "worker_unavailable"  # the stream tried to move on, and no worker was left
    assert len(events) < 5000


async def test_sigterm_drains_in_flight_requests_then_deregisters(mesh):
    await mesh.start_frontend()
    process = mesh.spawn_worker("mocker", "--speedup-ratio", "1", "--heartbeat", "0.2")
    await mesh.wait_models("mocker", 1)
    body = {"model": "mocker", "messages": [{"role": "user", "content": "x"}], "max_tokens": 120, "stream": True}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
            await response.content.readline()
            os.killpg(process.pid, signal.SIGTERM)
            lines = [line async for line in response.content if line.startswith(b"data: ")]
        assert lines[-1].strip() == b"data: [DONE]"
        assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert await asyncio.to_thread(process.wait, 20) == 0
        async with session.get(f"{mesh.url}/v1/models") as response:
            assert (await response.json())["data"] == []


async def test_quiet_requests_get_keepalives_so_a_short_stall_timeout_moves_nothing(mesh):
    await mesh.start_frontend(stall_timeout_s=0.5)
    engine = MockerEngine("mocker", MockerConfig(speedup_ratio=1.0, max_num_seqs=1), max_queue=4)
    worker = await mesh.add_worker(engine, keepalive_s=0.1)
    await mesh.wait_models("mocker", 1)
    # one slot: the later requests wait in the queue for ~1 s each, sending nothing but keepalives
    body = {"model": "mocker", "messages": [{"role": "user", "content": "x"}], "max_tokens": 150}
    async with aiohttp.ClientSession() as session:
        async def post():
            async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
                return response.status, await response.json()

        results = await asyncio.gather(*(post() for _ in range(3)))
        async with session.get(f"{mesh.url}/metrics") as response:
            metrics = await response.text()
    assert [status for status, _ in results] == [200] * 3
    assert all(payload["usage"]["completion_tokens"] == 150 for _, payload in results)
    assert worker.runtime.lanes.num_keepalives >= 2
    assert "dynamo_frontend_model_migration_total{" not in metrics
