"""An LRU keyed by content hash under a byte budget (values have `.nbytes`): decoded images, image embeddings."""

from __future__ import annotations

from collections import OrderedDict


class ByteBudgetLRU:
    """Least recently used first; an entry larger than the whole budget is never stored."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, object] = OrderedDict()
        self.num_bytes = 0
        self.num_hits = 0
        self.num_misses = 0
        self.num_evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return key in self._items

    def get(self, key: int):
        """The cached value (counted as a hit, made most recent) or None (a miss)."""
        found = self._items.get(key)
        if found is None:
            self.num_misses += 1
            return None
        self._items.move_to_end(key)
        self.num_hits += 1
        return found

    def put(self, key: int, value) -> int:
        """Store `value`; returns how many older entries were evicted to make room."""
        size = value.nbytes
        if size > self.max_bytes or key in self._items:
            return 0
        self._items[key] = value
        self.num_bytes += size
        evicted = 0
        while self.num_bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.num_bytes -= old.nbytes
            evicted += 1
        self.num_evictions += evicted
        return evicted

    def clear(self) -> None:
        self._items.clear()
        self.num_bytes = 0
