"""The mocker's block cache: prefix reuse, LRU eviction of unpinned blocks, and the KV events it announces."""

from __future__ import annotations

from protocol.events import KvRemoved, KvStored, StoredBlock
from workers.mocker.kvcache import BlockCache


def _cache(num_blocks: int):
    events = []
    return BlockCache(num_blocks, events.append), events


def test_prefix_blocks_are_reused_and_counted():
    cache, events = _cache(8)
    assert cache.acquire([1, 2, 3], [11, 12, 13]) == 0
    cache.release([1, 2, 3])
    assert cache.acquire([1, 2, 4], [11, 12, 14]) == 2
    assert events[-1] == KvStored(parent_hash=2, blocks=[StoredBlock(4, 14)])


def test_eviction_takes_unpinned_leaves_first_and_announces_removal():
    cache, events = _cache(3)
    cache.acquire([1, 2, 3], [11, 12, 13])
    cache.release([1, 2, 3])
    cache.acquire([7], [17])
    assert isinstance(events[-2], KvRemoved) and events[-2].block_hashes == [3]
    assert cache.match_prefix([1, 2, 3]) == 2


def test_new_blocks_after_a_gap_are_announced_per_contiguous_run_with_their_own_parent():
    cache, events = _cache(8)
    cache.acquire([1, 2, 3, 4], [11, 12, 13, 14])
    cache.release([1, 2, 3, 4])
    cache._blocks.pop(2)  # a middle block evicted while a later one survived
    cache._free.pop(2)
    events.clear()
    cache.acquire([1, 2, 3, 4, 5], [11, 12, 13, 14, 15])
    stored = [e for e in events if isinstance(e, KvStored)]
    assert [(e.parent_hash, [b.block_hash for b in e.blocks]) for e in stored] == [(1, [2]), (4, [5])]
