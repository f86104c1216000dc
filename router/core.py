"""The router as plain values: worker tracking, event index, approximate index and policy together. No NATS."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.control import KvDump
from protocol.errors import InvalidRequest, Overloaded, WorkerUnavailable
from protocol.events import Heartbeat, KvCleared, KvEvent, KvEventBatch, KvRemoved, KvStored, LoadReport, WorkerCard
from protocol.kv import chain_hashes, local_block_hashes, tokens_from_bytes
from protocol.routing import RouteDecision, RouteRequest
from router import policy
from router.approx import ApproxIndex
from router.index import KvIndex
from router.tracker import WorkerState, WorkerTracker


@dataclass(frozen=True)
class RouterConfig:
    policy: policy.PolicyConfig = field(default_factory=policy.PolicyConfig)
    approx_block_size: int = 16  # routing block size for workers without a token cache (image, encode)
    approx_ttl_s: float = 120.0
    approx_max_blocks: int = 1 << 20
    lapse_factor: float = 3.0  # missed heartbeat intervals before a worker counts as gone
    retry_after_s: float = 1.0  # suggested to clients when every worker is busy


@dataclass
class EventStats:
    applied: dict[tuple[str, str], int] = field(default_factory=dict)  # (event type, status) -> count

    def count(self, kind: str, status: str) -> None:
        self.applied[(kind, status)] = self.applied.get((kind, status), 0) + 1


class Router:
    """Feed it worker events; ask it where a request goes."""

    def __init__(self, config: RouterConfig = RouterConfig(), rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.rng = rng or random.Random()
        self.clock = clock
        self.tracker = WorkerTracker(config.lapse_factor)
        self.index = KvIndex()
        self.approx = ApproxIndex(config.approx_ttl_s, config.approx_max_blocks)
        self.stats = EventStats()
        self.num_matched_blocks = 0  # hit rate = matched / total request blocks
        self.num_request_blocks = 0
        self._last_event_id: dict[str, int] = {}
        self._dumping: dict[str, list[KvEvent]] = {}  # worker -> events buffered while its dump is pending
        self._rr = 0
        self._behind_since: dict[str, float] = {}  # worker -> when its heartbeat first announced unseen events

    # --- worker events --------------------------------------------------------------------------

    def on_heartbeat(self, beat: Heartbeat) -> bool:
        """Record a heartbeat; True if the router should ask this worker for a KV dump."""
        card = beat.card
        is_new = self.tracker.heartbeat(card, beat.load, beat.last_kv_event_id, beat.interval_s, self.clock(), beat.draining)
        if not card.publishes_kv_events or card.worker_id in self._dumping:
            return False
        behind = beat.last_kv_event_id > self._last_event_id.get(card.worker_id, 0)
        return (is_new and beat.last_kv_event_id > 0) or (behind and not is_new and self._stale(card.worker_id))

    def _stale(self, worker_id: str) -> bool:
        """Heartbeat says events exist that never arrived for a whole interval."""
        now = self.clock()
        since = self._behind_since.setdefault(worker_id, now)
        return now - since >= self.tracker.workers[worker_id].interval_s

    def on_goodbye(self, worker_id: str) -> None:
        self._forget(worker_id)

    def on_load(self, report: LoadReport) -> None:
        self.tracker.report_load(report)

    def expire(self) -> list[str]:
        """Forget workers whose heartbeat lapsed and expired approximate entries; returns the lapsed ids."""
        now = self.clock()
        lapsed = self.tracker.expire(now)
        for worker_id in lapsed:
            self._forget(worker_id)
        self.approx.expire(now)
        return lapsed

    def _forget(self, worker_id: str) -> None:
        self.tracker.remove(worker_id)
        self.index.remove_worker(worker_id)
        self.approx.remove_worker(worker_id)
        self._last_event_id.pop(worker_id, None)
        self._dumping.pop(worker_id, None)
        self._behind_since.pop(worker_id, None)

    def on_kv_events(self, batch: KvEventBatch) -> bool:
        """Apply events in id order; True if a gap was found and a dump is needed."""
        worker = batch.worker_id
        if worker in self._dumping:
            self._dumping[worker].extend(batch.events)
            return False
        for event in batch.events:
            last = self._last_event_id.get(worker, 0)
            if event.event_id <= last:
                self.stats.count(_kind(event), "duplicate")
                continue
            if event.event_id > last + 1:
                self.stats.count(_kind(event), "gap")
                self._dumping[worker] = [e for e in batch.events if e.event_id >= event.event_id]
                return True
            self._apply(worker, event)
        return False

    def begin_dump(self, worker_id: str) -> None:
        self._dumping.setdefault(worker_id, [])

    def apply_dump(self, dump: KvDump) -> None:
        """Replace a worker's blocks by its dump, then replay events that arrived after it."""
        worker = dump.worker_id
        buffered = self._dumping.pop(worker, [])
        self.index.clear(worker)
        for event in dump.events:
            self._apply_data(worker, event)
        self._last_event_id[worker] = dump.last_event_id
        self._behind_since.pop(worker, None)
        later = sorted((e for e in buffered if e.event_id > dump.last_event_id), key=lambda e: e.event_id)
        if later:
            self.on_kv_events(KvEventBatch(worker_id=worker, events=later))

    def abort_dump(self, worker_id: str) -> None:
        self._dumping.pop(worker_id, None)

    def _apply(self, worker: str, event: KvEvent) -> None:
        self._last_event_id[worker] = event.event_id
        self._behind_since.pop(worker, None)
        self._apply_data(worker, event)

    def _apply_data(self, worker: str, event: KvEvent) -> None:
        match event.data:
            case KvStored(parent_hash=parent, blocks=blocks):
                ok = self.index.store(worker, parent, blocks)
                self.stats.count("stored", "ok" if ok else "parent_not_found")
            case KvRemoved(block_hashes=hashes):
                self.index.remove(worker, hashes)
                self.stats.count("removed", "ok")
            case KvCleared():
                self.index.clear(worker)
                self.stats.count("cleared", "ok")

    # --- routing --------------------------------------------------------------------------------

    def live_workers(self, model: str | None = None) -> list[WorkerCard]:
        return [s.card for s in self.tracker.live(model)]

    def route(self, request: RouteRequest) -> RouteDecision:
        """Pick a worker for the request and add its predicted load. Raises WorkerUnavailable / Overloaded."""
        states = [s for s in self.tracker.live(request.model) if s.worker_id not in request.exclude]
        if not states:
            raise WorkerUnavailable(f"no live worker serves model {request.model!r}", retry_after=self.config.retry_after_s)
        if request.worker_id is not None:
            return self._direct(request, states)
        free = [s for s in states if not policy.is_busy(s, self.config.policy)]
        if not free:
            raise Overloaded("all workers are busy, please retry later", retry_after=self.config.retry_after_s)
        mode = request.mode or self.config.policy.mode
        if mode not in policy.MODES:
            raise InvalidRequest(f"router mode {mode!r} is not one of {', '.join(policy.MODES)}", param="$.nvext.router_mode")
        return self._decide(request, free, mode)

    def _direct(self, request: RouteRequest, states: list[WorkerState]) -> RouteDecision:
        chosen = next((s for s in states if s.worker_id == request.worker_id), None)
        if chosen is None:
            raise WorkerUnavailable(f"worker {request.worker_id!r} is not live for model {request.model!r}")
        return self._decide(request, [chosen], "direct")

    def _decide(self, request: RouteRequest, states: list[WorkerState], mode: str) -> RouteDecision:
        t0 = time.perf_counter()
        approx = not states[0].card.publishes_kv_events
        block_size = self.config.approx_block_size if approx else max(states[0].card.block_size, 1)
        tokens = tokens_from_bytes(request.token_ids)
        local = local_block_hashes(tokens, block_size, request.mm_objects)
        chained = chain_hashes(local)
        t1 = time.perf_counter()
        index = self.approx if approx else self.index
        matches = index.find_matches(local) if mode in ("kv", "direct") else {}
        t2 = time.perf_counter()
        candidates = [policy.Candidate(s, matches.get(s.worker_id, 0), index.num_blocks(s.worker_id)) for s in states]
        scored = policy.kv_costs(candidates, len(tokens), block_size, chained, self.config.policy.overlap_weight)
        best = self._pick(mode, scored, candidates)
        t3 = time.perf_counter()
        self.tracker.add_request(request.request_id, best.worker_id, best.prefill_tokens, chained)
        if approx:
            self.approx.record(best.worker_id, local, chained, self.clock())
        self.num_matched_blocks += best.overlap_blocks
        self.num_request_blocks += len(local)
        return RouteDecision(worker_id=best.worker_id, component=states[0].card.component, overlap_blocks=best.overlap_blocks,
                             num_blocks=len(local), cost=best.cost, mode=mode, hash_s=t1 - t0, match_s=t2 - t1, score_s=t3 - t2)

    def _pick(self, mode: str, scored: list[policy.Scored], candidates: list[policy.Candidate]) -> policy.Scored:
        by_id = {s.worker_id: s for s in scored}
        if mode in ("kv", "direct"):
            sizes = {c.state.worker_id: c.tree_size for c in candidates}
            return policy.pick(scored, sizes, self.config.policy.temperature, self.rng)
        if mode == "round_robin":
            ordered = sorted(by_id)
            self._rr += 1
            return by_id[ordered[self._rr % len(ordered)]]
        if mode == "random":
            return self.rng.choice(scored)
        return by_id[policy.least_loaded([c.state for c in candidates], self.rng).worker_id]

    def on_first_token(self, request_id: str) -> None:
        self.tracker.mark_prefill_done(request_id)

    def on_finish(self, request_id: str) -> None:
        self.tracker.free(request_id)

    @property
    def hit_rate(self) -> float:
        return self.num_matched_blocks / self.num_request_blocks if self.num_request_blocks else 0.0


def _kind(event: KvEvent) -> str:
    return {KvStored: "stored", KvRemoved: "removed", KvCleared: "cleared"}[type(event.data)]
