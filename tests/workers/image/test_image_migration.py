"""An image worker killed mid-request: the request restarts on another worker and the client sees one stream."""

from __future__ import annotations

import json
import os
import signal

import aiohttp

from workers.image.engine import EngineConfig, ImageEngine
from workers.image.storage import StorageConfig
from workers.image.worker import ImageWorker


async def _events(session, url: str, body: dict, on_event=None) -> tuple[list[dict], str]:
    events = []
    async with session.post(f"{url}/v1/images/generations", json=body) as response:
        assert response.status == 200, await response.text()
        worker = response.headers["x-diffmesh-worker"]
        async for line in response.content:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                events.append(json.loads(line[6:]))
                assert "error" not in events[-1], events[-1]
                if on_event is not None:
                    on_event(events[-1], worker)
    return events, worker


async def test_image_stream_restarts_on_another_worker_with_the_images_of_a_clean_run(mesh, sd_dir, media_dir):
    await mesh.start_frontend(router_mode="round_robin")  # over ["survivor", "victim"]: the first free pick is the victim
    engine = ImageEngine(EngineConfig(model=str(sd_dir), served_name="tiny-sd", max_steps=200, storage=StorageConfig(url=str(media_dir))))
    await engine.start()
    await mesh.add_worker(ImageWorker(engine), worker_id="survivor")
    victim = mesh.spawn_worker("image", "--model", str(sd_dir), "--served-model-name", "tiny-sd", "--worker-id", "victim",
                               "--heartbeat", "0.2", "--threads", "1", "--max-steps", "200")
    await mesh.wait_models("tiny-sd", 2, timeout_s=120)
    body = {"model": "tiny-sd", "prompt": "a red cat", "seed": 11, "stream": True, "partial_images": 2,
            "nvext": {"num_inference_steps": 30}, "size": "16x16"}

    def kill_on_first_partial(event: dict, worker: str) -> None:
        assert worker == "victim"
        if event["type"] == "image_generation.partial_image" and event["partial_image_index"] == 0:
            os.killpg(victim.pid, signal.SIGKILL)

    async with aiohttp.ClientSession() as session:
        clean, _ = await _events(session, mesh.url, {**body, "nvext": {**body["nvext"], "worker_id": "survivor"}})
        moved, worker = await _events(session, mesh.url, body, kill_on_first_partial)
        async with session.get(f"{mesh.url}/metrics") as response:
            metrics = await response.text()
    kinds = [(e["type"], e.get("partial_image_index")) for e in moved]
    assert kinds == [(e["type"], e.get("partial_image_index")) for e in clean]  # each event once, in order
    assert kinds == [("image_generation.partial_image", 0), ("image_generation.partial_image", 1),
                     ("image_generation.completed", None)]
    assert moved[-1]["b64_json"] == clean[-1]["b64_json"]  # same seed, same bytes, on the other worker
    assert 'dynamo_frontend_model_migration_total{migration_type="ongoing_request",model="tiny-sd"} 1.0' in metrics
