"""Multimodal chat through the official openai client on a real mesh: frontend, tiny CLIP encode workers and tiny
multimodal dLLM workers on the test nats-server, images from data: URLs and a loopback HTTP server.

DNS is the one test double: the frontend's resolver (MediaConfig.resolver) answers `localhost` and
`images.example.com` with 127.0.0.1 and `intranet.example.com` with 10.0.0.7, which a real resolver here cannot.
"""

from __future__ import annotations

import re

import aiohttp
import numpy as np
import openai
import pytest

from frontend.preprocess import Preprocessor
from protocol.openai import ChatMessage, ImageUrl, ImageUrlPart, TextPart
from shell.bus import wait_for
from shell.config import MediaConfig
from protocol import subjects
from tests.imagekit import ImageServer, data_url, encoded, image_part, noisy, png_header, psd_header, static_resolver
from tests.meshkit import nats_client
from workers.dllm.config import DllmConfig
from workers.dllm.engine import DllmEngine
from workers.dllm.worker import DllmWorker
from workers.encode.config import EncodeConfig
from workers.encode.engine import EncodeEngine
from workers.encode.worker import EncodeWorker

MODEL, ENCODER, BLOCK = "vlm", "tiny-clip", 8
RESOLVER = static_resolver({"localhost": "127.0.0.1", "images.example.com": "127.0.0.1",
                            "intranet.example.com": "10.0.0.7"})
MEDIA = MediaConfig(allowed_hosts=("localhost",), resolver=RESOLVER, max_bytes=64 * 1024, timeout_s=1.0)
RED, BLUE = encoded((220, 30, 30), (40, 30), noise=1), encoded((30, 30, 220), (40, 30), noise=2)


def ask(url: str, text: str = "what colour is this") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, image_part(url)]}]


@pytest.fixture
async def images():
    async with ImageServer(images={"/red.png": RED, "/big.png": b"\x89PNG" + b"\0" * 100_000}) as server:
        yield server


async def start(mesh, mm_dllm_dir, clip_dir, num_dllm: int = 1, num_encode: int = 1, **frontend):
    await mesh.start_frontend(media=frontend.pop("media", MEDIA), **frontend)
    encoders = [await mesh.add_worker(EncodeWorker(EncodeEngine(EncodeConfig(model=str(clip_dir), served_name=ENCODER))))
                for _ in range(num_encode)]
    dllms = [await mesh.add_worker(DllmWorker(DllmEngine.from_pretrained(DllmConfig(
        model=str(mm_dllm_dir), served_model_name=MODEL, vision_encoder=ENCODER)))) for _ in range(num_dllm)]
    await mesh.wait_models(MODEL, num_dllm)
    await wait_for(lambda: sum(len(w.runtime.card.model) > 0 for w in encoders) == num_encode)
    return openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="unused", max_retries=0), encoders, dllms


async def chat(client, messages, **kwargs):
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=8, seed=1,
                                                                 extra_body={"nvext": {"ignore_eos": True}}, **kwargs)
    return raw.parse(), raw.headers["x-diffmesh-worker"]


async def metric(mesh, name: str, **labels) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{mesh.url}/metrics") as response:
        text = await response.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exposition sorts labels
    match = re.search(rf"^{name}\{{{wanted}\}} (\S+)$", text, re.M) if labels else re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_data_and_http_images_are_answered(mesh, mm_dllm_dir, clip_dir, images):
    client, (encoder,), _ = await start(mesh, mm_dllm_dir, clip_dir)
    by_data, _ = await chat(client, ask(data_url(RED)))
    by_http, _ = await chat(client, ask(images.url("/red.png", host="localhost")))
    assert by_data.usage.completion_tokens == by_http.usage.completion_tokens == 8
    assert by_data.choices[0].message.content == by_http.choices[0].message.content  # the same pixels either way
    assert images.num_requests == 1 and encoder.engine.engine.num_images == 1  # the second was an embedding-cache hit
    text_only, _ = await chat(client, [{"role": "user", "content": "what colour is this"}])
    assert by_data.usage.prompt_tokens == text_only.usage.prompt_tokens + 16  # 16 placeholders per image


