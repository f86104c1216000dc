"""Session meshes for the conformance suite: one frontend with a mocker and a tiny dLLM, one with a tiny SD."""

from __future__ import annotations

from dataclasses import dataclass

import openai
import pytest_asyncio

from tests.meshkit import Mesh


@dataclass
class Conformance:
    mesh: Mesh
    client: openai.AsyncOpenAI
    dllm_tokenizer: object = None  # transformers tokenizer of tiny-dllm


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def text_mesh(nats_server, tmp_path_factory):
    """`mocker` (features: logprobs) and `tiny-dllm` (logprobs, logit_bias) behind one frontend."""
    from workers.dllm.config import DllmConfig
    from workers.dllm.engine import DllmEngine
    from workers.dllm.tiny import TinySpec, ensure_tiny_dllm
    from workers.dllm.worker import DllmWorker

    mesh = Mesh(nats_server.url)
    await mesh.start_frontend()
    await mesh.add_mocker()
    model_dir = ensure_tiny_dllm(tmp_path_factory.mktemp("conformance-dllm"), TinySpec(block_size=8, context_length=512))
    engine = DllmEngine.from_pretrained(DllmConfig(model=str(model_dir), served_model_name="tiny-dllm"))
    await mesh.add_worker(DllmWorker(engine))
    await mesh.wait_models("mocker", 1)
    await mesh.wait_models("tiny-dllm", 1)
    client = openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="unused", max_retries=0)
    yield Conformance(mesh, client, engine.tokenizer)
    await client.close()
    await mesh.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def image_mesh(nats_server, tmp_path_factory):
    """`tiny-sd` (no optional features) with url responses served from the frontend's media directory."""
    from workers.image.engine import EngineConfig, ImageEngine
    from workers.image.storage import StorageConfig
    from workers.image.tiny import ensure_tiny_image
    from workers.image.worker import ImageWorker

    media = tmp_path_factory.mktemp("conformance-media")
    mesh = Mesh(nats_server.url)
    await mesh.start_frontend(media_dir=str(media))
    model_dir = ensure_tiny_image(tmp_path_factory.mktemp("conformance-image"), "sd")
    storage = StorageConfig(url=str(media), public_base_url=f"{mesh.url}/v1/files")
    engine = ImageEngine(EngineConfig(model=str(model_dir), served_name="tiny-sd", max_steps=20, storage=storage))
    await mesh.add_worker(ImageWorker(engine))
    await mesh.wait_models("tiny-sd", 1)
    client = openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="unused", max_retries=0)
    yield Conformance(mesh, client)
    await client.close()
    await mesh.close()
