"""Live workers (heartbeats, goodbyes, lapses), their reported load, and the router's predicted load."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol.events import Heartbeat, LoadReport, WorkerCard
from router.prefill import PrefillQueue


@dataclass
class WorkerState:
    card: WorkerCard
    last_seen: float  # router clock seconds of the last heartbeat
    interval_s: float
    load: LoadReport
    last_kv_event_id: int = 0  # as announced by the worker's heartbeat
    is_draining: bool = False  # finishing in-flight work; route nothing new
    is_busy: bool = False  # over a busy threshold at its last report (set by the router)
    predicted_prefill_tokens: int = 0  # routed, first token not yet seen
    prefill: PrefillQueue = field(default_factory=PrefillQueue)  # those tokens in seconds of this worker's time
    active_blocks: Counter[int] = field(default_factory=Counter)  # prefix key -> active requests using it
    num_routed: int = 0  # requests routed here (by any synced router), in all
    num_active: int = 0  # requests routed here and not finished

    @property
    def worker_id(self) -> str:
        return self.card.worker_id

    @property
    def num_active_blocks(self) -> int:
        return len(self.active_blocks)


@dataclass
class _Active:
    worker_id: str
    prefill_tokens: int
    blocks: Sequence[int]  # prefix keys (router.keys)
    origin: str  # router id that routed it ("" = this router)
    started: float  # router clock seconds
    prefill_s: float = 0.0  # predicted seconds of prefill (router.prefill), given back at the first token
    prefill_done: bool = False


def heartbeat_problem(beat: Heartbeat) -> str | None:
    """Why a heartbeat cannot describe a live worker (negative counts, non-finite times), or None if it can."""
    card = beat.card
    counts = {"capacity": card.capacity, "max_queue": card.max_queue, "block_size": card.block_size,
              "kv_total_blocks": card.kv_total_blocks, "last_kv_event_id": beat.last_kv_event_id}
    negative = [name for name, value in counts.items() if value < 0]
    if negative:
        return f"negative {', '.join(negative)}"
    if not (math.isfinite(beat.interval_s) and beat.interval_s > 0 and math.isfinite(card.started_at)):
        return f"interval_s={beat.interval_s} and started_at={card.started_at} must be finite (interval > 0)"
    if not card.worker_id or not card.model:
        return "empty worker_id or model"
    return None


class WorkerTracker:
    """Pure bookkeeping; the router feeds it heartbeats, routing decisions and replica sync events."""

    def __init__(self, lapse_factor: float = 3.0, prefill_rate: float | None = None):
        self.lapse_factor = lapse_factor  # a worker is gone after this many missed heartbeat intervals
        self.prefill_rate = prefill_rate  # tokens/s for PrefillQueue; None = learn per worker, 0 = no drain
        self.workers: dict[str, WorkerState] = {}
        self._by_model: dict[str, list[WorkerState]] = {}  # rebuilt when a worker comes or goes
        self._requests: dict[str, _Active] = {}

    def heartbeat(self, card: WorkerCard, load: LoadReport, last_kv_event_id: int, interval_s: float, now: float,
                  is_draining: bool = False) -> bool:
        """Record a heartbeat; True if this worker was not known before."""
        state = self.workers.get(card.worker_id)
        if state is None:
            self.workers[card.worker_id] = WorkerState(card, now, interval_s, load, last_kv_event_id, is_draining,
                                                       prefill=PrefillQueue(self.prefill_rate))
            self._by_model.clear()
            return True
        if card.model != state.card.model:
            self._by_model.clear()
        state.card, state.last_seen, state.interval_s, state.load = card, now, interval_s, load
        state.last_kv_event_id, state.is_draining = last_kv_event_id, is_draining
        return False

    def report_load(self, load: LoadReport) -> WorkerState | None:
        state = self.workers.get(load.worker_id)
        if state is not None:
            state.load = load
        return state

    def remove(self, worker_id: str) -> bool:
        state = self.workers.pop(worker_id, None)
        self._by_model.clear()
        for request_id in [r for r, a in self._requests.items() if a.worker_id == worker_id]:
            del self._requests[request_id]
        return state is not None

    def expire(self, now: float) -> list[str]:
        """Remove and return workers whose heartbeat lapsed."""
        lapsed = [w for w, s in self.workers.items() if now - s.last_seen > self.lapse_factor * s.interval_s]
        for worker_id in lapsed:
            self.remove(worker_id)
        return lapsed

    def live(self, model: str | None = None) -> list[WorkerState]:
        """Known workers (of one model); the returned list is shared, do not change it."""
        if model is None:
            return list(self.workers.values())
        states = self._by_model.get(model)
        if states is None:
            states = self._by_model[model] = [s for s in self.workers.values() if s.card.model == model]
        return states

    # --- predicted load -------------------------------------------------------------------------

    def add_request(self, request_id: str, worker_id: str, prefill_tokens: int, blocks: Sequence[int],
                    origin: str = "", now: float = 0.0) -> bool:
        """Count a routed request against its worker until `free`; False if unknown worker or known request."""
        state = self.workers.get(worker_id)
        if state is None or request_id in self._requests:
            return False
        seconds = state.prefill.add(prefill_tokens, now)
        self._requests[request_id] = _Active(worker_id, prefill_tokens, blocks, origin, now, seconds)
        state.predicted_prefill_tokens += prefill_tokens
        state.num_routed += 1
        state.num_active += 1
        state.active_blocks.update(blocks)  # counts in C
        return True

    def mark_prefill_done(self, request_id: str, now: float | None = None) -> bool:
        """The request's first token came back (at `now`; None = it ended without one, learn nothing)."""
        active = self._requests.get(request_id)
        if active is None or active.prefill_done:
            return False
        active.prefill_done = True
        state = self.workers.get(active.worker_id)
        if state is not None:
            state.predicted_prefill_tokens -= active.prefill_tokens
            state.prefill.done(active.prefill_tokens, active.prefill_s, active.started, now)
        return True

    def free(self, request_id: str) -> bool:
        self.mark_prefill_done(request_id)
        request = self._requests.pop(request_id, None)
        state = self.workers.get(request.worker_id) if request else None
        if state is None:
            return False
        state.num_active -= 1
        active = state.active_blocks
        for block in request.blocks:
            left = active.get(block, 0) - 1
            if left > 0:
                active[block] = left
            else:
                active.pop(block, None)
        return True

    def drop_stale(self, now: float, max_age_s: float) -> list[str]:
        """Free requests another router added and never freed (that router died); returns their ids."""
        stale = [r for r, a in self._requests.items() if a.origin and now - a.started > max_age_s]
        for request_id in stale:
            self.free(request_id)
        return stale

    def worker_of(self, request_id: str) -> str | None:
        active = self._requests.get(request_id)
        return active.worker_id if active else None

    def request_blocks(self, request_id: str) -> tuple[int, Sequence[int]]:
        """(prefill tokens, prefix keys) of an active request, for replica sync."""
        active = self._requests[request_id]
        return active.prefill_tokens, active.blocks

    @property
    def num_active_requests(self) -> int:
        return len(self._requests)