async def test_the_same_image_twice_hits_the_embedding_cache_and_the_same_dllm_worker(mesh, mm_dllm_dir, clip_dir):
    client, (encoder,), dllms = await start(mesh, mm_dllm_dir, clip_dir, num_dllm=2)
    first, worker = await chat(client, ask(data_url(RED)))
    await wait_for(lambda: metric(mesh, "dynamo_router_indexed_blocks", worker_id=worker))  # its KV events arrived
    second, again = await chat(client, ask(data_url(RED)))
    assert again == worker
    full_blocks = first.usage.prompt_tokens // BLOCK * BLOCK
    assert (first.usage.prompt_tokens_details.cached_tokens, second.usage.prompt_tokens_details.cached_tokens) == (
        0, full_blocks)  # the image's blocks were reused
    assert await metric(mesh, "dynamo_frontend_image_embeddings_total", cache="hit", model=ENCODER) == 1
    assert await metric(mesh, "dynamo_frontend_image_embeddings_total", cache="miss", model=ENCODER) == 1
    assert await metric(mesh, "dynamo_frontend_image_loads_total", result="cached", source="data") == 1
    assert encoder.engine.metrics.cache_lookups.labels("hit")._value.get() == 1 and encoder.engine.engine.num_images == 1


async def test_a_different_image_with_the_same_text_does_not_reuse_the_image_blocks(mesh, mm_dllm_dir, clip_dir):
    client, _, (dllm,) = await start(mesh, mm_dllm_dir, clip_dir)
    red, _ = await chat(client, ask(data_url(RED)))
    blue, _ = await chat(client, ask(data_url(BLUE)))
    pre = Preprocessor(dllm.engine.model_card(), dllm.engine.model_files()["tokenizer.json"])
    start_of_image = pre.chat_prompt([ChatMessage(role="user", content=[
        TextPart(text="what colour is this"), ImageUrlPart(image_url=ImageUrl(url="x"))])]).offsets[0][0]
    cached = blue.usage.prompt_tokens_details.cached_tokens
    assert red.usage.prompt_tokens == blue.usage.prompt_tokens and 0 < cached <= start_of_image
    assert cached == start_of_image // BLOCK * BLOCK  # the text blocks before the image, and nothing after


async def test_the_same_image_returns_to_the_encode_worker_that_cached_it(mesh, mm_dllm_dir, clip_dir):
    client, encoders, _ = await start(mesh, mm_dllm_dir, clip_dir, num_encode=2)
    for rgb in ((1, 2, 3), (4, 5, 6), (7, 8, 9), (1, 2, 3), (4, 5, 6), (7, 8, 9)):
        await chat(client, ask(data_url(encoded(rgb, (20, 20)))))
    images = [w.engine.engine.num_images for w in encoders]
    hits = [w.engine.cache.num_hits for w in encoders]
    assert sum(images) == 3 and sum(hits) == 3  # each image encoded once, its repeat served from that cache
    assert min(images) >= 1  # new images spread over both encoders (ties go to the smaller index)


async def test_embeddings_and_images_over_the_inline_limit_go_through_the_object_store(mesh, mm_dllm_dir, clip_dir):
    client, (encoder,), _ = await start(mesh, mm_dllm_dir, clip_dir, max_inline_bytes=1024)
    encoder.runtime.blobs.max_inline_bytes = 1024  # the worker's replies too (RuntimeConfig.max_inline_bytes)
    image = noisy(1)  # ~3 KB
    answer, _ = await chat(client, ask(data_url(image), "x"))
    assert answer.usage.completion_tokens == 8 and len(image) > 1024
    assert encoder.runtime.blobs.num_gets == 1 and encoder.runtime.blobs.num_puts == 1  # image in, embedding out
    async with nats_client(mesh.nats_url) as nc:
        store = await nc.jetstream().object_store(subjects.blobs_bucket(mesh.namespace))
        entries = await store.list()
        assert len(entries) == 2 and all(entry.deleted for entry in entries)  # the frontend deleted both when done


PART = "$.messages[0].content[1]"
BAD_IMAGES = {
    "non-image data URL": ("data:text/plain;base64,aGVsbG8=", "holds text/plain, not an image"),
    "bad base64": ("data:image/png;base64,iVBOR!!w0KGgo", "not valid base64"),
    "GIF": (data_url(encoded(fmt="GIF"), "image/gif"), "format GIF is not accepted"),
    "BMP": (data_url(encoded(fmt="BMP"), "image/bmp"), "format BMP is not accepted"),
    "PSD": (data_url(psd_header(), "image/vnd.adobe.photoshop"), "format PSD is not accepted"),
    "50000x50000 PNG header": (data_url(png_header(50000, 50000)), "decompression bomb"),
    "127.0.0.1": ("http://127.0.0.1:{port}/red.png", "127.0.0.1 is a loopback address"),
    "169.254.169.254": ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    "name resolving to a loopback address": ("http://images.example.com:{port}/red.png",
                                             "images.example.com (127.0.0.1) is a loopback address"),
    "name resolving to a private address": ("http://intranet.example.com/cat.png",
                                            "intranet.example.com (10.0.0.7) is a private address"),
    "redirect to a refused address": ("http://localhost:{port}/redirect?to=http://169.254.169.254/x",
                                      "169.254.169.254 is a link-local address"),
    "download over the byte limit": ("http://localhost:{port}/big.png", "over the 65536-byte limit"),
    "server that stalls": ("http://localhost:{port}/stall", "did not arrive within 1 s"),
}


