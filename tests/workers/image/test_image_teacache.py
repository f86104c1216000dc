"""TeaCache on the tiny FluxPipeline: whole steps skipped, first and last always computed, close to uncached."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.workers.image.conftest import _started
from tests.workers.image.kit import collect, finals, image_request
from workers.image.teacache import IDENTITY, TeaCacheConfig


def psnr(a: bytes, b: bytes) -> float:
    x, y = (np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), dtype=np.float64) for d in (a, b))
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_rescale_is_numpy_poly1d_order():
    assert TeaCacheConfig(coefficients=(2.0, -1.0, 0.5)).rescale(3.0) == 2 * 9 - 3 + 0.5
    assert TeaCacheConfig(coefficients=IDENTITY).rescale(0.25) == 0.25


async def test_teacache_skips_whole_steps_and_stays_close_to_uncached(flux_engine):
    cache = flux_engine.loaded.step_caches["teacache"]
    calls, tails = flux_engine.stats.num_denoiser_calls, cache.num_tail_runs
    plain = finals(await collect(flux_engine, image_request(num_inference_steps=20, step_cache=False)))
    assert cache.num_tail_runs - tails == 20
    tails = cache.num_tail_runs
    cached = finals(await collect(flux_engine, image_request(num_inference_steps=20, step_cache="teacache")))
    assert flux_engine.stats.num_denoiser_calls - calls == 40  # the transformer is still called every step ...
    assert 2 <= cache.num_tail_runs - tails < 20  # ... but its blocks ran on only some of them
    assert psnr(plain[0].data, cached[0].data) >= 30


@pytest.fixture
async def eager_engine(flux_dir, media_dir):
    engine = await _started(flux_dir, media_dir, teacache_threshold=1e9)  # skip whenever allowed
    yield engine
    await engine.stop()


async def test_teacache_always_computes_the_first_and_last_step(eager_engine):
    cache = eager_engine.loaded.step_caches["teacache"]
    for steps in (3, 12):
        tails = cache.num_tail_runs
        await collect(eager_engine, image_request(num_inference_steps=steps, step_cache="teacache"))
        assert cache.num_tail_runs - tails == 2
