"""Approximate mode: for workers without KV events, the router's own decisions become cached blocks with a TTL."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from protocol.events import StoredBlock
from router.index import KvIndex


class ApproxIndex:
    """A KvIndex fed by routing decisions; entries expire after `ttl_s` and the total is capped (soonest-expiring pruned)."""

    def __init__(self, ttl_s: float = 120.0, max_blocks: int = 1 << 20, prune_ratio: float = 0.8):
        if ttl_s <= 0 or max_blocks < 1 or not 0 < prune_ratio <= 1:
            raise ValueError(f"approx ttl_s={ttl_s}, max_blocks={max_blocks}, prune_ratio={prune_ratio} out of range")
        self.ttl_s = ttl_s
        self.max_blocks = max_blocks
        self.prune_ratio = prune_ratio  # a full index is pruned down to max_blocks × prune_ratio
        self.index = KvIndex()
        self._expiry: dict[tuple[str, int], float] = {}  # (worker, prefix key) -> expiry time
        self._heap: list[tuple[float, str, int]] = []  # lazy: entries refreshed later are skipped when popped
        self.num_pruned = 0  # entries dropped by the size cap (not by their TTL)

    def __len__(self) -> int:
        return len(self._expiry)

    def record(self, worker: str, local_hashes: Sequence[int], keys: Sequence[int], now: float) -> None:
        """The request went to `worker`: treat its blocks as cached there until now + ttl (refreshing older entries)."""
        if not keys:
            return
        self.index.store(worker, None, [StoredBlock(key, local) for key, local in zip(keys, local_hashes)])
        expires = now + self.ttl_s
        for key in keys:
            self._expiry[(worker, key)] = expires
            heapq.heappush(self._heap, (expires, worker, key))
        if len(self._expiry) > self.max_blocks:
            target = int(self.max_blocks * self.prune_ratio)
            while self._heap and len(self._expiry) > target:
                self.num_pruned += self._pop_one()
        if len(self._heap) > 4 * max(len(self._expiry), 1024):
            self._compact()

    def expire(self, now: float) -> int:
        """Drop entries whose TTL passed; returns how many."""
        dropped = 0
        while self._heap and self._heap[0][0] <= now:
            dropped += self._pop_one()
        return dropped

    def _pop_one(self) -> int:
        expires, worker, key = heapq.heappop(self._heap)
        if self._expiry.get((worker, key)) != expires:
            return 0  # refreshed later (or its worker left); a newer heap entry stands for it
        del self._expiry[(worker, key)]
        self.index.remove(worker, [key])
        return 1

    def _compact(self) -> None:
        """Rebuild the heap from live entries (refreshes leave stale ones behind)."""
        self._heap = [(expires, worker, key) for (worker, key), expires in self._expiry.items()]
        heapq.heapify(self._heap)

    def remove_worker(self, worker: str) -> None:
        self.index.remove_worker(worker)
        for entry in [e for e in self._expiry if e[0] == worker]:
            del self._expiry[entry]

    def find_matches(self, local_hashes: Sequence[int]) -> dict[str, int]:
        return self.index.find_matches(local_hashes)

    def num_blocks(self, worker: str) -> int:
        return self.index.num_blocks(worker)

    def num_blocks_of(self, workers: Sequence[str]) -> list[int]:
        return self.index.num_blocks_of(workers)
