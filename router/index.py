"""Prefix-block index: which worker holds which block, as a radix tree over tokens_hash chains.

Workers report blocks by their own `block_hash` (sequence hash); the tree navigates by `tokens_hash` (local hash),
so the router needs no knowledge of a worker's hashing beyond the shared local hash (Dynamo's RadixTree).
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.events import StoredBlock


class _Node:
    __slots__ = ("key", "parent", "children", "workers")

    def __init__(self, key: int, parent: _Node | None):
        self.key = key  # tokens_hash of this block
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.workers: set[str] = set()


class KvIndex:
    """Apply stored/removed/cleared per worker; answer matched prefix blocks per worker in O(blocks × workers)."""

    def __init__(self) -> None:
        self.root = _Node(0, None)
        self._lookup: dict[str, dict[int, _Node]] = {}  # worker -> block_hash -> node

    def num_blocks(self, worker: str) -> int:
        return len(self._lookup.get(worker, ()))

    @property
    def workers(self) -> list[str]:
        return list(self._lookup)

    def store(self, worker: str, parent_hash: int | None, blocks: Sequence[StoredBlock]) -> bool:
        """Add blocks under `parent_hash` (None = root). False if the parent is unknown for this worker."""
        table = self._lookup.setdefault(worker, {})
        if parent_hash is None:
            node = self.root
        else:
            node = table.get(parent_hash)
            if node is None:
                return False
        for block in blocks:
            child = node.children.get(block.tokens_hash)
            if child is None:
                child = node.children[block.tokens_hash] = _Node(block.tokens_hash, node)
            previous = table.get(block.block_hash)
            if previous is not None and previous is not child:
                self._drop(worker, previous)
            child.workers.add(worker)
            table[block.block_hash] = child
            node = child
        return True

    def remove(self, worker: str, block_hashes: Sequence[int]) -> int:
        """Forget blocks; returns how many were known."""
        table = self._lookup.get(worker)
        if not table:
            return 0
        removed = 0
        for block_hash in block_hashes:
            node = table.pop(block_hash, None)
            if node is not None:
                self._drop(worker, node)
                removed += 1
        return removed

    def remove_worker(self, worker: str) -> None:
        """Drop every block of a worker (cleared event, lapsed heartbeat, goodbye)."""
        for node in self._lookup.pop(worker, {}).values():
            self._drop(worker, node)

    def clear(self, worker: str) -> None:
        self.remove_worker(worker)
        self._lookup[worker] = {}

    def _drop(self, worker: str, node: _Node) -> None:
        node.workers.discard(worker)
        while node is not self.root and not node.workers and not node.children:
            parent = node.parent
            if parent.children.get(node.key) is node:
                del parent.children[node.key]
            node = parent

    def find_matches(self, local_hashes: Sequence[int]) -> dict[str, int]:
        """Per worker, how many leading blocks of the request it holds contiguously (workers with 0 omitted)."""
        scores: dict[str, int] = {}
        node = self.root
        active: set[str] | None = None
        for depth, key in enumerate(local_hashes):
            node = node.children.get(key)
            if node is None:
                break
            active = set(node.workers) if active is None else active & node.workers
            if not active:
                break
            for worker in active:
                scores[worker] = depth + 1
        return scores
