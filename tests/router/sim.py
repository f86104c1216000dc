"""A simulated worker cache for router tests: prefix-closed blocks, real event ids, dumps on demand."""

from __future__ import annotations

import xxhash

from protocol.control import KvDump
from protocol.events import (
    Heartbeat, KvCleared, KvEvent, KvEventBatch, KvEventData, KvRemoved, KvStored, LoadReport, StoredBlock, WorkerCard,
)


class Clock:
    """A router clock the test moves by hand (seconds)."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def card(worker_id: str, model: str = "m", block_size: int = 4, events: bool = True, capacity: int = 8,
         max_queue: int = 8, kv_total_blocks: int = 1000) -> WorkerCard:
    return WorkerCard(worker_id=worker_id, namespace="t", component="mocker", model=model, capacity=capacity,
                      max_queue=max_queue, block_size=block_size, kv_total_blocks=kv_total_blocks,
                      publishes_kv_events=events)


def heartbeat(worker_card: WorkerCard, last_kv_event_id: int = 0, interval_s: float = 1.0, draining: bool = False,
              **load) -> Heartbeat:
    return Heartbeat(card=worker_card, load=LoadReport(worker_id=worker_card.worker_id, **load),
                     last_kv_event_id=last_kv_event_id, interval_s=interval_s, draining=draining)


class SimWorker:
    """Blocks keyed by a hash of their tokens_hash path, so the cache is prefix-closed like a real one."""

    def __init__(self, worker_id: str):
        self.worker_id = worker_id
        self.blocks: dict[int, tuple[int | None, tuple[int, ...]]] = {}  # block_hash -> (parent, path)
        self.last_event_id = 0

    def _hash(self, path: tuple[int, ...]) -> int:
        return xxhash.xxh3_64_intdigest(repr(path).encode())

    def _event(self, data: KvEventData) -> KvEventBatch:
        self.last_event_id += 1
        return KvEventBatch(worker_id=self.worker_id, events=[KvEvent(event_id=self.last_event_id, data=data)])

    def store(self, parent: int | None, tokens_hashes: list[int]) -> KvEventBatch | None:
        """Cache a chain below `parent` (None = root); emits one stored event for the blocks that were new."""
        path = () if parent is None else self.blocks[parent][1]
        first_parent, new = parent, []
        for tokens_hash in tokens_hashes:
            path = (*path, tokens_hash)
            block_hash = self._hash(path)
            if block_hash in self.blocks:
                first_parent = block_hash
                continue
            self.blocks[block_hash] = (new[-1].block_hash if new else first_parent, path)
            new.append(StoredBlock(block_hash, tokens_hash))
        return self._event(KvStored(parent_hash=first_parent, blocks=new)) if new else None

    def remove(self, block_hash: int) -> KvEventBatch:
        """Evict a block and everything below it (keeps the cache prefix-closed)."""
        path = self.blocks[block_hash][1]
        gone = [h for h, (_, p) in self.blocks.items() if p[: len(path)] == path]
        for h in gone:
            del self.blocks[h]
        return self._event(KvRemoved(block_hashes=gone))

    def clear(self) -> KvEventBatch:
        self.blocks.clear()
        return self._event(KvCleared())

    def dump(self) -> KvDump:
        ordered = sorted(self.blocks.items(), key=lambda item: len(item[1][1]))  # parents before children
        events = [KvEvent(event_id=self.last_event_id,
                          data=KvStored(parent_hash=parent, blocks=[StoredBlock(h, path[-1])]))
                  for h, (parent, path) in ordered]
        return KvDump(worker_id=self.worker_id, last_event_id=self.last_event_id, events=events)

    def paths(self) -> dict[int, tuple[int, ...]]:
        return {h: path for h, (_, path) in self.blocks.items()}


def route_request(request_id: str, tokens, model: str = "m", **fields):
    """A RouteRequest for token ids given as a list or array."""
    import numpy as np

    from protocol.routing import RouteRequest

    return RouteRequest(request_id=request_id, model=model, token_ids=np.asarray(tokens, dtype="<i4").tobytes(), **fields)


def stored_chain(worker: SimWorker, tokens, block_size: int = 4) -> KvEventBatch:
    """The stored event a worker emits after caching the full blocks of `tokens` (local hashes as tokens_hash)."""
    from protocol.kv import local_block_hashes

    return worker.store(None, local_block_hashes(list(tokens), block_size))
