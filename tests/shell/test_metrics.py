"""Coalesced metric updates: plain numbers on the hot path, the same exposition as prometheus_client after a flush."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from protocol.routing import RouteDecision
from router.core import Router
from shell.metrics import LATENCY_BUCKETS, FrontendMetrics, PendingHistogram


def _samples(registry: CollectorRegistry, name: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples
            if s.name.startswith(name) and not s.name.endswith("_created")}


def test_flushed_histogram_equals_observing_one_by_one():
    values = [0.0004, 0.001, 0.0011, 0.3, 7.0, 500.0, 0.001]  # on a bound, between bounds, past the last bound
    direct, coalesced = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=direct)
    pending = PendingHistogram(Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=coalesced), LATENCY_BUCKETS)
    for value in values:
        reference.observe(value)
        pending.observe(value)
    assert _samples(coalesced, "h_count") == {("h_count", ()): 0.0}  # nothing reaches prometheus_client before flush
    pending.flush()
    pending.flush()  # idempotent
    assert _samples(coalesced, "h") == _samples(direct, "h")


def test_request_counts_reach_the_exposition_only_on_flush_and_render_flushes():
    metrics = FrontendMetrics()
    model = metrics.model("m")
    for status in ("200", "200", "400"):
        model.request_done("chat_completions", "unary", status)
    model.inflight.inc()
    model.output_tokens_total.inc(7)
    key = ("dynamo_frontend_requests_total", (("endpoint", "chat_completions"), ("model", "m"),
                                               ("request_type", "unary"), ("status", "200")))
    assert _samples(metrics.registry, "dynamo_frontend_requests_total")[key] == 0.0  # held until a flush
    text = metrics.render().decode()
    assert _samples(metrics.registry, "dynamo_frontend_requests_total")[key] == 2.0
    assert 'dynamo_frontend_inflight_requests{model="m"} 1.0' in text
    assert 'dynamo_frontend_output_tokens_total{model="m"} 7.0' in text
    assert 'dynamo_frontend_model_migration_total{migration_type="new_request",model="m"} 0.0' in text


def test_router_gauges_are_read_from_the_router_when_scraped():
    metrics = FrontendMetrics()
    router = Router()
    metrics.router.attach(router)
    router.stats.count("stored", "ok")
    metrics.router.observe(RouteDecision(worker_id="w", component="mocker", mode="kv", hash_s=2e-5))
    text = metrics.render().decode()
    assert 'dynamo_component_kv_cache_events_applied{event_type="stored",status="ok"} 1.0' in text
    assert 'dynamo_router_requests_total{mode="kv"} 1.0' in text
    assert 'dynamo_router_overhead_seconds_count{phase="hashing"} 1.0' in text
    router.stats.count("stored", "ok")
    assert 'status="ok"} 2.0' in generate_latest(metrics.registry).decode()  # no refresh step
