"""Every Prometheus metric the mesh exports, defined once. Names follow Dynamo's so its dashboards carry over."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ITL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
TOKEN_BUCKETS = (1, 16, 64, 256, 1024, 4096, 16384, 65536)
ROUTER_BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2)


class FrontendMetrics:
    """Per-app registry (no module globals); `/metrics` renders `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        p = "dynamo_frontend"
        self.requests = Counter(f"{p}_requests", "HTTP requests by model, endpoint, streaming and status",
                                ["model", "endpoint", "request_type", "status"], registry=r)
        self.inflight = Gauge(f"{p}_inflight_requests", "Requests being served", ["model"], registry=r)
        self.queued = Gauge(f"{p}_queued_requests", "Requests waiting for their first reply", ["model"], registry=r)
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

    def model(self, name: str) -> ModelMetrics:
        """Label children bound once per model (labels() lookups cost microseconds on the hot path)."""
        bound = self._per_model.get(name)
        if bound is None:
            bound = self._per_model[name] = ModelMetrics(self, name)
        return bound


class ModelMetrics:
    def __init__(self, m: FrontendMetrics, model: str):
        self.inflight = m.inflight.labels(model)
        self.queued = m.queued.labels(model)
        self.disconnected = m.disconnected.labels(model)
        self.ttft = m.ttft.labels(model)
        self.itl = m.itl.labels(model)
        self.duration = m.duration.labels(model)
        self.input_tokens = m.input_tokens.labels(model)
        self.output_tokens = m.output_tokens.labels(model)
        self.output_tokens_total = m.output_tokens_total.labels(model)
        self.cached_tokens = m.cached_tokens.labels(model)
        self.images = m.images.labels(model)
        self._requests = m.requests
        self._model = model
        self._by_status: dict[tuple[str, str, str], object] = {}

    def request_done(self, endpoint: str, request_type: str, status: str) -> None:
        key = (endpoint, request_type, status)
        counter = self._by_status.get(key)
        if counter is None:
            counter = self._by_status[key] = self._requests.labels(self._model, endpoint, request_type, status)
        counter.inc()


class RouterMetrics:
    """Router metrics; gauges are refreshed from the Router's own counters when /metrics is scraped."""

    def __init__(self, registry: CollectorRegistry):
        r, p = registry, "dynamo_router"
        self.decisions = Counter(f"{p}_requests", "Routing decisions by mode", ["mode"], registry=r)
        self.kv_hit_rate = Gauge(f"{p}_kv_hit_rate", "Matched prefix blocks / request blocks, since start", registry=r)
        self.overhead = Histogram(f"{p}_overhead_seconds", "Decision latency by phase (hashing, matching, scoring)",
                                  ["phase"], buckets=ROUTER_BUCKETS, registry=r)
        self.events = Gauge("dynamo_component_kv_cache_events_applied", "KV events applied by type and status",
                            ["event_type", "status"], registry=r)
        self.worker_load = Gauge("dynamo_frontend_worker_active_prefill_tokens", "Predicted prefill tokens per worker",
                                 ["worker_id"], registry=r)
        self.worker_blocks = Gauge("dynamo_frontend_worker_active_decode_blocks", "Predicted active KV blocks per worker",
                                   ["worker_id"], registry=r)
        self.worker_requests = Gauge(f"{p}_worker_active_requests", "Predicted requests in flight per worker",
                                     ["worker_id"], registry=r)
        self.prefill_rate = Gauge(f"{p}_worker_prefill_tokens_per_second",
                                  "Prefill rate the router learned from first-token times per worker (0 = not yet)",
                                  ["worker_id"], registry=r)
        self.indexed_blocks = Gauge(f"{p}_indexed_blocks", "Cached blocks the router's index holds per worker",
                                    ["worker_id"], registry=r)
        self.kv_dumps = Gauge(f"{p}_kv_dumps", "Full KV dumps applied (first sight, event-id gaps)", registry=r)
        self.kv_gaps = Gauge(f"{p}_kv_event_gaps", "Event-id gaps detected", registry=r)
        self.workers = Gauge(f"{p}_live_workers", "Workers with a fresh heartbeat", ["model"], registry=r)

    def observe(self, decision) -> None:
        """One routing decision (protocol.routing.RouteDecision): its mode and latency by phase."""
        self.decisions.labels(decision.mode).inc()
        self.overhead.labels("hashing").observe(decision.hash_s)
        self.overhead.labels("matching").observe(decision.match_s)
        self.overhead.labels("scoring").observe(decision.score_s)

    def refresh(self, router) -> None:
        """Copy a router.core.Router's counters and per-worker state into the gauges (call before a scrape)."""
        self.kv_hit_rate.set(router.hit_rate)
        for (kind, status), count in router.stats.applied.items():
            self.events.labels(kind, status).set(count)
        self.kv_dumps.set(router.stats.num_dumps)
        self.kv_gaps.set(router.stats.num_gaps)
        for gauge in (self.worker_load, self.worker_blocks, self.worker_requests, self.prefill_rate, self.indexed_blocks):
            gauge.clear()
        for s in router.tracker.workers.values():
            self.worker_load.labels(s.worker_id).set(s.predicted_prefill_tokens)
            self.worker_blocks.labels(s.worker_id).set(s.num_active_blocks)
            self.worker_requests.labels(s.worker_id).set(s.num_active)
            self.prefill_rate.labels(s.worker_id).set(s.prefill.tokens_per_s)
            self.indexed_blocks.labels(s.worker_id).set(router.index.num_blocks(s.worker_id)
                                                        + router.approx.num_blocks(s.worker_id))


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
