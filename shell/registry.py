"""Model registry on JetStream: model cards in a KV bucket, tokenizer files in an Object Store bucket."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import msgspec
import nats
from nats.js.errors import (
    APIError,
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


MAX_REPLICAS = 3  # JetStream's usual cluster replication: a quorum of 2 survives the loss of one node
TOO_FEW_SERVERS = {10023, 10074}  # JetStream err_codes: insufficient resources; replicas > 1 without a cluster


def auto_replicas(nc: nats.NATS) -> int:
    """3 when the client knows 3 or more servers (listed, or told of by the cluster), else 1."""
    nodes = {url.netloc for url in nc.servers}  # the configured ones and those the server's INFO announced
    return MAX_REPLICAS if len(nodes) >= MAX_REPLICAS else 1


async def _create(create, replicas: int):
    """Create a bucket with `replicas`; a cluster too small for them gets a single replica (logged)."""
    try:
        return await create(replicas)
    except APIError as exc:
        if replicas == 1 or exc.err_code not in TOO_FEW_SERVERS:
            raise
        log.warning("registry bucket with %d replicas refused (%s); using 1", replicas, exc)
        return await create(1)


async def _kv(js, ns: str, replicas: int = 1):
    try:
        return await js.key_value(subjects.models_bucket(ns))
    except BucketNotFoundError:
        return await _create(lambda r: js.create_key_value(bucket=subjects.models_bucket(ns), history=1, replicas=r), replicas)


async def _objects(js, ns: str, replicas: int = 1):
    try:
        return await js.object_store(subjects.files_bucket(ns))
    except (BucketNotFoundError, NotFoundError):
        return await _create(lambda r: js.create_object_store(bucket=subjects.files_bucket(ns), replicas=r), replicas)


READ_ATTEMPTS = 3  # reads answer a waiting client: a few tries, then its request fails with a 503


async def retry(op, attempts: int = 40):
    """JetStream writes right after bucket creation can race the stream leader election (NoResponders)."""
    for attempt in range(attempts):
        try:
            return await op()
        except (NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.TimeoutError, asyncio.TimeoutError):
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

    `replicas` is the JetStream replica count of the buckets when they are created; 0 = `auto_replicas`.
    """
    replicas = replicas or auto_replicas(nc)
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
    """The model's card, None if there is none; a NATS error (a node gone, a leader election) is retried, then raised."""
    js = nc.jetstream()

    async def get():
        kv = await js.key_value(subjects.models_bucket(ns))
        return await kv.get(card_key(model))

    try:
        entry = await retry(get, attempts=READ_ATTEMPTS)
    except (BucketNotFoundError, NotFoundError):
        return None
    return card_decoder.decode(entry.value) if entry.value else None


async def fetch_file(nc: nats.NATS, ns: str, name: str) -> bytes:
    async def get():
        store = await nc.jetstream().object_store(subjects.files_bucket(ns))
        return (await store.get(name)).data

    return await retry(get, attempts=READ_ATTEMPTS)
