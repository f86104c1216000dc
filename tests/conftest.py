"""Session-wide real nats-server on a random port; each test gets its own subject namespace."""

from __future__ import annotations

import pytest
import pytest_asyncio

from shell.bus import EmbeddedNats
from tests.meshkit import Mesh


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
