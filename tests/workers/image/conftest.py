"""Tiny diffusers pipelines built once per session (saved, then loaded through from_pretrained) and their engines."""

from __future__ import annotations

import openai
import pytest
import pytest_asyncio

from workers.image.engine import EngineConfig, ImageEngine
from workers.image.storage import StorageConfig
from workers.image.tiny import ensure_tiny_image
from workers.image.worker import ImageWorker


@pytest.fixture(scope="session")
def image_models(tmp_path_factory):
    return tmp_path_factory.mktemp("image-models")


@pytest.fixture(scope="session")
def sd_dir(image_models):
    """Micro StableDiffusionPipeline: 64x64 default, sizes multiple of 8 in 16..128."""
    return ensure_tiny_image(image_models, "sd")


@pytest.fixture(scope="session")
def flux_dir(image_models):
    """Tiny FluxPipeline (DiT) for First Block Cache."""
    return ensure_tiny_image(image_models, "flux")


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


async def _started(model_dir, media_dir, **overrides) -> ImageEngine:
    storage = StorageConfig(url=str(media_dir), public_base_url="http://files.test/v1/files")
    engine = ImageEngine(EngineConfig(model=str(model_dir), storage=storage, **overrides))
    await engine.start()
    return engine


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sd_engine(sd_dir, media_dir):
    engine = await _started(sd_dir, media_dir, max_steps=20)
    yield engine
    await engine.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def flux_engine(flux_dir, media_dir):
    engine = await _started(flux_dir, media_dir, max_steps=20)
    yield engine
    await engine.stop()


@pytest.fixture
async def image_mesh(mesh, sd_dir, media_dir):
    """A frontend and one in-process tiny-sd worker on the test NATS, with an AsyncOpenAI client."""
    await mesh.start_frontend(media_dir=str(media_dir))
    storage = StorageConfig(url=str(media_dir), public_base_url=f"{mesh.url}/v1/files")
    engine = ImageEngine(EngineConfig(model=str(sd_dir), served_name="tiny-sd", max_steps=20, storage=storage))
    await mesh.add_worker(ImageWorker(engine))
    await mesh.wait_models("tiny-sd", 1)
    client = openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="unused", max_retries=0)
    yield mesh, client
    await client.close()