async def test_every_bad_image_is_a_400_naming_its_part(mesh, mm_dllm_dir, clip_dir, images):
    client, (encoder,), _ = await start(mesh, mm_dllm_dir, clip_dir)
    for case, (url, message) in BAD_IMAGES.items():
        with pytest.raises(openai.BadRequestError) as info:
            await chat(client, ask(url.format(port=images.port)))
        error = info.value.body
        assert error["param"] == PART and message in error["message"], case
    assert images.num_requests == 3  # only the allowed host was contacted (redirect, big, stall)
    assert encoder.engine.engine.num_images == 0
    assert await metric(mesh, "dynamo_frontend_requests_total", model=MODEL, endpoint="chat_completions",
                        request_type="unary", status="400") == len(BAD_IMAGES)


async def test_misused_image_parts_are_400s_naming_the_field(mesh, mm_dllm_dir, clip_dir):
    client, _, _ = await start(mesh, mm_dllm_dir, clip_dir)
    red = image_part(data_url(RED))
    cases = [
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(RED), "detail": "high"}}]}],
         "$.messages[0].content[0].image_url.detail"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [red]}], "$.messages[1].content[0]"),
        ([{"role": "user", "content": [{"type": "text", "text": "a <|image|> b"}, red]}], "$.messages[0].content[0].text"),
    ]
    for messages, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            await chat(client, messages)
        assert info.value.body["param"] == param


async def test_models_list_modalities_and_a_health_check_that_works(mesh, mm_dllm_dir, clip_dir):
    client, _, _ = await start(mesh, mm_dllm_dir, clip_dir)
    await mesh.add_mocker()
    await mesh.wait_models("mocker", 1)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{mesh.url}/v1/models") as response:
            models = {m["id"]: m for m in (await response.json())["data"]}
        assert set(models) == {MODEL, "mocker"}  # the encoder serves models, not clients
        assert (models[MODEL]["input_modalities"], models[MODEL]["output_modalities"]) == (["text", "image"], ["text"])
        assert (models["mocker"]["input_modalities"], models["mocker"]["output_modalities"]) == (["text"], ["text"])
        for model in models.values():
            check = model["health_check"]
            async with session.post(f"{mesh.url}{check['path']}", json=check["body"]) as response:
                assert response.status == 200, await response.text()
    with pytest.raises(openai.BadRequestError) as info:  # a text-only model still refuses images
        await client.chat.completions.create(model="mocker", messages=ask(data_url(RED)), max_tokens=4)
    assert info.value.body["param"] == PART


def test_placeholders_expand_in_place_with_their_offsets(mm_dllm_dir):
    from workers.dllm.tiny import IMAGE_TOKEN
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(mm_dllm_dir)
    engine = DllmEngine.from_pretrained(DllmConfig(model=str(mm_dllm_dir), vision_encoder=ENCODER))
    pre = Preprocessor(DllmWorker(engine).model_card(), (mm_dllm_dir / "tokenizer.json").read_bytes())
    two = [ChatMessage(role="user", content=[ImageUrlPart(image_url=ImageUrl(url="a")), TextPart(text="and"),
                                             ImageUrlPart(image_url=ImageUrl(url="b"))])]
    prompt = pre.chat_prompt(two)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    (first, _), (second, _) = prompt.offsets
    assert [p.param for p in prompt.images] == ["$.messages[0].content[0]", "$.messages[0].content[2]"]
    assert prompt.offsets == [(first, first + 16), (second, second + 16)] and second > first + 16
    assert np.flatnonzero(prompt.tokens == image_id).tolist() == [*range(first, first + 16), *range(second, second + 16)]
    rendered = tokenizer.encode(pre.render_chat(two), add_special_tokens=False)
    assert len(prompt.tokens) == len(rendered) + 30


async def test_a_large_image_in_a_body_that_arrives_in_many_reads_is_answered(mesh, mm_dllm_dir, clip_dir):
    client, _, _ = await start(mesh, mm_dllm_dir, clip_dir, media=MediaConfig(max_bytes=4 << 20))
    image = noisy(7, (400, 400))  # ~480 KB of PNG, ~640 KB of base64: far more than one socket read
    answer, _ = await chat(client, ask(data_url(image)))
    assert len(image) > 400_000 and answer.usage.completion_tokens == 8
