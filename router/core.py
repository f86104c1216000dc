"""The router as plain values: worker tracking, event index, approximate index, policy and replica sync. No NATS."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from protocol.control import KvDump
from protocol.errors import InvalidRequest, Overloaded, WorkerUnavailable
from protocol.events import Heartbeat, KvEventBatch, LoadReport, WorkerCard
from protocol.kv import local_block_hashes, tokens_from_bytes
from protocol.routing import RouteDecision, RouteRequest, SyncEvent
from router import policy
from router.approx import ApproxIndex
from router.feed import EventFeed, EventStats
from router.index import KvIndex
from router.keys import prefix_keys
from router.tracker import WorkerState, WorkerTracker


APPROX_PAD = -1  # token id (u32 0xFFFFFFFF) that fills the last partial block in approximate mode


@dataclass(frozen=True)
class RouterConfig:
    policy: policy.PolicyConfig = field(default_factory=policy.PolicyConfig)
    approx_block_size: int = 16  # routing block size for workers without a token cache (image, encode)
    approx_ttl_s: float = 120.0
    approx_max_blocks: int = 1 << 20
    lapse_factor: float = 3.0  # missed heartbeat intervals before a worker counts as gone
    retry_after_s: float = 1.0  # suggested to clients when every worker is busy
    sync_max_age_s: float = 900.0  # a replica's request never freed is dropped after this (that replica died)

    def __post_init__(self) -> None:
        if self.approx_block_size < 1 or self.lapse_factor <= 0:
            raise ValueError(f"router approx_block_size={self.approx_block_size} and lapse_factor={self.lapse_factor} "
                             "must be positive")


def pad_to_block(tokens: np.ndarray, block_size: int) -> np.ndarray:
    """Approximate mode keys the trailing partial block too (padded), so short prompts (image prompts) stick."""
    tail = len(tokens) % block_size
    return np.concatenate([tokens, np.full(block_size - tail, APPROX_PAD, tokens.dtype)]) if tail else tokens


class Router:
    """Feed it worker events; ask it where a request goes. With a `router_id`, load changes go to `outbox` for replicas."""

    def __init__(self, config: RouterConfig = RouterConfig(), rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, router_id: str | None = None):
        self.config = config
        self.rng = rng or random.Random()
        self.clock = clock
        self.router_id = router_id
        self.outbox: list[SyncEvent] = []  # sync events for the other replicas; the service publishes and clears it
        self.tracker = WorkerTracker(config.lapse_factor, config.policy.prefill_rate)
        self.index = KvIndex()
        self.approx = ApproxIndex(config.approx_ttl_s, config.approx_max_blocks)
        self.stats = EventStats()
        self.feed = EventFeed(self.index, self.stats)
        self.num_matched_blocks = 0  # hit rate = matched / total request blocks, over this router's decisions
        self.num_request_blocks = 0
        self._rr = 0
        self._behind_since: dict[str, float] = {}  # worker -> when its heartbeat first announced unseen events

    # --- worker events --------------------------------------------------------------------------

    def on_heartbeat(self, beat: Heartbeat) -> bool:
        """Record a heartbeat; True if the router should ask this worker for a KV dump."""
        card = beat.card
        is_new = self.tracker.heartbeat(card, beat.load, beat.last_kv_event_id, beat.interval_s, self.clock(),
                                        beat.draining)
        state = self.tracker.workers[card.worker_id]
        state.is_busy = policy.is_busy(state, self.config.policy)
        if not card.publishes_kv_events or self.feed.is_dumping(card.worker_id):
            return False
        if beat.last_kv_event_id <= self.feed.last_event_id.get(card.worker_id, 0):
            self._behind_since.pop(card.worker_id, None)
            return False
        return is_new or self._stale(card.worker_id, beat.interval_s)

    def _stale(self, worker_id: str, interval_s: float) -> bool:
        """The heartbeat announced events that have not arrived for a whole interval."""
        now = self.clock()
        since = self._behind_since.setdefault(worker_id, now)
        return now - since >= interval_s

    def on_goodbye(self, worker_id: str) -> None:
        self._forget(worker_id)

    def on_load(self, report: LoadReport) -> None:
        state = self.tracker.report_load(report)
        if state is not None:
            state.is_busy = policy.is_busy(state, self.config.policy)

    def expire(self) -> list[str]:
        """Forget lapsed workers, expired approximate entries and stale replica requests; returns the lapsed ids."""
        now = self.clock()
        lapsed = self.tracker.expire(now)
        for worker_id in lapsed:
            self._forget(worker_id)
        self.approx.expire(now)
        self.tracker.drop_stale(now, self.config.sync_max_age_s)
        return lapsed

    def _forget(self, worker_id: str) -> None:
        self.tracker.remove(worker_id)
        self.feed.forget(worker_id)
        self.approx.remove_worker(worker_id)
        self._behind_since.pop(worker_id, None)

    def on_kv_events(self, batch: KvEventBatch) -> bool:
        """Apply a worker's events in id order; True if a gap was found and a dump is needed."""
        if batch.worker_id not in self.tracker.workers:
            self.stats.count("batch", "unknown_worker")  # its first heartbeat will ask for a dump
            return False
        return self.feed.on_events(batch.worker_id, batch.events)

    def begin_dump(self, worker_id: str) -> None:
        self.feed.begin_dump(worker_id)

    def apply_dump(self, dump: KvDump) -> bool:
        """Replace a worker's blocks by its dump; True if newer held-back events still have a gap (dump again)."""
        if dump.worker_id not in self.tracker.workers:
            self.feed.abort_dump(dump.worker_id)
            return False
        self._behind_since.pop(dump.worker_id, None)
        return self.feed.apply_dump(dump)

    def abort_dump(self, worker_id: str) -> None:
        self.feed.abort_dump(worker_id)

    # --- routing --------------------------------------------------------------------------------

    def live_workers(self, model: str | None = None) -> list[WorkerCard]:
        return [s.card for s in self.tracker.live(model)]

    def route(self, request: RouteRequest) -> RouteDecision:
        """Pick a worker and add its predicted load. Raises WorkerUnavailable, Overloaded or InvalidRequest."""
        mode = request.mode or self.config.policy.mode
        if mode not in policy.MODES:
            raise InvalidRequest(f"router mode {mode!r} is not one of {', '.join(policy.MODES)}", param="$.nvext.router_mode")
        if len(request.token_ids) % 4:
            raise InvalidRequest("token_ids must be int32 little-endian bytes", param="$.token_ids")
        exclude = request.exclude
        states = [s for s in self.tracker.live(request.model)
                  if not s.is_draining and (not exclude or s.card.worker_id not in exclude)]
        if not states:
            raise WorkerUnavailable(f"no live worker serves model {request.model!r}", retry_after=self.config.retry_after_s)
        if request.worker_id is not None or mode == "direct":
            return self._decide(request, [self._direct(request, states)], "direct")
        free = [s for s in states if not s.is_busy and not policy.is_full(s)]
        if not free:
            raise Overloaded("all workers are busy, please retry later", retry_after=self.config.retry_after_s)
        return self._decide(request, free, mode)

    def _direct(self, request: RouteRequest, states: list[WorkerState]) -> WorkerState:
        if request.worker_id is None:
            raise InvalidRequest("router mode 'direct' needs a worker_id", param="$.nvext.worker_id")
        chosen = next((s for s in states if s.worker_id == request.worker_id), None)
        if chosen is None:
            live = ", ".join(sorted(s.worker_id for s in states)) or "none"
            raise InvalidRequest(f"worker {request.worker_id!r} is not live for model {request.model!r} (live: {live})",
                                 param="$.nvext.worker_id")
        return chosen

    def _decide(self, request: RouteRequest, states: list[WorkerState], mode: str) -> RouteDecision:
        t0 = time.perf_counter()
        card = states[0].card
        is_approx = not card.publishes_kv_events
        block_size = self.config.approx_block_size if is_approx else max(card.block_size, 1)
        tokens = tokens_from_bytes(request.token_ids)
        num_tokens = len(tokens)
        if is_approx:
            tokens = pad_to_block(tokens, block_size)
        local = local_block_hashes(tokens, block_size, request.mm_objects)
        keys = prefix_keys(local)
        t1 = time.perf_counter()
        index = self.approx if is_approx else self.index
        overlaps = index.find_matches(local)
        t2 = time.perf_counter()
        config = self.config.policy
        costs = policy.kv_costs(states, overlaps, num_tokens, block_size, keys, config.overlap_weight, self.clock(),
                                config.miss_penalty, None if is_approx else index.num_blocks)
        chosen = self._choose(mode, states, costs, index)
        worker_id = states[chosen].worker_id
        overlap = overlaps.get(worker_id, 0)
        prefill_tokens = max(num_tokens - overlap * block_size, 0)
        self._add(request.request_id, worker_id, prefill_tokens, keys)
        if is_approx:
            self.approx.record(worker_id, local, keys, self.clock())
        self.num_matched_blocks += overlap
        self.num_request_blocks += len(local)
        t3 = time.perf_counter()
        return RouteDecision(worker_id=worker_id, component=card.component, overlap_blocks=overlap, num_blocks=len(local),
                             cost=costs[chosen], mode=mode, hash_s=t1 - t0, match_s=t2 - t1, score_s=t3 - t2)

    def _choose(self, mode: str, states: list[WorkerState], costs: list[float], index: KvIndex | ApproxIndex) -> int:
        if mode in ("kv", "direct"):
            return policy.pick(costs, lambda tied: [index.num_blocks(states[i].card.worker_id) for i in tied],
                               self.config.policy.temperature, self.rng)
        if mode == "round_robin":
            self._rr += 1
            ordered = sorted(range(len(states)), key=lambda i: states[i].worker_id)
            return ordered[self._rr % len(ordered)]
        if mode == "random":
            return self.rng.randrange(len(states))
        return policy.least_loaded(states, self.rng)

    def _add(self, request_id: str, worker_id: str, prefill_tokens: int, keys: list[int]) -> None:
        if self.tracker.add_request(request_id, worker_id, prefill_tokens, keys, now=self.clock()) and self.router_id:
            self.outbox.append(SyncEvent(router_id=self.router_id, request_id=request_id, kind="add", worker_id=worker_id,
                                         prefill_tokens=prefill_tokens, blocks=keys))

    def on_first_token(self, request_id: str) -> None:
        if self.tracker.mark_prefill_done(request_id, self.clock()) and self.router_id:
            self.outbox.append(SyncEvent(router_id=self.router_id, request_id=request_id, kind="prefill_done"))

    def on_finish(self, request_id: str) -> None:
        if self.tracker.free(request_id) and self.router_id:
            self.outbox.append(SyncEvent(router_id=self.router_id, request_id=request_id, kind="free"))

    def apply_sync(self, event: SyncEvent) -> None:
        """Load another replica added or removed (our own events come back on the subject too and are ignored)."""
        if event.router_id == self.router_id:
            return
        match event.kind:
            case "add":
                self.tracker.add_request(event.request_id, event.worker_id, event.prefill_tokens, event.blocks,
                                         origin=event.router_id, now=self.clock())
            case "prefill_done":
                self.tracker.mark_prefill_done(event.request_id, self.clock())
            case "free":
                self.tracker.free(event.request_id)

    def take_outbox(self) -> list[SyncEvent]:
        taken, self.outbox = self.outbox, []
        return taken

    def note_decision(self, decision: RouteDecision) -> None:
        """Count a decision another router made for us (remote mode) towards the hit rate."""
        self.num_matched_blocks += decision.overlap_blocks
        self.num_request_blocks += decision.num_blocks

    @property
    def hit_rate(self) -> float:
        return self.num_matched_blocks / self.num_request_blocks if self.num_request_blocks else 0.0
