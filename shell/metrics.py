"""Every Prometheus metric the mesh exports, defined once. Names follow Dynamo's so its dashboards carry over.

Hot-path updates are coalesced: a request adds to plain Python numbers (`Pending*`), and `flush()` moves them into
the prometheus_client objects (each update there takes a lock, and in multiprocess mode writes a file) once a
second and before every scrape. Router state is read at scrape time by a collector, not copied into gauges.
With several frontend processes on one port, prometheus_client's multiprocess mode sums them (`render`).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shell.config import METRICS_MULTIPROC_ENV

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ITL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
TOKEN_BUCKETS = (1, 16, 64, 256, 1024, 4096, 16384, 65536)
ROUTER_BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2)
FLUSH_INTERVAL_S = 1.0  # pending updates reach prometheus_client at least this often


class PendingCounter:
    """A counter child's increments, held until `flush`."""

    __slots__ = ("child", "amount")

    def __init__(self, child):
        self.child, self.amount = child, 0

    def inc(self, amount: float = 1) -> None:
        self.amount += amount

    def flush(self) -> None:
        if self.amount:
            amount, self.amount = self.amount, 0
            self.child.inc(amount)


class PendingGauge:
    """A gauge child kept as a plain number; `flush` sets it (multiprocess mode sums the live processes)."""

    __slots__ = ("child", "value", "_flushed")

    def __init__(self, child):
        self.child, self.value, self._flushed = child, 0, 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def flush(self) -> None:
        if self.value != self._flushed:
            self._flushed = self.value
            self.child.set(self.value)


class PendingHistogram:
    """A histogram child's observations as bucket counts and a sum, until `flush` adds them in one go."""

    __slots__ = ("child", "bounds", "counts", "total")

    def __init__(self, child, buckets: tuple[float, ...]):
        self.child, self.bounds = child, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # `le` buckets: the first bound >= amount
        self.total += amount

    def flush(self) -> None:
        if any(self.counts):
            counts, self.counts, total, self.total = self.counts, [0] * len(self.counts), self.total, 0.0
            add_observations(self.child, counts, total)


def add_observations(child, counts: list[int], total: float) -> None:
    """Add per-bucket observation counts to a prometheus_client Histogram child, as if observed one by one.

    prometheus_client has no public call for this; it keeps one value per bucket (`_buckets`) and the sum (`_sum`).
    tests/shell/test_metrics.py checks the result against observe() on every upgrade.
    """
    for bucket, count in zip(child._buckets, counts):
        if count:
            bucket.inc(count)
    child._sum.inc(total)


