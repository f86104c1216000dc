"""Model registry on JetStream: model cards in a KV bucket, tokenizer files in an Object Store bucket."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import msgspec
import nats
from nats.js.errors import (
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ObjectNotFoundError,
)

from protocol import subjects
from protocol.events import ModelCard, card_decoder, event_encoder

log = logging.getLogger("shell.registry")

def card_key(model: str) -> str:
    """KV keys allow [-/_=.a-zA-Z0-9]; other characters of a model name become '_'."""
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in model)


async def _kv(js, ns: str, replicas: int = 1):
    try:
        return await js.key_value(subjects.models_bucket(ns))
    except BucketNotFoundError:
        return await js.create_key_value(bucket=subjects.models_bucket(ns), history=1, replicas=replicas)


async def _objects(js, ns: str, replicas: int = 1):
    try:
        return await js.object_store(subjects.files_bucket(ns))
    except (BucketNotFoundError, NotFoundError):
        return await js.create_object_store(bucket=subjects.files_bucket(ns), replicas=replicas)


async def retry(op, attempts: int = 40):
    """JetStream writes right after bucket creation can race the stream leader election (NoResponders)."""
    for attempt in range(attempts):
        try:
            return await op()
        except (NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05)


async def _has_object(store, name: str) -> bool:
    try:
        await store.get_info(name)
    except ObjectNotFoundError:
        return False
    return True


async def publish_model(nc: nats.NATS, ns: str, card: ModelCard, files: dict[str, bytes], replicas: int = 1) -> ModelCard:
    """Store `files` (tokenizer.json) content-addressed and put the card; idempotent across workers.

    `replicas` is the JetStream replica count of the buckets when they are created (3 on a 3-node cluster).
    """
    js = nc.jetstream()
    updates: dict = {}
    tokenizer = files.get("tokenizer.json")
    if tokenizer is not None:
        digest = hashlib.sha256(tokenizer).hexdigest()
        store = await retry(lambda: _objects(js, ns, replicas))
        if not await retry(lambda: _has_object(store, digest)):
            await retry(lambda: store.put(digest, tokenizer))
        updates = {"tokenizer_object": digest, "tokenizer_sha256": digest}
    card = msgspec.structs.replace(card, **updates)
    kv = await retry(lambda: _kv(js, ns, replicas))
    await retry(lambda: kv.put(card_key(card.name), event_encoder.encode(card)))
    return card


async def fetch_card(nc: nats.NATS, ns: str, model: str) -> ModelCard | None:
    js = nc.jetstream()
    try:
        kv = await js.key_value(subjects.models_bucket(ns))
        entry = await kv.get(card_key(model))
    except (BucketNotFoundError, NotFoundError):
        return None
    return card_decoder.decode(entry.value) if entry.value else None


async def fetch_file(nc: nats.NATS, ns: str, name: str) -> bytes:
    store = await nc.jetstream().object_store(subjects.files_bucket(ns))
    result = await store.get(name)
    return result.data
