"""Trace replay in virtual time: the real Router in front of N simulated workers (the mocker's scheduler and cache).

Mooncake traces give each request an arrival time, lengths and `hash_ids`, one per 512-token block of the prompt
(shared ids = shared prefix). Each id becomes a fixed pseudo-random block of token ids, so the router hashes real
tokens. Workers run MockerScheduler steps (Dynamo's prefill/decode polynomials); nothing sleeps.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocol.events import Heartbeat, KvEvent, KvEventBatch, KvEventData, LoadReport, WorkerCard
from protocol.kv import chain_hashes, local_block_hashes
from protocol.routing import RouteRequest
from router.core import Router, RouterConfig
from router.policy import PolicyConfig
from workers.mocker.engine import MockerConfig, MockerScheduler, MockSequence

VOCAB = 32_000  # synthetic token ids are drawn below this
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class TraceRequest:
    arrival_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def load_trace(path: str, max_requests: int | None = None) -> list[TraceRequest]:
    """Read a Mooncake JSONL trace, sorted by arrival."""
    requests = []
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                requests.append(TraceRequest(float(row["timestamp"]), int(row["input_length"]),
                                             max(int(row["output_length"]), 1), tuple(row["hash_ids"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: not a Mooncake trace line ({exc})") from None
            if max_requests is not None and len(requests) >= max_requests:
                break
    return sorted(requests, key=lambda r: r.arrival_ms)


def trace_tokens(request: TraceRequest, trace_block_tokens: int = 512) -> np.ndarray:
    """int32 token ids: each hash id expands to its own fixed pseudo-random block, truncated to input_length."""
    ids = np.asarray(request.hash_ids, dtype=np.uint64)
    positions = ids[:, None] * np.uint64(trace_block_tokens) + np.arange(trace_block_tokens, dtype=np.uint64)
    mixed = positions.ravel()[: request.input_length] * _MIX  # wraps mod 2^64
    mixed ^= mixed >> np.uint64(29)
    return (mixed % np.uint64(VOCAB)).astype("<i4")


@dataclass(frozen=True)
class ReplayConfig:
    policy: str = "kv"
    num_workers: int = 8
    block_size: int = 64  # engine KV block (tokens)
    num_blocks: int = 16384  # KV capacity of each worker, in blocks
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    chunked_prefill: bool = MockerConfig.chunked_prefill
    speedup: float = 1.0  # arrival times are divided by this (4 = four times the trace's request rate)
    trace_block_tokens: int = 512
    overlap_weight: float = PolicyConfig.overlap_weight
    temperature: float = 0.0
    prefill_rate: float | None = None  # router.policy.PolicyConfig.prefill_rate (None = learn per worker)
    miss_penalty: float = PolicyConfig.miss_penalty
    seed: int = 0


@dataclass
class ReplayResult:
    policy: str
    num_requests: int
    hit_rate: float  # cached prompt tokens / prompt tokens, as the workers saw them at admission
    router_hit_rate: float  # matched / request blocks as the router predicted (kv policy only)
    ttft_p50_ms: float
    ttft_p99_ms: float
    wait_p50_ms: float  # TTFT's first part: arrival until the engine step that prefills the request starts
    step_p50_ms: float  # its second part: that step (the request's prefill, batched with others and a decode step)
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_rps: float
    output_tokens_per_s: float
    imbalance: float  # max / mean requests per worker
    requests_per_worker: list[int]
    simulated_s: float
    wall_s: float
    num_steps: int = 0

    def as_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class _Worker:
    worker_id: str
    scheduler: MockerScheduler
    last_event_id: int = 0
    busy: bool = False  # a step is in flight
    step_end_ms: float = 0.0  # when the step in flight ends
    result: object = None
    num_requests: int = 0


@dataclass
class _Tracked:
    arrival_ms: float
    prompt_len: int
    first_token_ms: float | None = None
    cached_tokens: int = 0


@dataclass
class _Totals:
    ttft_ms: list[float] = field(default_factory=list)
    wait_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    last_finish_ms: float = 0.0


class Replay:
    """One policy over one trace. `run()` returns the metrics; the router sees every event as it happens."""

    def __init__(self, requests: Sequence[TraceRequest], config: ReplayConfig):
        self.requests = requests
        self.config = config
        self.now_ms = 0.0
        policy = PolicyConfig(mode=config.policy, overlap_weight=config.overlap_weight, temperature=config.temperature,
                              prefill_rate=config.prefill_rate, miss_penalty=config.miss_penalty,
                              busy_kv_fraction=1.0)  # simulated workers queue instead of refusing
        self.router = Router(RouterConfig(policy=policy), rng=random.Random(config.seed), clock=lambda: self.now_ms / 1e3)
        engine = MockerConfig(block_size=config.block_size, num_blocks=config.num_blocks, max_num_seqs=config.max_num_seqs,
                              max_batched_tokens=config.max_batched_tokens, chunked_prefill=config.chunked_prefill)
        self.workers = {}
        for n in range(config.num_workers):
            worker_id = f"sim{n}"
            feed = self._feed(worker_id) if config.policy == "kv" else None  # other policies never read the index
            self.workers[worker_id] = _Worker(worker_id, MockerScheduler(engine, on_event=feed))
            self.router.on_heartbeat(_heartbeat(self._card(worker_id)))
        self._steps: list[tuple[float, int, str]] = []  # (end ms, tie-break, worker id)
        self._tracked: dict[str, _Tracked] = {}
        self._totals = _Totals()
        self._counter = 0
        self._next_arrival_ms = 0.0  # decode-only steps run in one go up to here (nothing new can arrive before)

    def _card(self, worker_id: str) -> WorkerCard:
        c = self.config
        return WorkerCard(worker_id=worker_id, namespace="replay", component="mocker", model="replay",
                          capacity=c.max_num_seqs, max_queue=1 << 30, block_size=c.block_size,
                          kv_total_blocks=c.num_blocks, publishes_kv_events=True)

    def _feed(self, worker_id: str):
        def publish(data: KvEventData) -> None:
            worker = self.workers[worker_id]
            worker.last_event_id += 1
            event = KvEvent(event_id=worker.last_event_id, data=data)
            self.router.on_kv_events(KvEventBatch(worker_id=worker_id, events=[event]))

        return publish

    def run(self) -> ReplayResult:
        started = time.perf_counter()
        arrivals = iter(enumerate(self.requests))
        upcoming = next(arrivals, None)
        while upcoming is not None or self._steps:
            arrival_ms = self._next_arrival_ms = upcoming[1].arrival_ms / self.config.speedup if upcoming else math.inf
            if self._steps and self._steps[0][0] < arrival_ms:
                self.now_ms, _, worker_id = heapq.heappop(self._steps)
                self._end_step(self.workers[worker_id])
            else:
                self.now_ms = arrival_ms
                self._arrive(*upcoming)
                upcoming = next(arrivals, None)
        return self._result(time.perf_counter() - started)

    def _arrive(self, index: int, request: TraceRequest) -> None:
        tokens = trace_tokens(request, self.config.trace_block_tokens)
        request_id = f"q{index}"
        local = local_block_hashes(tokens, self.config.block_size)
        worker = self.workers[self.choose(request_id, tokens, local)]
        worker.num_requests += 1
        worker.scheduler.add(MockSequence(request_id, len(tokens), chain_hashes(local), local, request.output_length,
                                          token_seed=index))
        self._tracked[request_id] = _Tracked(self.now_ms, len(tokens))
        if not worker.busy:
            self._start_step(worker)

    def choose(self, request_id: str, tokens: np.ndarray, local: list[int]) -> str:
        """The worker for a new request: the real router (bench/bench_replay_oracle.py overrides this)."""
        return self.router.route(RouteRequest(request_id=request_id, model="replay", token_ids=tokens.tobytes())).worker_id

    def _start_step(self, worker: _Worker) -> None:
        result = worker.scheduler.decode_run(self._next_arrival_ms - self.now_ms) or worker.scheduler.step()
        worker.busy = result is not None
        if result is None:
            return
        worker.result, worker.step_end_ms = result, self.now_ms + result.duration_ms
        self._counter += 1
        heapq.heappush(self._steps, (worker.step_end_ms, self._counter, worker.worker_id))

    def _end_step(self, worker: _Worker) -> None:
        result, totals = worker.result, self._totals
        for request_id, cached in result.admitted:
            tracked = self._tracked[request_id]
            tracked.first_token_ms, tracked.cached_tokens = self.now_ms, cached
            totals.ttft_ms.append(self.now_ms - tracked.arrival_ms)
            totals.wait_ms.append(self.now_ms - result.duration_ms - tracked.arrival_ms)
            self.router.on_first_token(request_id)
        for request_id in result.finished:
            tracked = self._tracked.pop(request_id)
            totals.latency_ms.append(self.now_ms - tracked.arrival_ms)
            totals.prompt_tokens += tracked.prompt_len
            totals.cached_tokens += min(tracked.cached_tokens, tracked.prompt_len)
            totals.last_finish_ms = self.now_ms
            self.router.on_finish(request_id)
        totals.output_tokens += len(result.tokens)
        self.router.on_load(self._load(worker))
        self._start_step(worker)

    def _load(self, worker: _Worker) -> LoadReport:
        s = worker.scheduler
        return LoadReport(worker_id=worker.worker_id, active_requests=len(s.running), waiting_requests=len(s.waiting),
                          active_decode_blocks=s.cache.num_referenced, kv_used_blocks=s.cache.num_cached,
                          kv_total_blocks=s.config.num_blocks)

    def _result(self, wall_s: float) -> ReplayResult:
        t = self._totals
        counts = [w.num_requests for w in self.workers.values()]
        first_ms = self.requests[0].arrival_ms / self.config.speedup if self.requests else 0.0
        span_s = max(t.last_finish_ms - first_ms, 1e-9) / 1e3
        return ReplayResult(
            policy=self.config.policy, num_requests=len(t.latency_ms),
            hit_rate=t.cached_tokens / max(t.prompt_tokens, 1), router_hit_rate=self.router.hit_rate,
            ttft_p50_ms=_percentile(t.ttft_ms, 50), ttft_p99_ms=_percentile(t.ttft_ms, 99),
            wait_p50_ms=_percentile(t.wait_ms, 50),
            step_p50_ms=_percentile([ttft - wait for ttft, wait in zip(t.ttft_ms, t.wait_ms)], 50),
            latency_p50_ms=_percentile(t.latency_ms, 50), latency_p99_ms=_percentile(t.latency_ms, 99),
            throughput_rps=len(t.latency_ms) / span_s, output_tokens_per_s=t.output_tokens / span_s,
            imbalance=max(counts) / (sum(counts) / len(counts)) if sum(counts) else 0.0, requests_per_worker=counts,
            simulated_s=span_s, wall_s=wall_s, num_steps=sum(w.scheduler.num_steps for w in self.workers.values()))


def _heartbeat(card: WorkerCard) -> Heartbeat:
    return Heartbeat(card=card, load=LoadReport(worker_id=card.worker_id), interval_s=math.inf)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def blocks_per_worker(requests: Sequence[TraceRequest], distinct_blocks: int, block_size: int,
                      cache_fraction: float) -> int:
    """Each simulated worker's KV capacity: a fraction of the trace's distinct blocks, but the longest prompt fits."""
    longest = max((-(-r.input_length // block_size) for r in requests), default=1)
    return max(int(distinct_blocks * cache_fraction), longest)


def trace_stats(requests: Iterable[TraceRequest], block_size: int, trace_block_tokens: int = 512) -> tuple[int, float]:
    """(distinct engine blocks, hit rate of one infinite cache that sees every request in arrival order)."""
    seen: set[int] = set()
    cached = total = 0
    for request in requests:
        chained = chain_hashes(local_block_hashes(trace_tokens(request, trace_block_tokens), block_size))
        hits = 0
        while hits < len(chained) and chained[hits] in seen:
            hits += 1
        cached += hits * block_size
        total += request.input_length
        seen.update(chained)
    return len(seen), cached / max(total, 1)
