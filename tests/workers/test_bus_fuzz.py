"""Arbitrary messages on every subject a running mesh subscribes: each bad one is logged and dropped, and the worker,
the frontend and its embedded router keep serving.

Hypothesis draws raw bytes, arbitrary msgpack, and well-formed messages of every bus type with arbitrary field values
(negative counts, huge ids, NaN floats, odd strings); they go to the worker's request, queue-group and control
subjects, and to the event-plane subjects the router reads (heartbeats, load, KV events, replica sync).
"""

from __future__ import annotations

import logging

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend.bus import Requester
from protocol import subjects
from protocol.control import Cancel, ClearCache, DumpKv
from protocol.events import Goodbye, Heartbeat, KvEventBatch, LoadReport, WorkerCard
from protocol.kv import tokens_to_bytes
from protocol.routing import SyncBatch
from protocol.work import GenerateRequest, ImageRequest, SamplingOptions, work_encoder
from shell.bus import wait_for
from tests.meshkit import Mesh, nats_client
from tests.protocol.test_decoders_fuzz import PAYLOADS


def _encoded(types) -> st.SearchStrategy[bytes]:
    def encode(message) -> bytes | None:
        try:
            return msgspec.msgpack.encode(message)
        except (OverflowError, ValueError, TypeError):  # ints beyond 64 bits, unset defaults: nothing anyone sends
            return None

    return st.one_of(*(st.from_type(t) for t in types)).map(encode).filter(lambda b: b is not None)


REQUESTS = _encoded([GenerateRequest, ImageRequest, Cancel, ClearCache, DumpKv])
EVENTS = _encoded([Heartbeat, KvEventBatch, LoadReport, Goodbye, SyncBatch])
BUS_FUZZ = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(nats_server):
    """One mesh for the whole module: the tests after the fuzz check that this same mesh still serves."""
    mesh = Mesh(nats_server.url)
    await mesh.start_frontend()
    worker = await mesh.add_mocker()
    await mesh.wait_models("mocker", 1)
    try:
        async with nats_client(mesh.nats_url) as nc:
            yield mesh, worker, nc
    finally:
        await mesh.close()


@BUS_FUZZ
@given(payload=PAYLOADS | REQUESTS | EVENTS, fake_id=st.sampled_from(["w-fuzz", "mocker-x"]))
async def test_garbage_on_every_subject_is_dropped_and_the_mesh_keeps_serving(served, payload, fake_id):
    mesh, worker, nc = served
    ns, wid = mesh.namespace, worker.worker_id
    inbox = nc.new_inbox()
    for subject in (subjects.generate_direct(ns, "mocker", wid), subjects.generate_any(ns, "mocker"),
                    subjects.control(ns, wid)):
        await nc.publish(subject, payload, reply=inbox)
    for subject in (subjects.heartbeat(ns, fake_id), subjects.load_events(ns, fake_id), subjects.kv_events(ns, fake_id),
                    subjects.router_sync(ns)):
        await nc.publish(subject, payload)
    await nc.flush()
    assert not worker.task.done()


async def test_the_fuzzed_mesh_still_serves(served):
    mesh, worker, _ = served
    await _serves(mesh)
    assert not worker.task.done() and worker.runtime.num_served > 0


async def test_after_the_fuzz_a_request_is_served_and_bad_messages_were_logged(served, caplog):
    mesh, worker, nc = served
    caplog.set_level(logging.WARNING)
    for subject in (subjects.generate_direct(mesh.namespace, "mocker", worker.worker_id), subjects.control(mesh.namespace, worker.worker_id),
                    subjects.heartbeat(mesh.namespace, "w"), subjects.router_sync(mesh.namespace)):
        await nc.publish(subject, b"\xc1 not msgpack", reply=nc.new_inbox())
    await nc.flush()
    await _serves(mesh)
    logged = " ".join(r.getMessage() for r in caplog.records)
    for what in ("bad work request", "bad control message", "bad event", "bad router sync batch"):
        assert what in logged


async def test_garbage_on_a_reply_subject_ends_that_stream_only(served):
    mesh, worker, nc = served
    requester = Requester(nc, mesh.namespace)
    await requester.start()
    subject = subjects.generate_direct(mesh.namespace, "mocker", worker.worker_id)
    request = GenerateRequest(request_id="victim", model="mocker", token_ids=tokens_to_bytes([1, 2, 3]),
                              sampling=SamplingOptions(max_tokens=2000))
    stream = await requester.send(subject, "victim", work_encoder.encode(request), worker.worker_id, 30)
    await nc.publish(subjects.reply_subject(requester.requester_id, "victim"), b"\xc1 garbage")
    await nc.publish(subjects.reply_subject(requester.requester_id, "nobody"), b"\xc1 garbage")  # unknown id: dropped
    with pytest.raises(Exception) as info:
        while True:
            await stream.next()
    assert type(info.value).__name__ in ("WorkerLost",)
    await requester.stop()
    await _serves(mesh)


async def _serves(mesh) -> None:
    body = {"model": "mocker", "messages": [{"role": "user", "content": "still serving?"}], "max_tokens": 5}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["usage"]["completion_tokens"] == 5
        for path in ("/v1/models", "/health", "/metrics"):
            async with session.get(mesh.url + path) as response:
                assert response.status == 200, (path, await response.text())


@pytest.mark.parametrize("field", [{"started_at": float("nan")}, {"started_at": float("inf")}, {"capacity": -5},
                                   {"block_size": -1}, {"kv_total_blocks": -1}, {"max_queue": -9}, {"model": ""}])
async def test_a_heartbeat_with_absurd_values_is_logged_and_dropped(served, field, caplog):
    mesh, worker, nc = served
    caplog.set_level(logging.WARNING)
    good = WorkerCard(worker_id="ghost-ok", namespace=mesh.namespace, component="mocker", model="ghost-model", capacity=4)
    bad = msgspec.structs.replace(good, worker_id="ghost", **field)
    for card in (bad, good):  # in order on one connection: once the good one is listed, the bad one was handled
        beat = Heartbeat(card=card, load=LoadReport(worker_id=card.worker_id), interval_s=1e9)
        await nc.publish(subjects.heartbeat(mesh.namespace, card.worker_id), msgspec.msgpack.encode(beat))
    await mesh.wait_models("ghost-model", 1)
    try:
        listed = await _listed(mesh)  # (heartbeats the fuzz above drew may still be listed under other names)
        assert listed["mocker"] == [worker.worker_id] and listed["ghost-model"] == ["ghost-ok"]
        assert "ghost" not in {w for ws in listed.values() for w in ws}
        assert "bad heartbeat" in " ".join(r.getMessage() for r in caplog.records)
        await _serves(mesh)
    finally:
        await nc.publish(subjects.heartbeat(mesh.namespace, "ghost-ok"), msgspec.msgpack.encode(Goodbye(worker_id="ghost-ok")))
        await wait_for(lambda: _only_the_real_worker(mesh), 10)


async def _listed(mesh) -> dict[str, list[str]]:
    async with aiohttp.ClientSession() as session, session.get(f"{mesh.url}/health") as response:
        return (await response.json())["models"]


async def _only_the_real_worker(mesh) -> bool:
    return "ghost-model" not in await _listed(mesh)
