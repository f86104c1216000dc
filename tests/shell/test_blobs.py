"""BlobStore on the real test nats-server: pack inline under the limit, through the Object Store over it."""

from __future__ import annotations

import pytest

from protocol.errors import EngineError
from shell.blobs import PAYLOAD_MARGIN, BlobStore
from tests.meshkit import nats_client


async def test_pack_keeps_small_bytes_inline_and_stores_large_ones(mesh):
    async with nats_client(mesh.nats_url) as nc:
        store = BlobStore(nc, mesh.namespace, max_inline_bytes=1000)
        assert store.inline_limit == 1000
        assert await store.pack(b"x" * 1000) == (b"x" * 1000, None)
        data, name = await store.pack(b"y" * 300_000)
        assert data == b"" and name and store.num_puts == 1
        assert await store.unpack(data, name) == b"y" * 300_000
        await store.delete(name)
        with pytest.raises(EngineError, match="is gone"):
            await store.get(name)
        await store.delete(name)  # deleting twice is harmless


async def test_default_inline_limit_follows_the_server_max_payload(mesh):
    async with nats_client(mesh.nats_url) as nc:
        assert BlobStore(nc, mesh.namespace).inline_limit == nc.max_payload - PAYLOAD_MARGIN == 8 * 1024 * 1024 - PAYLOAD_MARGIN
