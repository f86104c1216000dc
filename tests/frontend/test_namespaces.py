"""Two meshes on one NATS server, in two namespaces, with the same model name: neither sees the other."""

from __future__ import annotations

import aiohttp

from tests.meshkit import FAST_MOCKER, Mesh
from workers.mocker.worker import MockerEngine


async def _models(session, mesh: Mesh) -> dict[str, int]:
    async with session.get(f"{mesh.url}/v1/models") as response:
        return {m["id"]: m["workers"] for m in (await response.json())["data"]}


async def test_two_namespaces_on_one_server_do_not_see_each_others_workers_or_cards(nats_server):
    a, b = Mesh(nats_server.url), Mesh(nats_server.url)
    try:
        await a.start_frontend()
        await b.start_frontend()
        a_workers = {(await a.add_worker(MockerEngine("mocker", FAST_MOCKER, default_max_tokens=5))).worker_id for _ in range(2)}
        b_worker = (await b.add_worker(MockerEngine("mocker", FAST_MOCKER, default_max_tokens=9))).worker_id
        await a.wait_models("mocker", 2)
        await b.wait_models("mocker", 1)
        body = {"model": "mocker", "messages": [{"role": "user", "content": "whose are you?"}]}  # max_tokens from the card
        async with aiohttp.ClientSession() as session:
            assert await _models(session, a) == {"mocker": 2} and await _models(session, b) == {"mocker": 1}
            served = {"a": set(), "b": set()}
            for name, mesh in (("a", a), ("b", b)):
                for _ in range(6):
                    async with session.post(f"{mesh.url}/v1/chat/completions", json=body) as response:
                        assert response.status == 200
                        served[name].add((response.headers["x-diffmesh-worker"], (await response.json())["usage"]["completion_tokens"]))
            assert {w for w, _ in served["a"]} <= a_workers and {t for _, t in served["a"]} == {5}  # a's card, a's workers
            assert served["b"] == {(b_worker, 9)}
            b.workers[0].stop.set()  # b's only worker leaves: b has no model, a is untouched
            await b.workers[0].task
            async with session.post(f"{b.url}/v1/chat/completions", json=body) as response:
                assert response.status == 404
            assert await _models(session, a) == {"mocker": 2}
    finally:
        await a.close()
        await b.close()
