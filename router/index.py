"""Prefix-block index: which worker holds which block, as a radix tree over tokens_hash chains.

Workers report blocks by their own `block_hash` (sequence hash); the tree navigates by `tokens_hash` (local hash),
so the router needs no knowledge of a worker's hashing beyond the shared local hash (Dynamo's RadixTree).
Each node keeps the workers holding it as an int bitmask (one bit per worker slot), so a query walks the prompt's
blocks once and does one `&` per block: O(prompt blocks), independent of the number of workers.

A node is a 4-item list, not an object (4× cheaper to create, which is most of event ingest):
    [children: dict tokens_hash -> node (or the shared empty _LEAF), mask: int, tokens_hash: int, parent: node]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import MappingProxyType

from protocol.events import StoredBlock

_LEAF = MappingProxyType({})  # children of every leaf; replaced by a dict on the first child
CHILDREN, MASK, KEY, PARENT = 0, 1, 2, 3  # node fields


def _new_root() -> list:
    return [_LEAF, 0, 0, None]


class KvIndex:
    """Apply stored/removed/cleared per worker; answer matched prefix blocks per worker in O(prompt blocks)."""

    def __init__(self) -> None:
        self.root = _new_root()
        self._lookup: dict[str, dict[int, list]] = {}  # worker -> block_hash -> node
        self._bits: dict[str, int] = {}  # worker -> its bit
        self._workers_by_slot: dict[int, str] = {}
        self._free_slots: list[int] = []
        self._extra_refs: dict[str, dict[int, int]] = {}  # worker -> id(node) -> block hashes beyond the first (rare)

    @property
    def workers(self) -> list[str]:
        return list(self._lookup)

    def num_blocks(self, worker: str) -> int:
        return len(self._lookup.get(worker, ()))

    def num_blocks_of(self, workers: Sequence[str]) -> list[int]:
        """`num_blocks` of each worker, in order."""
        lookup = self._lookup
        return [len(lookup.get(worker, ())) for worker in workers]

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
            key = block.tokens_hash
            previous = table.get(block.block_hash)
            children = node[0]
            child = children.get(key)
            if child is None:
                child = [_LEAF, bit, key, node]
                if children is _LEAF:
                    node[0] = {key: child}
                else:
                    children[key] = child
            elif previous is not child:
                if child[1] & bit:  # the worker holds this block under another hash too: count the extra one
                    extra = self._extra_refs.setdefault(worker, {})
                    extra[id(child)] = extra.get(id(child), 0) + 1
                child[1] |= bit
            if previous is not None and previous is not child:
                self._drop(worker, bit, previous)
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
                self._drop(worker, bit, node)
                removed += 1
        return removed

    def remove_worker(self, worker: str) -> None:
        """Drop every block of a worker (lapsed heartbeat, goodbye) and free its bit."""
        bit = self._bits.pop(worker, None)
        if bit is None:
            return
        for node in self._lookup.pop(worker).values():
            self._drop(worker, bit, node)
        self._extra_refs.pop(worker, None)
        slot = bit.bit_length() - 1
        del self._workers_by_slot[slot]
        self._free_slots.append(slot)

    def clear(self, worker: str) -> None:
        """Cleared event: the worker holds nothing now (it stays known)."""
        self.remove_worker(worker)
        self._bit(worker)

    def _drop(self, worker: str, bit: int, node: list) -> None:
        """Take the worker off a node; unlink nodes left with no worker and no children, bottom-up."""
        extra = self._extra_refs.get(worker)
        if extra and id(node) in extra:  # still held under another block hash
            extra[id(node)] -= 1
            if not extra[id(node)]:
                del extra[id(node)]
            return
        node[1] &= ~bit
        root = self.root
        while node is not root and not node[1] and not node[0]:
            parent = node[3]
            if parent[0].get(node[2]) is node:
                del parent[0][node[2]]
            node = parent

    def find_matches(self, local_hashes: Sequence[int]) -> dict[str, int]:
        """Per worker, how many leading blocks of the request it holds contiguously (workers with 0 omitted)."""
        scores: dict[str, int] = {}
        if not local_hashes:
            return scores
        node = self.root[0].get(local_hashes[0])
        if node is None or not node[1]:
            return scores
        active, depth = node[1], 1
        children = node[0]
        for key in local_hashes[1:]:
            node = children.get(key)
            if node is None:
                break
            mask = active & node[1]
            if mask != active:
                self._credit(scores, active ^ mask, depth)  # these workers' runs end here
                active = mask
                if not mask:
                    break
            depth += 1
            children = node[0]
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
                path.append(node[KEY])
                node = node[PARENT]
            out[block_hash] = tuple(reversed(path))
        return out
