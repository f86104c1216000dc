"""Predicted active blocks: shared prefixes are counted once and released only with their last request."""

from __future__ import annotations

from collections import Counter

from router.keys import prefix_keys
from router.tracker import WorkerTracker, release_blocks
from tests.router.sim import card, heartbeat


def tracker_with(worker_id: str = "w0") -> WorkerTracker:
    tracker = WorkerTracker()
    beat = heartbeat(card(worker_id))
    tracker.heartbeat(beat.card, beat.load, 0, 1.0, now=0.0)
    return tracker


def test_requests_sharing_a_prefix_keep_it_active_until_the_last_one_ends():
    tracker = tracker_with()
    system = prefix_keys([1, 2, 3])
    first, second = prefix_keys([1, 2, 3, 10, 11]), prefix_keys([1, 2, 3, 20])
    assert first[:3] == second[:3] == system
    tracker.add_request("a", "w0", 20, first)
    tracker.add_request("b", "w0", 16, second)
    active = tracker.workers["w0"].active_blocks
    assert len(active) == 6 and [active[k] for k in system] == [2, 2, 2]
    tracker.free("a")
    assert set(active) == set(second) and set(active.values()) == {1}
    tracker.free("b")
    assert not active


def test_release_only_drops_the_blocks_no_other_request_holds():
    keys = prefix_keys(range(100, 164))
    active = Counter(keys)
    active.update(keys[:40])  # another request shares the first 40
    release_blocks(active, keys)
    assert active == Counter(keys[:40])
    release_blocks(active, keys[:40])
    assert not active


def test_release_of_blocks_that_are_not_prefix_closed_still_counts_each_one():
    """Hand-made or colliding keys can break the prefix rule; each key must still lose exactly one reference."""
    active = Counter({1: 1, 2: 3, 3: 1, 4: 2, 5: 1})
    release_blocks(active, [1, 2, 3, 4, 5, 6])
    assert active == Counter({2: 2, 4: 1})
    duplicate = Counter({7: 2, 8: 1})
    release_blocks(duplicate, [8, 7, 7])
    assert not duplicate
