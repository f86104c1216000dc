"""Input limits (400 naming the field) and admission: at 10x overload, 503 + Retry-After and bounded counts."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from diffmesh.cli import build_parser
from shell.bus import wait_for
from shell.config import ConfigError, RequestLimits
from shell.flags import frontend_config
from workers.mocker.engine import MockerConfig
from workers.mocker.worker import MockerEngine

LIMITS = RequestLimits(max_messages=3, max_images=1, max_tokens=100, max_steps=50, max_image_steps=30, max_image_side=128)
USER = {"role": "user", "content": "x"}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


@pytest.fixture
async def limited(mesh):
    await mesh.start_frontend(limits=LIMITS)
    await mesh.add_mocker(config=MockerConfig(speedup_ratio=float("inf"), context_length=64))
    await mesh.wait_models("mocker", 1)
    return mesh


@pytest.mark.parametrize(("path", "body", "param"), [
    ("chat/completions", {"messages": [USER] * 4}, "$.messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": [IMAGE]}, {"role": "user", "content": [IMAGE]}]},
     "$.messages[1].content[0]"),
    ("chat/completions", {"messages": [USER], "max_tokens": 101}, "$.max_tokens"),
    ("chat/completions", {"messages": [USER], "max_completion_tokens": 101}, "$.max_completion_tokens"),
    ("chat/completions", {"messages": [USER], "nvext": {"steps": 51}}, "$.nvext.steps"),
    ("chat/completions", {"messages": [{"role": "user", "content": "word " * 80}]}, "$.messages"),  # prompt > context
    ("completions", {"prompt": list(range(64))}, "$.prompt"),  # exactly the context: no room for one token
    ("completions", {"prompt": "x", "max_tokens": 101}, "$.max_tokens"),
    ("images/generations", {"prompt": "a cat", "size": "256x128"}, "$.size"),
    ("images/generations", {"prompt": "a cat", "nvext": {"num_inference_steps": 31}}, "$.nvext.num_inference_steps"),
])
async def test_request_over_a_limit_is_a_400_naming_the_field(limited, path, body, param):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{limited.url}/v1/{path}", json={"model": "mocker", **body}) as response:
            assert response.status == 400, await response.text()
            error = (await response.json())["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")


async def test_requests_at_the_limits_are_served(limited):
    body = {"model": "mocker", "messages": [USER] * 3, "max_tokens": 40}  # 3 messages, prompt + 40 within 64
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{limited.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["usage"]["completion_tokens"] == 40


def test_limits_come_from_env_and_flags_and_bad_values_name_the_setting(monkeypatch):
    monkeypatch.setenv("DIFFMESH_LIMIT_MAX_MESSAGES", "7")
    args = build_parser().parse_args(["frontend", "--limit-max-tokens", "99", "--max-inflight", "5"])
    config = frontend_config(args)
    assert (config.limits.max_messages, config.limits.max_tokens, config.max_inflight) == (7, 99, 5)
    assert RequestLimits().max_image_side == 4096  # the default when nothing is set
    monkeypatch.setenv("DIFFMESH_LIMIT_MAX_STEPS", "zero")
    with pytest.raises(ConfigError, match="DIFFMESH_LIMIT_MAX_STEPS"):
        frontend_config(build_parser().parse_args(["frontend"]))
    monkeypatch.setenv("DIFFMESH_LIMIT_MAX_STEPS", "0")
    with pytest.raises(ConfigError, match="max_steps=0"):
        frontend_config(build_parser().parse_args(["frontend"]))


async def _burst(mesh, count: int, body: dict, num_queued: int = 0):
    """`count` concurrent streams; the accepted ones stay open (first event read) until `release` is set.

    Returns once every request but `num_queued` has its status (queued ones answer when a slot frees)."""
    release, statuses = asyncio.Event(), []

    async def one(session):
        async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
            statuses.append((response.status, response.headers.get("Retry-After")))
            if response.status == 200:
                await response.content.readline()
                await release.wait()

    session = aiohttp.ClientSession()
    tasks = [asyncio.ensure_future(one(session)) for _ in range(count)]
    await wait_for(lambda: len(statuses) == count - num_queued, 60)
    return session, tasks, release, statuses


async def _health(session, mesh) -> dict:
    async with session.get(f"{mesh.url}/health") as response:
        return await response.json()


async def test_ten_times_overload_gets_503_retry_after_and_in_flight_counts_stay_at_capacity(mesh):
    await mesh.start_frontend()
    engine = MockerEngine("mocker", MockerConfig(speedup_ratio=1.0, max_num_seqs=2), max_queue=2)
    worker = await mesh.add_worker(engine)
    await mesh.wait_models("mocker", 1)
    capacity = 2 + 2  # slots + queue
    body = {"model": "mocker", "messages": [USER], "max_tokens": 3000, "stream": True}  # ~17 s each: none ends here
    session, tasks, release, statuses = await _burst(mesh, 10 * capacity, body, num_queued=2)
    try:
        # two stream, two wait in the worker's queue (no answer yet), and the 36 others were refused at once
        assert sorted(s for s, _ in statuses) == [200] * 2 + [503] * 36
        assert all(int(retry) >= 1 for status, retry in statuses if status == 503)
        health = await _health(session, mesh)
        assert health["admitted"] == health["in_flight"] == capacity  # nothing is held for the refused ones
        assert (worker.runtime.num_active, worker.runtime.num_waiting, len(worker.runtime.lanes.lanes)) == (2, 2, 4)
        assert len(engine.scheduler.running) == 2 and not engine.scheduler.waiting
        assert worker.runtime.num_refused == 0  # the router knew it was full: the refusals cost no bus round trip
    finally:
        release.set()
        await asyncio.gather(*tasks)
        await session.close()
    await wait_for(lambda: worker.runtime.num_active + worker.runtime.num_waiting == 0, 30)  # the streams were cancelled


async def test_frontend_turns_requests_away_past_max_inflight_before_reading_them(mesh):
    await mesh.start_frontend(max_inflight=3)
    await mesh.add_mocker(config=MockerConfig(speedup_ratio=1.0))
    await mesh.wait_models("mocker", 1)
    body = {"model": "mocker", "messages": [USER], "max_tokens": 3000, "stream": True}
    session, tasks, release, statuses = await _burst(mesh, 30, body)
    try:
        assert sorted(s for s, _ in statuses) == [200] * 3 + [503] * 27
        health = await _health(session, mesh)
        assert (health["admitted"], health["admitted_peak"], health["turned_away"]) == (3, 3, 27)
        async with session.get(f"{mesh.url}/metrics") as response:
            assert 'endpoint="chat_completions",model="unknown",request_type="unary",status="503"} 27.0' in await response.text()
    finally:
        release.set()
        await asyncio.gather(*tasks)
        await session.close()
