"""Per-request bytes too large for one NATS message (images, embeddings), in a JetStream Object Store with a TTL.

Whoever puts a blob names it in a bus message; the requester that owns the request deletes what it sent or was
sent once the request is over. The bucket's TTL removes whatever a crashed process left behind.
"""

from __future__ import annotations

import uuid

import nats
from nats.js.api import ObjectStoreConfig
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from protocol import subjects
from protocol.errors import EngineError
from shell.registry import retry

PAYLOAD_MARGIN = 64 * 1024  # room for the rest of a message (headers, other fields) under max_payload
BLOB_TTL_S = 900.0  # longer than any request may run (the frontend's request timeout is 600 s by default)


class BlobStore:
    """put/get/delete on the `{ns}_blobs` bucket, and `pack`: inline when small enough, else a blob."""

    def __init__(self, nc: nats.NATS, namespace: str, max_inline_bytes: int | None = None, replicas: int = 1):
        self.nc = nc
        self.ns = namespace
        self.max_inline_bytes = max_inline_bytes  # None = the server's max_payload less PAYLOAD_MARGIN
        self.replicas = replicas
        self._store = None
        self.num_puts = 0
        self.num_gets = 0

    @property
    def inline_limit(self) -> int:
        """Largest byte string a message may carry inline."""
        server = max(self.nc.max_payload - PAYLOAD_MARGIN, 0)
        return server if self.max_inline_bytes is None else min(self.max_inline_bytes, server)

    async def _bucket(self):
        if self._store is None:
            js, name = self.nc.jetstream(), subjects.blobs_bucket(self.ns)

            async def open_or_create():
                try:
                    return await js.object_store(name)
                except (BucketNotFoundError, NotFoundError):
                    config = ObjectStoreConfig(ttl=BLOB_TTL_S, replicas=self.replicas)
                    return await js.create_object_store(name, config=config)

            self._store = await retry(open_or_create)
        return self._store

    async def put(self, data: bytes) -> str:
        name = uuid.uuid4().hex
        store = await self._bucket()
        await retry(lambda: store.put(name, data))
        self.num_puts += 1
        return name

    async def get(self, name: str) -> bytes:
        store = await self._bucket()
        try:
            result = await store.get(name)
        except ObjectNotFoundError:
            raise EngineError(f"blob {name} is gone (expired after {BLOB_TTL_S:g} s, or already deleted)") from None
        self.num_gets += 1
        return result.data

    async def delete(self, name: str) -> None:
        store = await self._bucket()
        try:
            await store.delete(name)
        except (ObjectNotFoundError, NotFoundError):
            pass

    async def pack(self, data: bytes) -> tuple[bytes, str | None]:
        """(data, None) if it fits in a message, else (b"", the name of a new blob holding it)."""
        if len(data) <= self.inline_limit:
            return data, None
        return b"", await self.put(data)

    async def unpack(self, data: bytes, object_name: str | None) -> bytes:
        return data if object_name is None else await self.get(object_name)
