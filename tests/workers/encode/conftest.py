"""Tiny vision encoders built once per session (saved, then loaded through from_pretrained)."""

from __future__ import annotations

import pytest

from workers.encode.config import EncodeConfig
from workers.encode.engine import EncodeEngine
from workers.encode.tiny import TinyEncoderSpec, ensure_tiny_encoder


@pytest.fixture(scope="module", autouse=True)
def torch_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory):
    return ensure_tiny_encoder(tmp_path_factory.mktemp("siglip"), TinyEncoderSpec(family="siglip", projector="linear",
                                                                                    out_hidden=48))


@pytest.fixture
def make_encoder():
    def make(model_dir, **overrides) -> EncodeEngine:
        return EncodeEngine(EncodeConfig(model=str(model_dir), **overrides))

    return make