class FrontendMetrics:
    """Per-app registry (no module globals); `/metrics` renders it (`render`)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        p = "dynamo_frontend"
        self.requests = Counter(f"{p}_requests", "HTTP requests by model, endpoint, streaming and status",
                                ["model", "endpoint", "request_type", "status"], registry=r)
        self.inflight = Gauge(f"{p}_inflight_requests", "Requests being served", ["model"], registry=r,
                              multiprocess_mode="livesum")
        self.queued = Gauge(f"{p}_queued_requests", "Requests waiting for their first reply", ["model"], registry=r,
                            multiprocess_mode="livesum")
        self.disconnected = Counter(f"{p}_disconnected_clients", "Clients that went away mid-request", ["model"], registry=r)
        self.ttft = Histogram(f"{p}_time_to_first_token_seconds", "Time to first token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(f"{p}_inter_token_latency_seconds", "Time between output tokens", ["model"],
                             buckets=ITL_BUCKETS, registry=r)
        self.duration = Histogram(f"{p}_request_duration_seconds", "Whole request duration", ["model"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.input_tokens = Histogram(f"{p}_input_sequence_tokens", "Prompt tokens per request", ["model"],
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.output_tokens = Histogram(f"{p}_output_sequence_tokens", "Completion tokens per request", ["model"],
                                       buckets=TOKEN_BUCKETS, registry=r)
        self.output_tokens_total = Counter(f"{p}_output_tokens", "Completion tokens", ["model"], registry=r)
        self.cached_tokens = Counter(f"{p}_cached_tokens", "Prompt tokens served from a worker's prefix cache",
                                     ["model"], registry=r)
        self.images = Counter(f"{p}_images_generated", "Images returned", ["model"], registry=r)
        self.migrations = Counter(f"{p}_model_migration", "Requests re-sent to another worker", ["model", "migration_type"],
                                  registry=r)
        self.embeddings = Counter(f"{p}_image_embeddings", "Chat image embeddings by encoder model and cache result",
                                  ["model", "cache"], registry=r)
        self.image_loads = Counter(f"{p}_image_loads", "Chat images loaded, by source (data, http) and whether decoded "
                                   "or taken from the decoded-image cache", ["source", "result"], registry=r)
        self.router = RouterMetrics(r)
        self._per_model: dict[str, ModelMetrics] = {}
        self._pending: list = self.router.pending

    def model(self, name: str) -> ModelMetrics:
        """Label children bound once per model (labels() lookups cost microseconds on the hot path)."""
        bound = self._per_model.get(name)
        if bound is None:
            bound = self._per_model[name] = ModelMetrics(self, name, self._pending)
        return bound

    def flush(self) -> None:
        """Move every pending update into prometheus_client (before a scrape, and on a timer)."""
        for pending in self._pending:
            pending.flush()

    def render(self) -> bytes:
        """The exposition text: this process's registry, or every frontend process's in multiprocess mode."""
        self.flush()
        return generate_latest(self.registry if not is_multiprocess() else self._multiprocess_registry())

    def _multiprocess_registry(self) -> CollectorRegistry:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        for collector in self.router.collectors:  # router state: this process's view (every router sees every worker)
            registry.register(collector)
        return registry


def is_multiprocess() -> bool:
    return bool(os.environ.get(METRICS_MULTIPROC_ENV))


def enable_multiprocess(directory: str) -> None:
    """Keep this process's metrics in files under `directory`, summed with every other process's that uses it
    (prometheus_client's multiprocess mode); children inherit it through the environment. Call before any metric
    is made: prometheus_client picks its value class when imported, so it is picked again here."""
    os.environ[METRICS_MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()


def disable_multiprocess() -> None:
    """Back to metrics in this process's memory (the directory is gone)."""
    os.environ.pop(METRICS_MULTIPROC_ENV, None)
    values.ValueClass = values.get_value_class()


def forget_process(pid: int) -> None:
    """An exited process's live gauges (in-flight, queued) no longer count; its counters still do."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class ModelMetrics:
    def __init__(self, m: FrontendMetrics, model: str, pending: list):
        def bound(kind, metric, *args):
            wrapper = kind(metric.labels(model), *args)
            pending.append(wrapper)
            return wrapper

        self.inflight = bound(PendingGauge, m.inflight)
        self.queued = bound(PendingGauge, m.queued)
        self.disconnected = bound(PendingCounter, m.disconnected)
        self.ttft = bound(PendingHistogram, m.ttft, LATENCY_BUCKETS)
        self.itl = bound(PendingHistogram, m.itl, ITL_BUCKETS)
        self.duration = bound(PendingHistogram, m.duration, LATENCY_BUCKETS)
        self.input_tokens = bound(PendingHistogram, m.input_tokens, TOKEN_BUCKETS)
        self.output_tokens = bound(PendingHistogram, m.output_tokens, TOKEN_BUCKETS)
        self.output_tokens_total = bound(PendingCounter, m.output_tokens_total)
        self.cached_tokens = bound(PendingCounter, m.cached_tokens)
        self.images = bound(PendingCounter, m.images)
        m.migrations.labels(model, "new_request")  # a zero series from the start (multiprocess mode shows no others)
        self._requests = m.requests
        self._model = model
        self._pending = pending
        self._by_status: dict[tuple[str, str, str], PendingCounter] = {}

    def request_done(self, endpoint: str, request_type: str, status: str) -> None:
        key = (endpoint, request_type, status)
        counter = self._by_status.get(key)
        if counter is None:
            counter = self._by_status[key] = PendingCounter(self._requests.labels(self._model, endpoint, request_type,
                                                                                  status))
            self._pending.append(counter)
        counter.inc()


class RouterMetrics:
    """Router metrics: decisions and their latency (coalesced), and the router's state read at scrape time."""

    def __init__(self, registry: CollectorRegistry, router: Callable[[], object] | None = None):
        r, p = registry, "dynamo_router"
        self.decisions = Counter(f"{p}_requests", "Routing decisions by mode", ["mode"], registry=r)
        overhead = Histogram(f"{p}_overhead_seconds", "Decision latency by phase (hashing, matching, scoring)",
                             ["phase"], buckets=ROUTER_BUCKETS, registry=r)
        self.pending: list = []
        self._phases = [self._bind(PendingHistogram(overhead.labels(phase), ROUTER_BUCKETS))
                        for phase in ("hashing", "matching", "scoring")]
        self._by_mode: dict[str, PendingCounter] = {}
        self.collectors = [RouterCollector()]
        for collector in self.collectors:
            registry.register(collector)

    def _bind(self, pending):
        self.pending.append(pending)
        return pending

    def attach(self, router) -> None:
        """Read gauges from this router.core.Router at each scrape."""
        for collector in self.collectors:
            collector.router = router

    def observe(self, decision) -> None:
        """One routing decision (protocol.routing.RouteDecision): its mode and latency by phase."""
        counter = self._by_mode.get(decision.mode)
        if counter is None:
            counter = self._by_mode[decision.mode] = self._bind(PendingCounter(self.decisions.labels(decision.mode)))
        counter.inc()
        hashing, matching, scoring = self._phases
        hashing.observe(decision.hash_s)
        matching.observe(decision.match_s)
        scoring.observe(decision.score_s)

    def flush(self) -> None:
        for pending in self.pending:
            pending.flush()


class RouterCollector(Collector):
    """Gauges of a router.core.Router's counters and per-worker state, computed when scraped (nothing to refresh)."""

    def __init__(self, router=None):
        self.router = router

    def collect(self) -> Iterator[GaugeMetricFamily]:
        router = self.router
        if router is None:
            return
        yield _gauge("dynamo_router_kv_hit_rate", "Matched prefix blocks / request blocks, since start", router.hit_rate)
        events = GaugeMetricFamily("dynamo_component_kv_cache_events_applied", "KV events applied by type and status",
                                   labels=["event_type", "status"])
        for (kind, status), count in router.stats.applied.items():
            events.add_metric([kind, status], count)
        yield events
        yield _gauge("dynamo_router_kv_dumps", "Full KV dumps applied (first sight, event-id gaps)", router.stats.num_dumps)
        yield _gauge("dynamo_router_kv_event_gaps", "Event-id gaps detected", router.stats.num_gaps)
        yield from _worker_gauges(router)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _worker_gauges(router) -> Iterator[GaugeMetricFamily]:
    families = {
        "load": GaugeMetricFamily("dynamo_frontend_worker_active_prefill_tokens", "Predicted prefill tokens per worker",
                                  labels=["worker_id"]),
        "blocks": GaugeMetricFamily("dynamo_frontend_worker_active_decode_blocks",
                                    "Predicted active KV blocks per worker", labels=["worker_id"]),
        "requests": GaugeMetricFamily("dynamo_router_worker_active_requests", "Predicted requests in flight per worker",
                                      labels=["worker_id"]),
        "rate": GaugeMetricFamily("dynamo_router_worker_prefill_tokens_per_second",
                                  "Prefill rate the router learned from first-token times per worker (0 = not yet)",
                                  labels=["worker_id"]),
        "indexed": GaugeMetricFamily("dynamo_router_indexed_blocks", "Cached blocks the router's index holds per worker",
                                     labels=["worker_id"]),
    }
    live = GaugeMetricFamily("dynamo_router_live_workers", "Workers with a fresh heartbeat", labels=["model"])
    per_model: dict[str, int] = {}
    for s in router.tracker.workers.values():
        worker = [s.worker_id]
        families["load"].add_metric(worker, s.predicted_prefill_tokens)
        families["blocks"].add_metric(worker, s.num_active_blocks)
        families["requests"].add_metric(worker, s.num_active)
        families["rate"].add_metric(worker, s.prefill.tokens_per_s)
        families["indexed"].add_metric(worker, router.index.num_blocks(s.worker_id) + router.approx.num_blocks(s.worker_id))
        per_model[s.card.model] = per_model.get(s.card.model, 0) + 1
    for model, count in sorted(per_model.items()):
        live.add_metric([model], count)
    yield from families.values()
    yield live


class SupervisorMetrics:
    """Restarts of the child processes a supervisor keeps running (`diffmesh up` puts these on the frontend's /metrics)."""

    def __init__(self, registry: CollectorRegistry):
        self.restarts = Counter("diffmesh_process_restarts", "Child processes restarted after exiting on their own, "
                                "by child (e.g. mocker-0) and exit reason (e.g. 'killed by SIGKILL', 'exit 1')",
                                ["process", "reason"], registry=registry)


ENCODE_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class EncoderMetrics:
    """An encode worker's own registry, served by `diffmesh worker encode --metrics-port`."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        p = "dynamo_encoder"
        self.cache_lookups = Counter(f"{p}_embedding_cache_lookups", "Embedding cache lookups by result (hit, miss)",
                                     ["result"], registry=r)
        self.cache_evictions = Counter(f"{p}_embedding_cache_evictions", "Embeddings evicted for room", registry=r)
        self.cache_bytes = Gauge(f"{p}_embedding_cache_bytes", "Bytes held by the embedding cache", registry=r)
        self.cache_entries = Gauge(f"{p}_embedding_cache_entries", "Embeddings held by the embedding cache", registry=r)
        self.images = Counter(f"{p}_images_encoded", "Images run through the vision tower", registry=r)
        self.batch_size = Histogram(f"{p}_batch_size", "Images per vision forward", buckets=ENCODE_BATCH_BUCKETS,
                                    registry=r)
        self.forward = Histogram(f"{p}_forward_seconds", "Vision tower + projector time per batch",
                                 buckets=LATENCY_BUCKETS, registry=r)
