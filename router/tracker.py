"""Live workers (heartbeats, goodbyes, lapses), their reported load, and the router's predicted load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol.events import LoadReport, WorkerCard


@dataclass
class WorkerState:
    card: WorkerCard
    last_seen: float  # monotonic seconds of the last heartbeat
    interval_s: float
    load: LoadReport
    last_kv_event_id: int = 0  # as announced by the worker's heartbeat
    draining: bool = False  # alive but taking no new requests
    predicted_prefill_tokens: int = 0  # routed, first token not yet seen
    active_blocks: dict[int, int] = field(default_factory=dict)  # block hash -> active requests using it
    num_routed: int = 0  # requests routed here by this router, in all
    num_active: int = 0  # requests routed here by this router and not finished

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
    blocks: Sequence[int]
    prefill_done: bool = False


class WorkerTracker:
    """Pure bookkeeping; the service feeds it heartbeats and the router feeds it routing decisions."""

    def __init__(self, lapse_factor: float = 3.0):
        self.lapse_factor = lapse_factor  # a worker is gone after this many missed heartbeat intervals
        self.workers: dict[str, WorkerState] = {}
        self._requests: dict[str, _Active] = {}

    def heartbeat(self, card: WorkerCard, load: LoadReport, last_kv_event_id: int, interval_s: float, now: float,
                  draining: bool = False) -> bool:
        """Record a heartbeat; True if this worker was not known before."""
        state = self.workers.get(card.worker_id)
        if state is None:
            self.workers[card.worker_id] = WorkerState(card, now, interval_s, load, last_kv_event_id, draining)
            return True
        state.card, state.last_seen, state.interval_s, state.load = card, now, interval_s, load
        state.last_kv_event_id, state.draining = last_kv_event_id, draining
        return False

    def report_load(self, load: LoadReport) -> None:
        state = self.workers.get(load.worker_id)
        if state is not None:
            state.load = load

    def remove(self, worker_id: str) -> bool:
        state = self.workers.pop(worker_id, None)
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
        """Workers that take new requests (draining ones are alive but excluded)."""
        return [s for s in self.workers.values() if not s.draining and (model is None or s.card.model == model)]

    # --- predicted load -------------------------------------------------------------------------

    def add_request(self, request_id: str, worker_id: str, prefill_tokens: int, blocks: Sequence[int]) -> None:
        state = self.workers.get(worker_id)
        if state is None or request_id in self._requests:
            return
        self._requests[request_id] = _Active(worker_id, prefill_tokens, blocks)
        state.predicted_prefill_tokens += prefill_tokens
        state.num_routed += 1
        state.num_active += 1
        for block in blocks:
            state.active_blocks[block] = state.active_blocks.get(block, 0) + 1

    def mark_prefill_done(self, request_id: str) -> None:
        active = self._requests.get(request_id)
        if active is None or active.prefill_done:
            return
        active.prefill_done = True
        state = self.workers.get(active.worker_id)
        if state is not None:
            state.predicted_prefill_tokens -= active.prefill_tokens

    def free(self, request_id: str) -> None:
        self.mark_prefill_done(request_id)
        active = self._requests.pop(request_id, None)
        state = self.workers.get(active.worker_id) if active else None
        if state is None:
            return
        state.num_active -= 1
        for block in active.blocks:
            left = state.active_blocks.get(block, 0) - 1
            if left > 0:
                state.active_blocks[block] = left
            else:
                state.active_blocks.pop(block, None)

    def worker_of(self, request_id: str) -> str | None:
        active = self._requests.get(request_id)
        return active.worker_id if active else None

    @property
    def num_active_requests(self) -> int:
        return len(self._requests)
