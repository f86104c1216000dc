"""ByteBudgetLRU: least recently used out first under a byte budget, with hit/miss/eviction counts."""

from __future__ import annotations

import numpy as np

from shell.lru import ByteBudgetLRU


def test_lru_under_a_byte_budget():
    cache = ByteBudgetLRU(max_bytes=3 * 400)
    for key in (1, 2, 3):
        assert cache.put(key, np.zeros(100, np.float32)) == 0
    assert cache.get(1) is not None  # 1 is now the most recent
    assert cache.put(4, np.zeros(100, np.float32)) == 1  # evicts 2, the least recent
    assert 2 not in cache and 1 in cache and cache.get(2) is None
    assert (cache.num_hits, cache.num_misses, cache.num_evictions, cache.num_bytes, len(cache)) == (1, 1, 1, 1200, 3)


def test_an_entry_over_the_budget_is_not_stored_and_a_zero_budget_stores_nothing():
    assert ByteBudgetLRU(100).put(1, np.zeros(100, np.float32)) == 0
    off = ByteBudgetLRU(0)
    off.put(1, np.zeros(1, np.float32))
    assert len(off) == 0 and off.get(1) is None
