"""Replica sync in the pure core: routers share predicted load so they do not all pick the same best worker."""

from __future__ import annotations

import random

from router.core import Router, RouterConfig
from router.policy import PolicyConfig
from tests.router.sim import Clock, SimWorker, card, heartbeat, route_request, stored_chain


def replicas(num: int, clock: Clock, router_ids=None) -> list[Router]:
    routers = []
    for i in range(num):
        router_id = f"r{i}" if router_ids is None else router_ids[i]
        router = Router(RouterConfig(policy=PolicyConfig(overlap_weight=1.0, miss_penalty=0.0), sync_max_age_s=60.0), rng=random.Random(i), clock=clock, router_id=router_id)
        for worker_id in ("w0", "w1"):
            router.on_heartbeat(heartbeat(card(worker_id, block_size=4, capacity=64, max_queue=64)))
        routers.append(router)
    return routers


def cache_everywhere(routers: list[Router], tokens) -> None:
    worker = SimWorker("w0")
    batch = stored_chain(worker, tokens, 4)
    for router in routers:
        router.on_kv_events(batch)


def exchange(routers: list[Router]) -> None:
    """What the sync subject does: every replica sees every event, its own included."""
    events = [e for r in routers for e in r.take_outbox()]
    for router in routers:
        for event in events:
            router.apply_sync(event)


def test_synced_replicas_spread_a_burst_that_unsynced_ones_pile_onto_one_worker():
    prefix = list(range(32))
    for synced in (True, False):
        clock = Clock()
        routers = replicas(3, clock, None if synced else [None, None, None])
        cache_everywhere(routers, prefix)
        chosen = []
        for i in range(6):  # frontends take turns, one request each, a sync round between requests
            chosen.append(routers[i % 3].route(route_request(f"q{i}", prefix + [1000 + i] * 12)).worker_id)
            exchange(routers)
        if synced:
            assert chosen.count("w1") >= 2  # the others saw w0's in-flight load
        else:
            assert chosen.count("w0") == 6  # each replica only knows its own two requests


def test_sync_events_track_add_prefill_done_and_free_on_other_replicas():
    clock = Clock()
    first, second = replicas(2, clock)
    decision = first.route(route_request("q1", range(20)))
    exchange([first, second])
    remote = second.tracker.workers[decision.worker_id]
    assert remote.predicted_prefill_tokens == 20 and remote.num_active_blocks == 5 and remote.num_active == 1
    first.on_first_token("q1")
    exchange([first, second])
    assert remote.predicted_prefill_tokens == 0 and remote.num_active == 1
    first.on_finish("q1")
    exchange([first, second])
    assert remote.num_active == 0 and remote.num_active_blocks == 0
    assert first.tracker.workers[decision.worker_id].num_active == 0  # its own echo changed nothing


def test_requests_of_a_dead_replica_are_dropped_after_the_max_age():
    clock = Clock()
    first, second = replicas(2, clock)
    decision = second.route(route_request("q1", range(20)))
    exchange([first, second])  # second dies before it ever frees q1
    clock.now = 59.0
    for worker_id in ("w0", "w1"):
        first.on_heartbeat(heartbeat(card(worker_id, block_size=4, capacity=64, max_queue=64)))
    first.expire()
    assert first.tracker.workers[decision.worker_id].num_active == 1
    clock.now = 61.0
    for worker_id in ("w0", "w1"):
        first.on_heartbeat(heartbeat(card(worker_id, block_size=4, capacity=64, max_queue=64)))
    first.expire()
    assert first.tracker.workers[decision.worker_id].num_active == 0
