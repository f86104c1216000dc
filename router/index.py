"""Prefix-block index: which worker holds which block, as a radix tree over tokens_hash chains.

Workers report blocks by their own `block_hash` (sequence hash); the tree navigates by `tokens_hash` (local hash),
so the router needs no knowledge of a worker's hashing beyond the shared local hash (Dynamo's RadixTree).
Each node keeps the workers holding it as an int bitmask (one bit per worker slot), so a query walks the prompt's
blocks once and does one `&` per block: O(prompt blocks), independent of the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import MappingProxyType

from protocol.events import StoredBlock

_NO_CHILDREN = MappingProxyType({})  # shared by leaves; replaced by a dict on the first child


class _Node:
    __slots__ = ("key", "parent", "children", "mask")

    def __init__(self, key: int, parent: _Node | None):
        self.key = key  # tokens_hash of this block
        self.parent = parent
        self.children: dict[int, _Node] = _NO_CHILDREN  # type: ignore[assignment]
        self.mask = 0  # bit (1 << slot) set for every worker holding this block


class KvIndex:
    """Apply stored/removed/cleared per worker; answer matched prefix blocks per worker in O(prompt blocks)."""

    def __init__(self) -> None:
        self.root = _Node(0, None)
        self._lookup: dict[str, dict[int, _Node]] = {}  # worker -> block_hash -> node
        self._bits: dict[str, int] = {}  # worker -> its bit
        self._workers_by_slot: dict[int, str] = {}
        self._free_slots: list[int] = []

    @property
    def workers(self) -> list[str]:
        return list(self._lookup)

    def num_blocks(self, worker: str) -> int:
        return len(self._lookup.get(worker, ()))

    @property
    def num_entries(self) -> int:
        """(worker, block) pairs held, over all workers."""
        return sum(len(table) for table in self._lookup.values())

    def _bit(self, worker: str) -> int:
        bit = self._bits.get(worker)
        if bit is None:
            slot = self._free_slots.pop() if self._free_slots else len(self._bits)
            bit = self._bits[worker] = 1 << slot
            self._workers_by_slot[slot] = worker
            self._lookup[worker] = {}
        return bit

    def store(self, worker: str, parent_hash: int | None, blocks: Iterable[StoredBlock]) -> bool:
        """Add blocks under `parent_hash` (None = root). False if the parent is unknown for this worker."""
        bit = self._bit(worker)
        table = self._lookup[worker]
        node = self.root if parent_hash is None else table.get(parent_hash)
        if node is None:
            return False
        for block in blocks:
            children = node.children
            child = children.get(block.tokens_hash)
            if child is None:
                if children is _NO_CHILDREN:
                    children = node.children = {}
                child = children[block.tokens_hash] = _Node(block.tokens_hash, node)
            child.mask |= bit  # before dropping a previous place of this hash, so the cascade stops here
            previous = table.get(block.block_hash)
            if previous is not None and previous is not child:
                self._drop(bit, previous)
            table[block.block_hash] = child
            node = child
        return True

    def remove(self, worker: str, block_hashes: Iterable[int]) -> int:
        """Forget blocks; returns how many were known."""
        table = self._lookup.get(worker)
        if not table:
            return 0
        bit = self._bits[worker]
        removed = 0
        for block_hash in block_hashes:
            node = table.pop(block_hash, None)
            if node is not None:
                self._drop(bit, node)
                removed += 1
        return removed

    def remove_worker(self, worker: str) -> None:
        """Drop every block of a worker (lapsed heartbeat, goodbye) and free its bit."""
        bit = self._bits.pop(worker, None)
        if bit is None:
            return
        for node in self._lookup.pop(worker).values():
            self._drop(bit, node)
        slot = bit.bit_length() - 1
        del self._workers_by_slot[slot]
        self._free_slots.append(slot)

    def clear(self, worker: str) -> None:
        """Cleared event: the worker holds nothing now (it stays known)."""
        self.remove_worker(worker)
        self._bit(worker)

    def _drop(self, bit: int, node: _Node) -> None:
        node.mask &= ~bit
        root = self.root
        while node is not root and not node.mask and not node.children:
            parent = node.parent
            if parent.children.get(node.key) is node:
                del parent.children[node.key]
            node = parent

    def find_matches(self, local_hashes: Sequence[int]) -> dict[str, int]:
        """Per worker, how many leading blocks of the request it holds contiguously (workers with 0 omitted)."""
        scores: dict[str, int] = {}
        if not local_hashes:
            return scores
        node = self.root.children.get(local_hashes[0])
        if node is None or not node.mask:
            return scores
        active, depth = node.mask, 1
        children = node.children
        for key in local_hashes[1:] if len(local_hashes) > 1 else ():
            node = children.get(key)
            if node is None:
                break
            mask = active & node.mask
            if mask != active:
                self._credit(scores, active ^ mask, depth)
                active = mask
                if not mask:
                    break
            depth += 1
            children = node.children
        self._credit(scores, active, depth)
        return scores

    def _credit(self, scores: dict[str, int], bits: int, depth: int) -> None:
        by_slot = self._workers_by_slot
        while bits:
            low = bits & -bits
            scores[by_slot[low.bit_length() - 1]] = depth
            bits ^= low

    def blocks_of(self, worker: str) -> dict[int, tuple[int, ...]]:
        """block_hash -> tokens_hash path from the root, for every block of a worker (tests, debugging)."""
        out = {}
        for block_hash, node in self._lookup.get(worker, {}).items():
            path = []
            while node is not self.root:
                path.append(node.key)
                node = node.parent
            out[block_hash] = tuple(reversed(path))
        return out
