"""Block KV cache with prefix reuse and LRU eviction of unreferenced blocks; emits Dynamo-style KV events."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from protocol.events import KvCleared, KvEventData, KvRemoved, KvStored, StoredBlock


@dataclass
class _Block:
    tokens_hash: int
    parent: int | None
    refs: int = 0


class BlockCache:
    """`num_blocks` slots keyed by chained sequence hash. Referenced blocks are pinned; free ones are LRU."""

    def __init__(self, num_blocks: int, on_event: Callable[[KvEventData], None] | None = None):
        self.num_blocks = num_blocks
        self._blocks: dict[int, _Block] = {}
        self._free: OrderedDict[int, None] = OrderedDict()  # unreferenced blocks, oldest first
        self._emit = on_event or (lambda event: None)
        self.num_hits = 0  # blocks reused across acquisitions
        self.num_stored = 0
        self.num_evicted = 0

    @property
    def num_cached(self) -> int:
        return len(self._blocks)

    @property
    def num_referenced(self) -> int:
        return len(self._blocks) - len(self._free)

    def match_prefix(self, seq_hashes: Sequence[int]) -> int:
        """Leading blocks of `seq_hashes` present in the cache."""
        count = 0
        for h in seq_hashes:
            if h not in self._blocks:
                break
            count += 1
        return count

    def can_fit(self, seq_hashes: Sequence[int]) -> bool:
        missing = sum(1 for h in seq_hashes if h not in self._blocks)
        pinned_free = sum(1 for h in seq_hashes if h in self._free)  # cached but unreferenced: acquire pins them
        return missing <= len(self._free) - pinned_free + (self.num_blocks - len(self._blocks))

    def acquire(self, seq_hashes: Sequence[int], local_hashes: Sequence[int], parent: int | None = None) -> int:
        """Pin the blocks (storing missing ones, evicting LRU free blocks); return how many were cached before.

        New blocks are announced as one KvStored per contiguous run, each under the block just before it.
        """
        cached = self.match_prefix(seq_hashes)
        runs: list[tuple[int | None, list[StoredBlock]]] = []
        for i, (h, local) in enumerate(zip(seq_hashes, local_hashes)):
            before = seq_hashes[i - 1] if i else parent
            block = self._blocks.get(h)
            if block is None:
                self._make_room()
                block = self._blocks[h] = _Block(local, before)
                if runs and runs[-1][1][-1].block_hash == before:
                    runs[-1][1].append(StoredBlock(h, local))
                else:
                    runs.append((before, [StoredBlock(h, local)]))
            elif block.refs == 0:
                self._free.pop(h, None)
            block.refs += 1
        self.num_hits += cached
        for run_parent, blocks in runs:
            self.num_stored += len(blocks)
            self._emit(KvStored(parent_hash=run_parent, blocks=blocks))
        return cached

    def release(self, seq_hashes: Sequence[int]) -> None:
        """Unpin; leaves go first into the LRU so eviction trims chains from the end."""
        for h in reversed(seq_hashes):
            block = self._blocks.get(h)
            if block is None or block.refs == 0:
                continue
            block.refs -= 1
            if block.refs == 0:
                self._free[h] = None

    def _make_room(self) -> None:
        if len(self._blocks) < self.num_blocks:
            return
        if not self._free:
            raise MemoryError("KV cache full: every block is referenced")
        victim, _ = self._free.popitem(last=False)
        del self._blocks[victim]
        self.num_evicted += 1
        self._emit(KvRemoved(block_hashes=[victim]))

    def clear(self) -> None:
        """Drop every unreferenced block (pinned ones stay)."""
        freed = list(self._free)
        for h in freed:
            del self._blocks[h]
        self._free.clear()
        if not self._blocks:
            self._emit(KvCleared())
        elif freed:
            self._emit(KvRemoved(block_hashes=freed))

    def dump(self) -> list[KvStored]:
        """The whole cache as stored events, parents before children."""
        return [KvStored(parent_hash=self._blocks[h].parent, blocks=[StoredBlock(h, self._blocks[h].tokens_hash)]) for h in self._ordered()]

    def _ordered(self) -> list[int]:
        done: set[int] = set()
        order: list[int] = []
        for h in self._blocks:
            chain = []
            while h is not None and h in self._blocks and h not in done:
                chain.append(h)
                done.add(h)
                h = self._blocks[h].parent
            order.extend(reversed(chain))
        return order
