"""Cross-request prefix cache of finished blocks' KV, keyed by protocol.kv chained block hashes, LRU under a budget.

Exact because blocks are computed with block-causal attention: a block's KV depends only on the tokens of the
blocks up to and including it, which is exactly what its chained hash covers. Every insert and eviction is
published as KvStored / KvRemoved so the router can route on it. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from protocol.events import KvCleared, KvEventData, KvRemoved, KvStored, StoredBlock

BlockKv = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (keys, values): [kv_heads, block_size, head_dim]
EventSink = Callable[[KvEventData], None]


@dataclass(frozen=True)
class CachedBlock:
    block_hash: int  # chained sequence hash (covers the whole prefix up to this block)
    parent_hash: int | None
    tokens_hash: int  # local hash of this block's tokens
    kv: BlockKv


class PrefixCache:
    """LRU over blocks; a parent is always touched after its children, so eviction takes leaves first."""

    def __init__(self, max_blocks: int, sink: EventSink | None = None):
        self.max_blocks = max_blocks
        self._sink = sink
        self._blocks: OrderedDict[int, CachedBlock] = OrderedDict()  # least recently used first
        self._num_children: dict[int, int] = {}
        self._lock = threading.Lock()
        self.num_hits = 0  # blocks served by match()
        self.num_evictions = 0

    def set_sink(self, sink: EventSink | None) -> None:
        with self._lock:
            self._sink = sink

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def match(self, block_hashes: Sequence[int]) -> list[CachedBlock]:
        """Longest cached prefix of a chain of block hashes (marked as recently used)."""
        with self._lock:
            found: list[CachedBlock] = []
            for block_hash in block_hashes:
                block = self._blocks.get(block_hash)
                if block is None:
                    break
                found.append(block)
            self._touch([b.block_hash for b in found])
            self.num_hits += len(found)
            return found

    def insert(self, ancestors: Sequence[int], blocks: Sequence[CachedBlock]) -> int:
        """Store `blocks` (a chain continuing `ancestors`); publish one KvStored; return how many were new."""
        with self._lock:
            protected = set(ancestors) | {b.block_hash for b in blocks}
            new: list[CachedBlock] = []
            removed: list[int] = []
            for block in blocks:
                if block.block_hash in self._blocks:
                    continue
                if block.parent_hash is not None and block.parent_hash not in self._blocks:
                    break  # parent evicted meanwhile: the rest of the chain is unreachable
                if not self._make_room(protected, removed):
                    break
                self._add(block)
                new.append(block)
            self._touch([*ancestors, *(b.block_hash for b in blocks if b.block_hash in self._blocks)])
            self._publish_removed(removed)
            if new:
                self._publish(KvStored(parent_hash=new[0].parent_hash, blocks=_stored(new)))
            return len(new)

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._num_children.clear()
            self._publish(KvCleared())

    def dump(self) -> list[KvStored]:
        """The whole cache as stored events, parents before children (router gap recovery)."""
        with self._lock:
            ordered = _parents_first(self._blocks)
            return [KvStored(parent_hash=b.parent_hash, blocks=_stored([b])) for b in ordered]

    def _add(self, block: CachedBlock) -> None:
        self._blocks[block.block_hash] = block
        self._num_children[block.block_hash] = 0
        if block.parent_hash is not None:
            self._num_children[block.parent_hash] += 1

    def _make_room(self, protected: set[int], removed: list[int]) -> bool:
        while len(self._blocks) >= self.max_blocks:
            victim = next((h for h in self._blocks if self._num_children[h] == 0 and h not in protected), None)
            if victim is None:
                return False
            block = self._blocks.pop(victim)
            del self._num_children[victim]
            if block.parent_hash is not None:
                self._num_children[block.parent_hash] -= 1
            removed.append(victim)
            self.num_evictions += 1
        return True

    def _touch(self, chain: Sequence[int]) -> None:
        for block_hash in reversed(chain):  # root last: parents end up more recent than children
            if block_hash in self._blocks:
                self._blocks.move_to_end(block_hash)

    def _publish_removed(self, removed: list[int]) -> None:
        if removed:
            self._publish(KvRemoved(block_hashes=removed))

    def _publish(self, data: KvEventData) -> None:
        if self._sink is not None:
            self._sink(data)


def _stored(blocks: Sequence[CachedBlock]) -> list[StoredBlock]:
    return [StoredBlock(block_hash=b.block_hash, tokens_hash=b.tokens_hash) for b in blocks]


def _parents_first(blocks: dict[int, CachedBlock]) -> list[CachedBlock]:
    depth: dict[int, int] = {}
    for start in blocks:
        chain = []
        block_hash: int | None = start
        while block_hash is not None and block_hash in blocks and block_hash not in depth:
            chain.append(block_hash)
            block_hash = blocks[block_hash].parent_hash
        base = depth.get(block_hash, -1) if block_hash is not None else -1
        for offset, h in enumerate(reversed(chain)):
            depth[h] = base + 1 + offset
    return sorted(blocks.values(), key=lambda b: depth[b.block_hash])


def concat_blocks(blocks: Sequence[CachedBlock]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer KV of a run of cached blocks: [kv_heads, num_blocks * block_size, head_dim]."""
    num_layers = len(blocks[0].kv)
    return [
        (torch.cat([b.kv[i][0] for b in blocks], dim=1), torch.cat([b.kv[i][1] for b in blocks], dim=1))
        for i in range(num_layers)
    ]
