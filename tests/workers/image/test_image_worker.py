"""The image worker adapter: cards, CLI flags, and the whole mesh driven by the official openai client."""

from __future__ import annotations

import argparse
import base64

import aiohttp
import openai
import pytest

from protocol.errors import InvalidRequest
from protocol.work import Final, GenerateRequest, ImageOutput, SamplingOptions
from tests.workers.image.kit import decode, image_request
from workers.contract import RequestContext
from workers.image.engine import EngineConfig, ImageEngine
from workers.image.storage import StorageConfig
from workers.image.tiny import DEMO_MODEL_DIR
from workers.image.worker import ImageWorker, add_arguments, config_from_args


@pytest.fixture
async def worker(sd_dir, media_dir):
    engine = ImageEngine(EngineConfig(model=str(sd_dir), served_name="tiny-sd", max_steps=20,
                                      storage=StorageConfig(url=str(media_dir))))
    await engine.start()
    yield ImageWorker(engine)
    await engine.stop()


def test_cards_describe_an_image_model_routed_approximately(worker):
    card = worker.model_card()
    assert (card.name, card.component, card.kinds, card.output_modalities) == ("tiny-sd", "image", ["images"], ["image"])
    assert card.defaults["size"] == "64x64" and card.defaults["family"] == "stable-diffusion"
    assert card.defaults["max_steps"] == 20 and card.block_size == 0
    fields = worker.worker_card()
    assert fields["block_size"] == 0 and fields["publishes_kv_events"] is False and fields["capacity"] == 8
    assert worker.model_files() == {} and worker.kv_dump() == []


async def test_worker_yields_one_message_per_image_then_final(worker):
    request = image_request(n=2, stream=True, partial_images=1)
    outputs = [out async for out in worker.generate(request, RequestContext(request.request_id, "w1", None))]
    assert [(o.index, o.partial_index) for o in outputs if isinstance(o, ImageOutput)] == [(0, 0), (1, 0), (0, None), (1, None)]
    assert isinstance(outputs[-1], Final) and outputs[-1].usage.images == 2
    assert all(o.seq == 0 for o in outputs)  # the runtime numbers them


async def test_worker_rejects_text_requests(worker):
    request = GenerateRequest(request_id="t", model="tiny-sd", token_ids=b"", sampling=SamplingOptions(max_tokens=1))
    with pytest.raises(InvalidRequest):
        [out async for out in worker.generate(request, RequestContext("t", "w1", None))]


def test_cli_flags_and_env_map_onto_the_engine_config(sd_dir):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", str(sd_dir), "--max-batch", "4", "--step-cache", "--max-steps", "30",
                              "--storage-url", "memory://m", "--public-base-url", "http://h/v1/files", "--dtype", "float32"])
    config = config_from_args(args, env={"DIFFMESH_IMAGE_STEP_CACHE_THRESHOLD": "0.2", "DIFFMESH_IMAGE_MAX_BATCH": "2"})
    assert (config.max_batch, config.step_cache, config.max_steps, config.step_cache_threshold) == (4, True, 30, 0.2)
    assert config.storage == StorageConfig(url="memory://m", public_base_url="http://h/v1/files")
    assert config.dtype == "float32" and config.cpu_offload is False


def test_without_model_the_shipped_demo_serves_and_random_tinies_are_built(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--model-cache-dir", str(tmp_path)]), env={"DIFFMESH_MEDIA_DIR": "/tmp/m"})
    assert config.served_name == "tiny-sd" and config.model == str(DEMO_MODEL_DIR) and not list(tmp_path.iterdir())
    assert config.storage.url == "/tmp/m"
    random = config_from_args(parser.parse_args(["--model-cache-dir", str(tmp_path), "--tiny-family", "sd"]), env={})
    assert random.served_name == "tiny-sd" and (tmp_path / "tiny-sd-micro" / "model_index.json").is_file()
    video = config_from_args(parser.parse_args(["--model-cache-dir", str(tmp_path), "--tiny-family", "wan"]), env={})
    assert video.served_name == "tiny-wan" and (tmp_path / "tiny-wan" / "model_index.json").is_file()


# --- through the mesh: openai client -> frontend -> NATS -> worker ---------------------------------------------


EXTRA = {"nvext": {"num_inference_steps": 4}}


async def test_openai_images_generate_b64_n3_and_same_seed(image_mesh):
    _, client = image_mesh
    result = await client.images.generate(model="tiny-sd", prompt="a red cat", n=3, size="48x32", output_format="webp",
                                          extra_body={**EXTRA, "seed": 11})
    images = [base64.b64decode(item.b64_json) for item in result.data]
    assert len(set(images)) == 3 and all(decode(i).size == (48, 32) and decode(i).format == "WEBP" for i in images)
    again = await client.images.generate(model="tiny-sd", prompt="a red cat", n=1, size="48x32", output_format="webp",
                                         extra_body={**EXTRA, "seed": 11})
    assert base64.b64decode(again.data[0].b64_json) == images[0]


async def test_openai_url_response_fetches_from_the_frontend(image_mesh):
    mesh, client = image_mesh
    result = await client.images.generate(model="tiny-sd", prompt="a blue dog", response_format="url", extra_body=EXTRA)
    url = result.data[0].url
    assert url.startswith(f"{mesh.url}/v1/files/anon/")
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert decode(await response.read()).size == (64, 64)


async def test_openai_stream_yields_partials_then_completed(image_mesh):
    _, client = image_mesh
    stream = await client.images.generate(model="tiny-sd", prompt="a cat", stream=True, partial_images=2,
                                          extra_body={"nvext": {"num_inference_steps": 6}})
    events = [event async for event in stream]
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert decode(base64.b64decode(events[-1].b64_json)).size == (64, 64)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (dict(size="50x64"), "$.size"),
        (dict(n=11), "$.n"),
        (dict(extra_body={"nvext": {"num_inference_steps": 21}}), "$.nvext.num_inference_steps"),
        (dict(output_format="jpeg", background="transparent"), "$.background"),
    ],
)
async def test_openai_invalid_requests_are_400_naming_the_field(image_mesh, kwargs, param):
    _, client = image_mesh
    with pytest.raises(openai.BadRequestError) as info:
        await client.images.generate(model="tiny-sd", prompt="x", **kwargs)
    assert info.value.status_code == 400 and info.value.body["param"] == param
