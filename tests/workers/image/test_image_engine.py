"""The engine on a real tiny StableDiffusionPipeline: formats, n, seeds, batching, errors, streaming, cancel, urls."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from protocol.errors import DeadlineExceeded, InvalidRequest, PayloadTooLarge
from protocol.work import Final, ImageOutput
from tests.workers.image.kit import collect, decode, finals, image_request
from workers.image.engine import EngineConfig, ImageEngine
from workers.image.storage import StorageConfig

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
async def test_images_decode_at_requested_size_and_format(sd_engine, output_format):
    outputs = await collect(sd_engine, image_request(width=48, height=32, output_format=output_format))
    (image,) = finals(outputs)
    decoded = decode(image.data)
    assert decoded.format == PIL_FORMATS[output_format]
    assert decoded.size == (48, 32) == (image.width, image.height)
    assert isinstance(outputs[-1], Final) and outputs[-1].usage.images == 1


async def test_auto_size_uses_the_model_default(sd_engine):
    (image,) = finals(await collect(sd_engine, image_request()))
    assert decode(image.data).size == (64, 64)


async def test_n3_returns_three_different_images(sd_engine):
    outputs = await collect(sd_engine, image_request(n=3))
    images = finals(outputs)
    assert [image.index for image in images] == [0, 1, 2]
    assert len({image.data for image in images}) == 3
    assert outputs[-1].usage.images == 3


async def test_same_seed_gives_identical_bytes(sd_engine):
    first = finals(await collect(sd_engine, image_request(seed=123)))[0].data
    again = finals(await collect(sd_engine, image_request(seed=123)))[0].data
    other = finals(await collect(sd_engine, image_request(seed=124)))[0].data
    assert first == again
    assert first != other


async def test_image_zero_of_n_equals_the_single_image_of_its_seed(sd_engine):
    single = finals(await collect(sd_engine, image_request(seed=50)))[0].data
    many = finals(await collect(sd_engine, image_request(seed=50, n=2)))
    assert many[0].data == single


async def test_batched_requests_give_the_same_bytes_as_solo_runs(sd_engine):
    requests = [image_request(prompt=f"prompt {i}", seed=1000 + i, n=1 + (i == 2)) for i in range(4)]
    num_calls = len(sd_engine.batcher.batch_sizes)
    batched = await asyncio.gather(*(collect(sd_engine, request) for request in requests))
    assert sd_engine.batcher.batch_sizes[num_calls:] == [5]  # all four requests (five images) in one call
    for request, outputs in zip(requests, batched):
        solo = await collect(sd_engine, image_request(prompt=request.prompt, seed=request.seed, n=request.n))
        assert [image.data for image in finals(outputs)] == [image.data for image in finals(solo)]


async def test_batches_split_by_size_and_respect_max_batch(sd_engine):
    num_calls = len(sd_engine.batcher.batch_sizes)
    requests = [image_request(seed=i) for i in range(9)] + [image_request(width=32, height=32)]
    await asyncio.gather(*(collect(sd_engine, request) for request in requests))
    assert sd_engine.batcher.batch_sizes[num_calls:] == [8, 1, 1]  # max_batch 8, then the rest, then the other size


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (dict(width=50, height=64), "$.size"),  # not a multiple of 8
        (dict(width=1024, height=1024), "$.size"),  # over the tiny model's 128 px bound
        (dict(width=8, height=8), "$.size"),  # under its 16 px bound
        (dict(n=0), "$.n"),
        (dict(n=11), "$.n"),
        (dict(num_inference_steps=21), "$.nvext.num_inference_steps"),  # cap is 20 in this engine
        (dict(output_format="bmp"), "$.output_format"),
        (dict(output_format="jpeg", background="transparent"), "$.background"),
        (dict(output_format="png", output_compression=50), "$.output_compression"),
        (dict(partial_images=2), "$.partial_images"),  # without stream
    ],
)
async def test_invalid_requests_raise_invalid_request_naming_the_field(sd_engine, fields, param):
    num_calls = sd_engine.stats.num_pipeline_calls
    with pytest.raises(InvalidRequest) as info:
        await collect(sd_engine, image_request(**fields))
    assert info.value.param == param
    assert sd_engine.stats.num_pipeline_calls == num_calls  # rejected before any work


async def test_transparent_background_gives_rgba(sd_engine):
    (image,) = finals(await collect(sd_engine, image_request(background="transparent", output_format="png")))
    assert decode(image.data).mode == "RGBA"  # alpha keyed from the border colour (see encode.py)


async def test_stream_yields_partial_images_then_the_final(sd_engine):
    outputs = await collect(sd_engine, image_request(stream=True, partial_images=2, num_inference_steps=6, n=2))
    kinds = [(out.index, out.partial_index) for out in outputs if isinstance(out, ImageOutput)]
    assert kinds == [(0, 0), (1, 0), (0, 1), (1, 1), (0, None), (1, None)]
    partial, final = outputs[0], finals(outputs)[0]
    assert decode(partial.data).size == decode(final.data).size == (64, 64)
    assert partial.data != final.data
    assert isinstance(outputs[-1], Final)


async def test_cancel_stops_the_pipeline_between_steps(sd_engine):
    start = sd_engine.stats.num_denoiser_calls
    outputs = await collect(sd_engine, image_request(num_inference_steps=20),
                            is_cancelled=lambda: sd_engine.stats.num_denoiser_calls - start >= 3)
    assert sd_engine.stats.num_denoiser_calls - start == 3  # seen after step 3, nothing after
    assert outputs == [Final(request_id=outputs[0].request_id, seq=0, finish_reason="cancelled")]


async def test_closing_the_stream_stops_the_pipeline(sd_engine):
    start = sd_engine.stats.num_denoiser_calls
    stream = sd_engine.generate(image_request(num_inference_steps=20, stream=True, partial_images=3))
    first = await anext(stream)
    assert first.partial_index == 0
    await stream.aclose()  # the client went away
    await sd_engine.wait_idle()
    assert sd_engine.stats.num_denoiser_calls - start < 20


async def test_url_response_lands_in_the_store_and_reads_back(sd_engine):
    request = image_request(response_format="url", n=2, user="alice@example.com", output_format="jpeg")
    images = finals(await collect(sd_engine, request))
    assert all(image.data == b"" and image.url.startswith("http://files.test/v1/files/u-") for image in images)
    keys = [sd_engine.store.key_from_url(image.url) for image in images]
    assert [key.rsplit("/", 1)[1] for key in keys] == ["0.jpeg", "1.jpeg"]
    assert "alice" not in keys[0]
    assert decode(sd_engine.store.read(keys[0])).size == (64, 64)
    assert sd_engine.store.local_path(keys[1]).is_file()


async def test_unet_step_cache_skips_deep_blocks_with_a_close_image(sd_engine):
    cache = sd_engine.loaded.step_caches["deepcache"]
    plain = finals(await collect(sd_engine, image_request(num_inference_steps=12, step_cache=False)))[0]
    full_before, calls_before = cache.num_full, sd_engine.stats.num_denoiser_calls
    cached = finals(await collect(sd_engine, image_request(num_inference_steps=12, step_cache=True)))[0]
    num_full, num_calls = cache.num_full - full_before, sd_engine.stats.num_denoiser_calls - calls_before
    assert num_calls == 12
    assert 1 <= num_full < 12
    difference = np.abs(np.asarray(decode(plain.data), float) - np.asarray(decode(cached.data), float))
    assert 0 < difference.mean() < 2.0  # out of 255: reused features, nearly the same picture


async def test_unet_step_cache_keeps_batched_bytes_equal_to_solo(sd_engine):
    requests = [image_request(prompt=f"cached {i}", seed=i, num_inference_steps=12, step_cache=True) for i in range(3)]
    num_calls = len(sd_engine.batcher.batch_sizes)
    batched = await asyncio.gather(*(collect(sd_engine, request) for request in requests))
    assert sd_engine.batcher.batch_sizes[num_calls:] == [3]
    for request, outputs in zip(requests, batched):
        solo = await collect(sd_engine, image_request(prompt=request.prompt, seed=request.seed, num_inference_steps=12, step_cache=True))
        assert finals(outputs)[0].data == finals(solo)[0].data


async def test_expired_deadline_fails_without_running(sd_engine):
    num_calls = sd_engine.stats.num_pipeline_calls
    with pytest.raises(DeadlineExceeded):
        await collect(sd_engine, image_request(), deadline=time.monotonic() - 1.0)
    assert sd_engine.stats.num_pipeline_calls == num_calls


async def test_image_over_the_message_limit_is_payload_too_large(sd_dir, media_dir):
    engine = ImageEngine(EngineConfig(model=str(sd_dir), max_inline_bytes=1000, storage=StorageConfig(url=str(media_dir))))
    try:
        with pytest.raises(PayloadTooLarge) as info:
            await collect(engine, image_request())
        assert info.value.param == "$.response_format"
        (image,) = finals(await collect(engine, image_request(response_format="url")))  # the way around it
        assert image.url
    finally:
        await engine.stop()
