"""The engine on a real tiny FluxPipeline (DiT): packed latents, First Block Cache, per-request cache batches."""

from __future__ import annotations

import asyncio

from protocol.errors import InvalidRequest
from tests.workers.image.kit import collect, decode, finals, image_request

import pytest


async def test_flux_images_decode_at_requested_size(flux_engine):
    outputs = await collect(flux_engine, image_request(width=48, height=32, n=2))
    images = finals(outputs)
    assert [decode(image.data).size for image in images] == [(48, 32), (48, 32)]
    assert images[0].data != images[1].data


async def test_flux_streams_partial_images_from_packed_latents(flux_engine):
    outputs = await collect(flux_engine, image_request(stream=True, partial_images=1, num_inference_steps=4))
    assert [out.partial_index for out in outputs[:-1]] == [0, None]
    assert decode(outputs[0].data).size == (64, 64)


async def test_first_block_cache_skips_tail_blocks(flux_engine):
    cache = flux_engine.loaded.step_caches["first_block"]
    before = cache.num_tail_runs
    await collect(flux_engine, image_request(num_inference_steps=10, step_cache=False))
    assert cache.num_tail_runs - before == 10
    before = cache.num_tail_runs
    await collect(flux_engine, image_request(num_inference_steps=10, step_cache=True))
    assert 1 <= cache.num_tail_runs - before < 10


async def test_first_block_cached_requests_run_alone(flux_engine):
    num_calls = len(flux_engine.batcher.batch_sizes)
    requests = [image_request(seed=i, step_cache=True) for i in range(2)] + [image_request(seed=i) for i in range(2)]
    await asyncio.gather(*(collect(flux_engine, request) for request in requests))
    assert sorted(flux_engine.batcher.batch_sizes[num_calls:]) == [1, 1, 2]  # a per-batch cache decision: no merging


async def test_flux_rejects_negative_prompt(flux_engine):
    with pytest.raises(InvalidRequest) as info:
        await collect(flux_engine, image_request(negative_prompt="blurry"))
    assert info.value.param == "$.nvext.negative_prompt"
