"""A worker that dies, stalls or gives up mid-request: the request moves to another worker instead of failing.

Text streams continue after the tokens the client already has; the mocker's tokens are a pure function of the
prompt, seed and position, so the continued stream must equal a clean run token for token.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp

from shell.bus import wait_for
from shell.process import EXIT_DRAIN_TIMEOUT

PROMPT = [{"role": "user", "content": "tell me a long story"}]


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def _metrics(session, mesh) -> str:
    async with session.get(f"{mesh.url}/metrics") as response:
        return await response.text()


async def _stream(session, mesh, body: dict, on_event=None) -> tuple[list[str], dict, str]:
    """The content pieces, the final usage and the serving worker header of one streamed chat completion."""
    pieces, usage, finish = [], None, None
    async with session.post(f"{mesh.url}/v1/chat/completions", json={**body, "stream": True,
                                                                     "stream_options": {"include_usage": True}}) as response:
        assert response.status == 200, await response.text()
        worker = response.headers["x-diffmesh-worker"]
        async for line in response.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                pieces.append(event["choices"][0]["delta"]["content"])
            if event["choices"]:
                finish = event["choices"][0]["finish_reason"] or finish
            usage = event.get("usage") or usage
            if on_event is not None:
                await on_event(len(pieces), worker)
    return pieces, {**usage, "finish_reason": finish}, worker


async def _two_mockers(mesh, *victim_flags: str, **frontend):
    """Round robin over ["survivor", "victim"]: the first request not pinned to a worker goes to the victim."""
    await mesh.start_frontend(router_mode="round_robin", **frontend)
    victim = mesh.spawn_worker("mocker", "--worker-id", "victim", "--speedup-ratio", "1", *victim_flags)
    survivor = mesh.spawn_worker("mocker", "--worker-id", "survivor", "--speedup-ratio", "1", "--heartbeat", "0.2")
    await mesh.wait_models("mocker", 2)
    return victim, survivor


def _on_victim(after: int, act):
    """An SSE callback that runs `act()` once, after `after` content events, if the victim serves the stream."""
    done = []

    async def on_event(count: int, worker: str) -> None:
        assert worker == "victim"
        if count == after and not done:
            done.append(True)
            act()

    return on_event


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
        metrics = await _metrics(session, mesh)
    assert served == {mesh.workers[0].worker_id}
    assert _metric(metrics, 'dynamo_frontend_model_migration_total{migration_type="new_request"') >= 2


async def _clean_and_victim_runs(mesh, act, max_tokens: int = 200, after: int = 20):
    """A clean run on the survivor, then the same request on the victim with `act()` after `after` events."""
    body = {"model": "mocker", "messages": PROMPT, "max_tokens": max_tokens}
    async with aiohttp.ClientSession() as session:
        clean = await _stream(session, mesh, {**body, "nvext": {"worker_id": "survivor"}})
        moved = await _stream(session, mesh, body, _on_victim(after, act))
        metrics = await _metrics(session, mesh)
    return clean, moved, metrics


def _assert_same_stream(clean, moved, max_tokens: int = 200) -> None:
    (clean_pieces, clean_usage, _), (pieces, usage, worker) = clean, moved
    assert worker == "victim"
    assert "".join(pieces) == "".join(clean_pieces)
    assert len(pieces) == len(clean_pieces) == max_tokens  # one event per token: none lost, none twice
    # prompt and completion tokens of the whole request; cached tokens are the last worker's hit, which depends on
    # how many tokens it had already delivered (the survivor holds the clean run's blocks), so only bounded here
    cached = usage.pop("prompt_tokens_details")["cached_tokens"]
    clean_usage.pop("prompt_tokens_details")
    assert usage == clean_usage and 0 <= cached <= usage["prompt_tokens"]


async def test_worker_killed_mid_stream_continues_elsewhere_with_the_tokens_of_a_clean_run(mesh):
    victim, _ = await _two_mockers(mesh, "--heartbeat", "0.2")
    clean, moved, metrics = await _clean_and_victim_runs(mesh, lambda: os.killpg(victim.pid, signal.SIGKILL))
    _assert_same_stream(clean, moved)
    assert _metric(metrics, 'dynamo_frontend_model_migration_total{migration_type="ongoing_request"') == 1


async def test_stalled_worker_mid_stream_is_left_for_another_after_the_stall_timeout(mesh):
    # heartbeats every 30 s: the router would think the frozen victim alive for 90 s; only the quiet stream tells
    victim, _ = await _two_mockers(mesh, "--heartbeat", "30", stall_timeout_s=1.0)
    try:
        clean, moved, metrics = await _clean_and_victim_runs(mesh, lambda: os.killpg(victim.pid, signal.SIGSTOP))
    finally:
        os.killpg(victim.pid, signal.SIGCONT)
    _assert_same_stream(clean, moved)
    assert _metric(metrics, 'dynamo_frontend_model_migration_total{migration_type="ongoing_request"') == 1


async def test_worker_that_gives_up_at_its_drain_timeout_hands_the_stream_on(mesh):
    victim, _ = await _two_mockers(mesh, "--heartbeat", "0.2", "--drain-timeout", "0.2")
    clean, moved, metrics = await _clean_and_victim_runs(mesh, lambda: os.killpg(victim.pid, signal.SIGTERM))
    _assert_same_stream(clean, moved)
    assert victim.wait(20) == EXIT_DRAIN_TIMEOUT  # it drained, cut what was left at the timeout, and said so
    assert _metric(metrics, 'dynamo_frontend_model_migration_total{migration_type="ongoing_request"') == 1


async def test_non_streaming_request_restarts_and_answers_what_a_clean_run_answers(mesh):
    victim, _ = await _two_mockers(mesh, "--heartbeat", "0.2")
    body = {"model": "mocker", "messages": PROMPT, "max_tokens": 300}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{mesh.url}/v1/chat/completions", json={**body, "nvext": {"worker_id": "survivor"}}) as r:
            clean = await r.json()
        gauge = 'dynamo_router_worker_active_requests{worker_id="victim"}'

        async def on_victim():
            return _metric(await _metrics(session, mesh), gauge) == 1

        async def kill_when_routed():
            await wait_for(on_victim, 20)
            os.killpg(victim.pid, signal.SIGKILL)

        kill = asyncio.ensure_future(kill_when_routed())
        async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
            moved, worker = await r.json(), r.headers["x-diffmesh-worker"]
        await kill
    assert worker == "survivor"
    assert moved["choices"][0]["message"]["content"] == clean["choices"][0]["message"]["content"]
    assert moved["usage"] == clean["usage"]


async def test_with_migration_off_a_lost_stream_ends_with_an_in_band_error(mesh):
    victim, _ = await _two_mockers(mesh, "--heartbeat", "0.2", migration_limit=0)
    body = {"model": "mocker", "messages": PROMPT, "max_tokens": 200, "stream": True}
    events = []
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
            assert response.headers["x-diffmesh-worker"] == "victim"
            async for line in response.content:
                if line.startswith(b"data: "):
                    events.append(line[6:].strip())
                    if len(events) == 5:
                        os.killpg(victim.pid, signal.SIGKILL)
    assert json.loads(events[-1])["error"]["code"] == "worker_lost" and len(events) < 200


def test_image_requests_carry_a_seed_so_a_restart_draws_the_same_images():
    from frontend.images import build_image_request
    from protocol.openai_images import ImageGenerationRequest

    drawn = {build_image_request(ImageGenerationRequest(prompt="a cat"), "m", f"r{i}").seed for i in range(4)}
    assert None not in drawn and len(drawn) == 4  # still random per request, but fixed before the first attempt
    assert build_image_request(ImageGenerationRequest(prompt="a cat", seed=5), "m", "r").seed == 5
