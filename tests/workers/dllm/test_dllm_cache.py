"""The cross-request prefix cache: longest-prefix match, LRU eviction of leaves, and the KV events it publishes."""

from __future__ import annotations

import torch

from protocol.events import KvCleared, KvRemoved, KvStored
from protocol.kv import chain_hashes
from workers.dllm.cache import CachedBlock, PrefixCache, concat_blocks


def chain(locals_: list[int]) -> list[CachedBlock]:
    hashes = chain_hashes(locals_)
    kv = ((torch.zeros(2, 4, 3), torch.ones(2, 4, 3)),)
    return [CachedBlock(h, hashes[i - 1] if i else None, local, kv) for i, (h, local) in enumerate(zip(hashes, locals_))]


def test_match_returns_longest_cached_prefix_and_concatenates_kv():
    cache = PrefixCache(max_blocks=10)
    blocks = chain([1, 2, 3])
    cache.insert([], blocks[:2])
    found = cache.match([b.block_hash for b in blocks])
    assert [b.block_hash for b in found] == [b.block_hash for b in blocks[:2]]
    keys, values = concat_blocks(found)[0]
    assert keys.shape == (2, 8, 3) and values.shape == (2, 8, 3)


def test_insert_publishes_stored_with_parent_and_eviction_publishes_removed_leaves_first():
    events = []
    cache = PrefixCache(max_blocks=3, sink=events.append)
    a = chain([1, 2, 3])
    cache.insert([], a)
    assert events == [KvStored(parent_hash=None, blocks=events[0].blocks)]
    assert [b.block_hash for b in events[0].blocks] == [b.block_hash for b in a]
    b = chain([9])
    cache.insert([], b)  # full: the least recently used leaf (a's last block) goes, never a parent
    assert events[1] == KvRemoved(block_hashes=[a[2].block_hash])
    assert events[2].parent_hash is None and events[2].blocks[0].block_hash == b[0].block_hash
    assert len(cache.match([x.block_hash for x in a])) == 2


def test_parents_outlive_children_under_lru():
    cache = PrefixCache(max_blocks=4)
    shared = chain([1, 2])
    cache.insert([], shared)
    branch = chain([1, 2, 7])
    cache.insert([h.block_hash for h in shared], branch[2:])
    for local in ([40], [41], [42]):
        cache.insert([], chain(local))
    # three evictions took leaves only: the shared root must still be matchable before its children
    assert cache.num_blocks == 4
    assert cache.match([shared[0].block_hash])


def test_clear_publishes_cleared_and_dump_lists_parents_first():
    events = []
    cache = PrefixCache(max_blocks=10, sink=events.append)
    blocks = chain([5, 6, 7])
    cache.insert([], blocks)
    cache.match([blocks[0].block_hash])  # reorders recency; the dump must still put parents first
    dumped = cache.dump()
    assert [d.blocks[0].block_hash for d in dumped] == [b.block_hash for b in blocks]
    assert [d.parent_hash for d in dumped] == [None, blocks[0].block_hash, blocks[1].block_hash]
    cache.clear()
    assert events[-1] == KvCleared() and cache.num_blocks == 0


def test_zero_budget_stores_nothing_and_publishes_nothing():
    events = []
    cache = PrefixCache(max_blocks=0, sink=events.append)
    assert cache.insert([], chain([1, 2])) == 0
    assert events == [] and cache.num_blocks == 0
