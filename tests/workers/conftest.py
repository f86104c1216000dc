"""Fixtures shared by the worker kinds: one torch thread (the tiny encoder lives in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster and steadier on one intra-op thread (a shared 2-core VM); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
