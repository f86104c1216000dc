"""Predicted load: routed prefill drains at a rate learned from first-token times (router.tracker.PrefillQueue)."""

from __future__ import annotations

import random

import pytest

from router.core import Router, RouterConfig
from router.policy import PolicyConfig
from router.tracker import PrefillQueue
from tests.router.sim import SimWorker, card, heartbeat, route_request, stored_chain


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_learned_rate_follows_a_first_come_first_served_worker():
    queue = PrefillQueue()
    assert queue.rate == 0 and queue.remaining(500, now=9.0) == 500  # nothing learned: no drain
    queue.add(1000, pending_before=0, now=0.0)
    queue.add(1000, pending_before=1000, now=0.0)  # queued behind the first
    queue.done(1000, routed_at=0.0, pending_after=1000, now=0.5)  # 1000 tokens in 0.5 s
    assert queue.rate == pytest.approx(2000)
    queue.done(1000, routed_at=0.0, pending_after=0, now=1.0)  # its prefill began when the first one's ended
    assert queue.rate == pytest.approx(2000)
    queue.add(600, pending_before=0, now=5.0)  # idle worker: its prefill begins at routing
    queue.done(600, routed_at=5.0, pending_after=0, now=5.2)
    assert 2000 < queue.rate < 3000  # a weighted mean that leans to the latest samples


def test_queued_tokens_drain_with_time_but_never_exceed_the_pending_ones():
    queue = PrefillQueue(fixed_rate=1000.0)
    queue.add(4000, pending_before=0, now=0.0)
    assert queue.remaining(4000, now=0.0) == 4000
    assert queue.remaining(4000, now=1.5) == pytest.approx(2500)
    assert queue.remaining(4000, now=10.0) == 0  # estimate says done, the first token will say so too
    assert queue.remaining(300, now=0.5) == 300  # another request's first token already took tokens off
    queue.add(1000, pending_before=4000, now=2.0)  # 2000 left + 1000 new
    assert queue.remaining(5000, now=2.0) == pytest.approx(3000)


def test_rate_zero_keeps_dynamo_bookkeeping():
    queue = PrefillQueue(fixed_rate=0.0)
    queue.add(4000, pending_before=0, now=0.0)
    queue.done(10, routed_at=0.0, pending_after=4000, now=1.0)
    assert queue.rate == 0 and queue.remaining(4000, now=100.0) == 4000


def test_worker_halfway_through_a_long_prefill_keeps_the_request_that_shares_its_prefix():
    """w0 holds the prefix and is mid-way through a long prompt. Counting that prompt in full until its first token
    sends the follow-up to the idle w1; draining it at the learned rate keeps the follow-up with its cache."""
    chosen = {}
    for rate in (0.0, None):
        clock = Clock()
        router = Router(RouterConfig(policy=PolicyConfig(overlap_weight=16.0, miss_penalty=0.0, prefill_rate=rate)),
                        rng=random.Random(0), clock=clock)
        for worker_id in ("w0", "w1"):
            router.on_heartbeat(heartbeat(card(worker_id, block_size=4, capacity=64, max_queue=64)))
        assert not router.on_kv_events(stored_chain(SimWorker("w0"), range(400), 4))  # 100 blocks of prefix
        # teach w0's rate: 400 tokens prefilled in 1 s
        router.route(route_request("warm", [9000] * 400, worker_id="w0"))
        clock.now = 1.0
        router.on_first_token("warm")
        router.on_finish("warm")
        router.route(route_request("long", [7000] * 800, worker_id="w0"))  # 2 s of prefill at that rate
        clock.now = 2.9  # 40 tokens to go
        # prefill tokens: w1 408; w0 800 + 8 counted in full, 40 + 8 drained
        chosen[rate] = router.route(route_request("follow-up", list(range(400)) + [5] * 8)).worker_id
    assert chosen == {0.0: "w1", None: "w0"}
    assert router.tracker.workers["w0"].prefill.rate == pytest.approx(400)


def test_blocks_a_full_cache_must_evict_count_against_that_worker():
    router = Router(RouterConfig(policy=PolicyConfig(overlap_weight=1.0)), rng=random.Random(0), clock=lambda: 0.0)
    for worker_id, total in (("w0", 12), ("w1", 1000)):
        router.on_heartbeat(heartbeat(card(worker_id, block_size=4, capacity=64, max_queue=64, kv_total_blocks=total)))
    assert not router.on_kv_events(stored_chain(SimWorker("w0"), range(40), 4))  # w0: 10 of its 12 blocks hold a prefix
    assert not router.on_kv_events(stored_chain(SimWorker("w1"), range(1000, 1040), 4))
    # same prefill and decode cost on both (no overlap), but 6 new blocks on w0 push 4 cached ones out
    decision = router.route(route_request("r", range(5000, 5024)))
    assert decision.worker_id == "w1"
    assert decision.cost < router.route(route_request("r2", range(6000, 6024), worker_id="w0")).cost
