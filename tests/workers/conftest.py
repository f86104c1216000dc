"""Fixtures shared by the worker kinds: one torch thread, and the tiny CLIP encoder (dLLM tests feed its embeddings)."""

from __future__ import annotations

import pytest
import torch

from workers.encode.tiny import TinyEncoderSpec, ensure_tiny_encoder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster and steadier on one intra-op thread (a shared 2-core VM); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """Tiny CLIP vision tower + mlp2x_gelu projector to hidden 64 (the tiny dLLM's): 16 image tokens."""
    return ensure_tiny_encoder(tmp_path_factory.mktemp("encode-models"), TinyEncoderSpec())
