"""KV event feed: applies each worker's events in id order, detects gaps, buffers while a dump is pending."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from protocol.control import KvDump
from protocol.events import KvCleared, KvEvent, KvRemoved, KvStored
from router.index import KvIndex

EVENT_KINDS = {KvStored: "stored", KvRemoved: "removed", KvCleared: "cleared"}


@dataclass
class EventStats:
    applied: dict[tuple[str, str], int] = field(default_factory=dict)  # (event type, status) -> events
    num_dumps: int = 0  # dumps applied
    num_gaps: int = 0  # event-id gaps seen (each asks for a dump)

    def count(self, kind: str, status: str) -> None:
        self.applied[(kind, status)] = self.applied.get((kind, status), 0) + 1


class EventFeed:
    """Per worker: the last applied event id, and the events held back while its dump is in flight."""

    def __init__(self, index: KvIndex, stats: EventStats):
        self.index = index
        self.stats = stats
        self.last_event_id: dict[str, int] = {}
        self._dumping: dict[str, list[KvEvent]] = {}  # worker -> events that arrived while its dump is pending

    def is_dumping(self, worker: str) -> bool:
        return worker in self._dumping

    def on_events(self, worker: str, events: Iterable[KvEvent]) -> bool:
        """Apply events in id order; True if a gap was found (the caller asks the worker for a dump)."""
        pending = self._dumping.get(worker)
        if pending is not None:
            pending.extend(events)
            return False
        events = list(events)
        for position, event in enumerate(events):
            last = self.last_event_id.get(worker, 0)
            if event.event_id <= last:
                self.stats.count(EVENT_KINDS[type(event.data)], "duplicate")
            elif event.event_id > last + 1:
                self.stats.count(EVENT_KINDS[type(event.data)], "gap")
                self.stats.num_gaps += 1
                self._dumping[worker] = events[position:]
                return True
            else:
                self.last_event_id[worker] = event.event_id
                self.apply(worker, event)
        return False

    def apply(self, worker: str, event: KvEvent, status: str = "ok") -> None:
        match event.data:
            case KvStored(parent_hash=parent, blocks=blocks):
                is_ok = self.index.store(worker, parent, blocks)
                self.stats.count("stored", status if is_ok else "parent_not_found")
            case KvRemoved(block_hashes=hashes):
                self.index.remove(worker, hashes)
                self.stats.count("removed", status)
            case KvCleared():
                self.index.clear(worker)
                self.stats.count("cleared", status)

    def begin_dump(self, worker: str) -> None:
        self._dumping.setdefault(worker, [])

    def apply_dump(self, dump: KvDump) -> bool:
        """Replace a worker's blocks by its dump, then replay held-back newer events; True if they still have a gap."""
        worker = dump.worker_id
        held = self._dumping.pop(worker, [])
        self.index.clear(worker)
        for event in dump.events:
            self.apply(worker, event, "dump")
        self.last_event_id[worker] = dump.last_event_id
        self.stats.num_dumps += 1
        later = sorted((e for e in held if e.event_id > dump.last_event_id), key=lambda e: e.event_id)
        return bool(later) and self.on_events(worker, later)

    def abort_dump(self, worker: str) -> None:
        """The dump failed: forget the held-back events; the next heartbeat that shows us behind retries."""
        self._dumping.pop(worker, None)

    def forget(self, worker: str) -> None:
        self.index.remove_worker(worker)
        self.last_event_id.pop(worker, None)
        self._dumping.pop(worker, None)
