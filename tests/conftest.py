"""Session-wide real nats-server on a random port; each test gets its own subject namespace; tiny multimodal models."""

from __future__ import annotations

import pytest
import pytest_asyncio

from shell.bus import EmbeddedNats
from tests.meshkit import Mesh
from workers.dllm.tiny import TinySpec, ensure_tiny_dllm
from workers.encode.tiny import TinyEncoderSpec, ensure_tiny_encoder


@pytest.fixture(scope="session", autouse=True)
def _child_tmpdir(tmp_path_factory):
    """Processes the tests start make their temporary directories under pytest's own, so that one a test SIGKILLs
    before its cleanup (the metrics directory of a frontend group, say) goes with pytest's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("children")))
        yield


@pytest.fixture(scope="session")
def nats_server():
    server = EmbeddedNats(port=None).start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def mesh(nats_server):
    """A fresh namespace with nothing running; tests add a frontend and workers."""
    m = Mesh(nats_server.url)
    yield m
    await m.close()


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """Tiny CLIP vision tower + mlp2x_gelu projector to hidden 64 (the tiny dLLM's): 16 image tokens."""
    return ensure_tiny_encoder(tmp_path_factory.mktemp("encode-models"), TinyEncoderSpec())


@pytest.fixture(scope="session")
def mm_dllm_dir(tmp_path_factory):
    """Tiny block-causal dLLM (block 8) with an <|image|> placeholder of 16 rows."""
    return ensure_tiny_dllm(tmp_path_factory.mktemp("mm-dllm"), TinySpec(block_size=8, context_length=512, image_tokens=16))
