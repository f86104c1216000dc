"""Approximate mode: for workers without KV events, the router's own decisions become cached blocks with a TTL."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from protocol.events import StoredBlock
from router.index import KvIndex


class ApproxIndex:
    """A KvIndex fed by routing decisions; entries expire after `ttl_s` and the total is capped (oldest pruned)."""

    def __init__(self, ttl_s: float = 120.0, max_blocks: int = 1 << 20, prune_ratio: float = 0.8):
        self.ttl_s = ttl_s
        self.max_blocks = max_blocks
        self.prune_ratio = prune_ratio
        self.index = KvIndex()
        self._expiry: dict[tuple[str, int], float] = {}  # (worker, block_hash) -> expiry time
        self._heap: list[tuple[float, str, int]] = []  # lazy: stale entries are skipped

    def __len__(self) -> int:
        return len(self._expiry)

    def record(self, worker: str, local_hashes: Sequence[int], seq_hashes: Sequence[int], now: float) -> None:
        """The request went to `worker`: treat its blocks as cached there until now + ttl."""
        if not seq_hashes:
            return
        self.index.store(worker, None, [StoredBlock(s, l) for s, l in zip(seq_hashes, local_hashes)])
        expires = now + self.ttl_s
        for block_hash in seq_hashes:
            self._expiry[(worker, block_hash)] = expires
            heapq.heappush(self._heap, (expires, worker, block_hash))
        if len(self._expiry) > self.max_blocks:
            self._prune(int(self.max_blocks * self.prune_ratio))

    def expire(self, now: float) -> int:
        """Drop entries whose TTL passed; returns how many."""
        dropped = 0
        while self._heap and self._heap[0][0] <= now:
            dropped += self._pop_one()
        return dropped

    def _prune(self, target: int) -> None:
        while self._heap and len(self._expiry) > target:
            self._pop_one()

    def _pop_one(self) -> int:
        expires, worker, block_hash = heapq.heappop(self._heap)
        if self._expiry.get((worker, block_hash)) != expires:
            return 0  # refreshed later; a newer heap entry stands for it
        del self._expiry[(worker, block_hash)]
        self.index.remove(worker, [block_hash])
        return 1

    def remove_worker(self, worker: str) -> None:
        self.index.remove_worker(worker)
        for key in [k for k in self._expiry if k[0] == worker]:
            del self._expiry[key]

    def find_matches(self, local_hashes: Sequence[int]) -> dict[str, int]:
        return self.index.find_matches(local_hashes)

    def num_blocks(self, worker: str) -> int:
        return self.index.num_blocks(worker)
