"""The encode worker on the real bus: batching across requests, the embedding cache, blobs, metrics, bad input."""

from __future__ import annotations

import argparse
import asyncio
import threading

import aiohttp
import pytest
import torch

from frontend.bus import Requester
from protocol import subjects
from protocol.errors import InvalidRequest
from protocol.work import EmbeddingOutput, EncodeRequest, Error, Final, work_encoder
from shell.blobs import BlobStore
from shell.bus import free_port, wait_for
from shell.images import decode_image
from tests.imagekit import encoded
from tests.meshkit import nats_client
from workers.encode.config import EncodeConfig
from workers.encode.engine import EncodeEngine
from workers.encode.worker import EncodeWorker, add_arguments, config_from_args
from workers.tensors import tensor_from_bytes


def image_request(request_id: str, seed: int, model: str = "tiny-clip") -> EncodeRequest:
    data = encoded((seed * 40 % 256, 80, 200), (24, 24), noise=seed + 1)
    return EncodeRequest(request_id=request_id, model=model, mm_hash=decode_image(data, 1 << 20).mm_hash, image=data)


@pytest.fixture
def make_worker(clip_dir):
    made = []

    def make(**overrides) -> EncodeWorker:
        metrics_port = overrides.pop("metrics_port", None)
        engine = EncodeEngine(EncodeConfig(model=str(clip_dir), served_name="tiny-clip", **overrides))
        made.append(EncodeWorker(engine, metrics_port=metrics_port, metrics_host="127.0.0.1"))
        return made[-1]

    return make


async def call(requester: Requester, worker_id: str, namespace: str, request: EncodeRequest) -> list:
    subject = subjects.generate_direct(namespace, "encode", worker_id)
    stream = await requester.send(subject, request.request_id, work_encoder.encode(request), worker_id, 30)
    replies = []
    while not replies or not isinstance(replies[-1], (Final, Error)):
        replies.append(await stream.next())
    return replies


@pytest.fixture
async def bus(mesh):
    async with nats_client(mesh.nats_url) as nc:
        requester = Requester(nc, mesh.namespace)
        await requester.start()
        yield nc, requester
        await requester.stop()


async def test_requests_queued_while_a_forward_runs_share_the_next_one_and_repeats_hit_the_cache(mesh, bus, make_worker):
    worker = make_worker(max_batch=8)
    served = await mesh.add_worker(worker)
    _, requester = bus
    gate = threading.Event()
    worker.executor.submit(gate.wait)  # the encode thread is busy, as with a forward in progress
    try:
        calls = [asyncio.ensure_future(call(requester, served.worker_id, mesh.namespace, image_request(f"r{i}", i)))
                 for i in range(9)]
        await wait_for(lambda: worker.batcher.num_submitted == 9)  # all queued behind the busy thread
    finally:
        gate.set()
    first = await asyncio.gather(*calls)
    assert sum(worker.batcher.batch_sizes) == 9 and worker.engine.num_forwards <= 2  # 9 callers, at most 2 forwards
    again = await call(requester, served.worker_id, mesh.namespace, image_request("again", 3))
    assert worker.engine.num_images == 9  # the repeat ran no forward
    hit, miss = again[0], first[3][0]
    assert isinstance(hit, EmbeddingOutput) and hit.cached and not miss.cached
    assert hit.embedding == miss.embedding and hit.embedding.shape == [16, 64] and hit.embedding.dtype == "float32"
    assert isinstance(again[-1], Final) and again[-1].usage.cached_tokens == 16
    assert (worker.cache.num_hits, worker.cache.num_misses, len(worker.cache)) == (1, 9, 9)


async def test_concurrent_requests_for_one_image_encode_it_once(mesh, bus, make_worker):
    worker = make_worker()
    served = await mesh.add_worker(worker)
    _, requester = bus
    replies = await asyncio.gather(*(call(requester, served.worker_id, mesh.namespace, image_request(f"s{i}", 5))
                                     for i in range(4)))
    assert worker.engine.num_images == 1
    assert len({r[0].embedding.data for r in replies}) == 1


async def test_embeddings_over_the_inline_limit_travel_through_the_object_store(mesh, bus, make_worker):
    served = await mesh.add_worker(make_worker(), max_inline_bytes=1024)  # 16 x 64 float32 = 4096 bytes
    nc, requester = bus
    reply = (await call(requester, served.worker_id, mesh.namespace, image_request("big", 1)))[0]
    assert reply.embedding.data == b"" and reply.embedding.object_name
    blobs = BlobStore(nc, mesh.namespace)
    tensor = tensor_from_bytes(reply.embedding.dtype, reply.embedding.shape, await blobs.get(reply.embedding.object_name))
    assert tensor.shape == (16, 64) and torch.isfinite(tensor).all()


async def test_mismatched_hash_and_bad_bytes_are_invalid_requests(mesh, bus, make_worker):
    served = await mesh.add_worker(make_worker())
    _, requester = bus
    wrong = EncodeRequest(request_id="w", model="tiny-clip", mm_hash=1, image=encoded())
    gif = EncodeRequest(request_id="g", model="tiny-clip", mm_hash=1, image=encoded(fmt="GIF"))
    for request, message in ((wrong, "not mm_hash 0x1"), (gif, "GIF is not accepted")):
        (error,) = await call(requester, served.worker_id, mesh.namespace, request)
        assert isinstance(error, Error) and error.code == InvalidRequest.code and message in error.message


async def test_metrics_port_shows_cache_hits_and_batch_sizes(mesh, bus, make_worker):
    port = free_port()
    served = await mesh.add_worker(make_worker(metrics_port=port))
    _, requester = bus
    for request_id in ("m1", "m2"):
        await call(requester, served.worker_id, mesh.namespace, image_request(request_id, 7))
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    assert 'dynamo_encoder_embedding_cache_lookups_total{result="hit"} 1.0' in text
    assert 'dynamo_encoder_embedding_cache_lookups_total{result="miss"} 1.0' in text
    assert "dynamo_encoder_images_encoded_total 1.0" in text and "dynamo_encoder_embedding_cache_entries 1.0" in text


def test_cards_describe_an_image_to_embedding_model(make_worker):
    worker = make_worker()
    card = worker.model_card()
    assert (card.component, card.input_modalities, card.output_modalities) == ("encode", ["image"], ["embedding"])
    assert card.num_image_tokens == 16 and card.defaults["hidden_size"] == 64
    assert worker.worker_card()["publishes_kv_events"] is False  # routed in approximate mode


def test_cli_flags_and_env_map_onto_the_engine_config(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path), "--max-batch", "4", "--cache-bytes", "1000"])
    config = config_from_args(args, env={"DIFFMESH_ENCODE_MAX_QUEUE": "3", "DIFFMESH_ENCODE_DEVICE": "cpu"})
    assert (config.max_batch, config.cache_bytes, config.max_queue, config.device) == (4, 1000, 3, "cpu")
