"""Worker choice: Dynamo's cost with predicted load, tie-breaks, temperature, busy thresholds and the other modes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from protocol.errors import InvalidRequest, Overloaded, WorkerUnavailable
from protocol.routing import RouteRequest
from router.core import Router, RouterConfig
from router.policy import PolicyConfig, kv_costs, pick, softmax_sample
from router.tracker import WorkerState
from tests.router.sim import Clock, SimWorker, card, heartbeat, route_request, stored_chain

BS = 4  # block size of the simulated workers


def make_router(num_workers: int = 2, seed: int = 0, **policy) -> tuple[Router, dict[str, SimWorker]]:
    router = Router(RouterConfig(policy=PolicyConfig(**policy)), rng=random.Random(seed), clock=lambda: 0.0)
    workers = {f"w{i}": SimWorker(f"w{i}") for i in range(num_workers)}
    for worker_id in workers:
        router.on_heartbeat(heartbeat(card(worker_id, block_size=BS, capacity=64, max_queue=64)))
    return router, workers


def cache(router: Router, worker: SimWorker, tokens) -> None:
    assert router.on_kv_events(stored_chain(worker, tokens, BS)) is False


def state(worker_id: str, prefill_tokens: int = 0, active: dict | None = None) -> WorkerState:
    s = WorkerState(card(worker_id), 0.0, 1.0, heartbeat(card(worker_id)).load)
    s.predicted_prefill_tokens, s.active_blocks = prefill_tokens, dict(active or {})
    return s


def test_cost_is_weighted_prefill_blocks_plus_decode_blocks():
    keys = [101, 102, 103, 104]  # the request's 4 blocks of 4 tokens (16 tokens)
    states = [state("a", prefill_tokens=8, active={1: 1, 2: 1}),  # 2 blocks of queued prefill, 2 active blocks
              state("b", active={101: 1, 102: 1, 7: 1}),  # two of the request's blocks already active here
              state("c")]
    costs = kv_costs(states, {"a": 3, "c": 1}, 16, BS, keys, overlap_weight=1.0)
    # a: (8 + 16 - 12) / 4 = 3 prefill + 2 active + 4 new = 9;  b: 16 / 4 = 4 + 3 + 2 = 9;  c: 12 / 4 = 3 + 0 + 4 = 7
    assert costs == [9.0, 9.0, 7.0]
    assert kv_costs(states, {"a": 3, "c": 1}, 16, BS, keys, overlap_weight=2.0) == [12.0, 13.0, 10.0]
    # miss_penalty 1 counts the uncached tokens twice: a (8 + 2·4) / 4 = 4 + 6, b 32 / 4 = 8 + 5, c 24 / 4 = 6 + 4
    assert kv_costs(states, {"a": 3, "c": 1}, 16, BS, keys, overlap_weight=1.0, miss_penalty=1.0) == [10.0, 13.0, 10.0]


def test_miss_penalty_keeps_a_request_with_its_prefix_when_the_owner_is_moderately_loaded():
    chosen = {}
    for penalty in (0.0, 1.0):
        router, workers = make_router(2, overlap_weight=16.0, miss_penalty=penalty)
        cache(router, workers["w0"], range(32))  # w0 holds the 8-block prefix
        router.route(route_request("busy", [5000] * 40, worker_id="w0"))  # 40 tokens of other prefill queued on w0
        # prefill tokens: w0 40 queued + 4 new, w1 36 new. Counted once, w1 is cheaper (44 > 36); counted twice the
        # miss makes w1 the dearer (40 + 8 < 72)
        chosen[penalty] = router.route(route_request("r", list(range(32)) + [7] * 4)).worker_id
    assert chosen == {0.0: "w1", 1.0: "w0"}


def test_higher_overlap_weight_holds_on_to_the_cache_longer():
    chosen = {}
    for weight in (1.0, 16.0):
        router, workers = make_router(2, overlap_weight=weight)
        cache(router, workers["w0"], range(32))
        chosen[weight] = [router.route(route_request(f"r{i}", list(range(32)) + [1000 + i] * 12)).worker_id
                          for i in range(6)]
    assert chosen[1.0].count("w0") < chosen[16.0].count("w0")


def test_router_prefers_worker_with_longest_cached_prefix():
    router, workers = make_router(3)
    prompt = list(range(40))
    cache(router, workers["w1"], prompt[:32])
    cache(router, workers["w2"], prompt[:12])
    decision = router.route(route_request("r1", prompt))
    assert decision.worker_id == "w1" and decision.overlap_blocks == 8 and decision.num_blocks == 10
    assert router.hit_rate == pytest.approx(0.8)


def test_predicted_load_added_on_route_prefill_removed_at_first_token_freed_at_end():
    router, workers = make_router(2)
    cache(router, workers["w0"], range(8))
    decision = router.route(route_request("r1", range(20)))
    w0 = router.tracker.workers[decision.worker_id]
    assert decision.worker_id == "w0"
    assert w0.predicted_prefill_tokens == 12 and w0.num_active_blocks == 5 and w0.num_active == 1
    router.on_first_token("r1")
    assert w0.predicted_prefill_tokens == 0 and w0.num_active_blocks == 5
    router.on_finish("r1")
    assert w0.num_active_blocks == 0 and w0.num_active == 0
    router.on_finish("r1")  # idempotent
    assert w0.num_active == 0


def test_burst_of_identical_prefixes_spreads_through_the_load_term():
    router, workers = make_router(2, overlap_weight=1.0, miss_penalty=0.0)  # Dynamo's cost
    prefix = list(range(32))  # 8 cached blocks on w0; every request adds 3 blocks of its own
    cache(router, workers["w0"], prefix)
    chosen = [router.route(route_request(f"r{i}", prefix + [1000 + i] * 12)).worker_id for i in range(6)]
    # w0 costs 14 + 6k with k of them in flight there; w1 costs 22, then 36 once it holds one (11 prefill + 22 - 8
    # shared + 3 new): the load term sends the 3rd and 6th elsewhere although w0 has the prefix
    assert chosen == ["w0", "w0", "w1", "w0", "w0", "w1"]
    for i in range(6):
        router.on_finish(f"r{i}")
    assert router.route(route_request("after", prefix + [7] * 12)).worker_id == "w0"  # load gone: the cache wins


def test_ties_go_to_fewer_cached_blocks_then_random():
    router, workers = make_router(3)
    cache(router, workers["w0"], range(100, 140))  # unrelated blocks: same cost, bigger tree
    picks = Counter()
    for i in range(40):
        picks[router.route(route_request(f"r{i}", range(i * 8, i * 8 + 8))).worker_id] += 1
        router.on_finish(f"r{i}")
    assert picks["w0"] == 0 and picks["w1"] > 5 and picks["w2"] > 5


def test_pick_prefers_smaller_tree_among_equal_costs():
    sizes = [10, 2, 0]
    assert pick([3.0, 3.0, 4.0], lambda tied: [sizes[i] for i in tied], 0.0, random.Random(0)) == 1


def test_temperature_samples_from_softmax_over_normalised_costs():
    rng = random.Random(1)
    draws = Counter(softmax_sample([0.0, 10.0], 1.0, rng) for _ in range(4000))
    assert 0.70 < draws[0] / 4000 < 0.76  # p = 1 / (1 + e^-1) = 0.731
    assert Counter(softmax_sample([5.0, 5.0], 1.0, rng) for _ in range(1000))[1] > 400  # equal costs: uniform
    assert {pick([0.0, 10.0], lambda tied: [0] * len(tied), 0.0, rng) for _ in range(50)} == {0}  # temperature 0: argmin only


def test_busy_workers_are_excluded_and_all_busy_is_overloaded():
    router, _ = make_router(2)
    router.on_heartbeat(heartbeat(card("w0", block_size=BS), active_decode_blocks=990, kv_total_blocks=1000))
    assert {router.route(route_request(f"r{i}", range(8))).worker_id for i in range(5)} == {"w1"}
    router.on_heartbeat(heartbeat(card("w1", block_size=BS, capacity=2, max_queue=1), active_requests=2,
                                  waiting_requests=1))
    with pytest.raises(Overloaded) as info:
        router.route(route_request("x", range(8)))
    assert info.value.retry_after == RouterConfig().retry_after_s


def test_a_worker_whose_routed_requests_fill_its_slots_and_queue_gets_no_more_before_its_load_report():
    router = Router(RouterConfig(), rng=random.Random(0), clock=lambda: 0.0)
    for worker_id in ("w0", "w1"):
        router.on_heartbeat(heartbeat(card(worker_id, block_size=BS, capacity=2, max_queue=1)))
    chosen = [router.route(route_request(f"r{i}", range(8))).worker_id for i in range(6)]
    assert Counter(chosen) == {"w0": 3, "w1": 3}  # 2 slots + 1 queued each, with no load report in between
    with pytest.raises(Overloaded):
        router.route(route_request("r6", range(8)))
    router.on_finish("r0")  # one ends: its worker takes one more
    assert router.route(route_request("r7", range(8))).worker_id == chosen[0]


def test_busy_waiting_threshold_and_draining_workers_are_excluded():
    router, _ = make_router(3, busy_waiting=2)
    router.on_load(heartbeat(card("w0"), waiting_requests=2).load)
    router.on_heartbeat(heartbeat(card("w1", block_size=BS), draining=True))
    assert {router.route(route_request(f"r{i}", range(8))).worker_id for i in range(5)} == {"w2"}


def test_no_live_worker_is_unavailable_and_excluded_workers_are_skipped():
    router, _ = make_router(2)
    with pytest.raises(WorkerUnavailable):
        router.route(route_request("x", range(8), model="other"))
    assert router.route(route_request("y", range(8), exclude=["w0"])).worker_id == "w1"
    with pytest.raises(WorkerUnavailable):
        router.route(route_request("z", range(8), exclude=["w0", "w1"]))


def test_round_robin_random_and_least_loaded_modes():
    router, _ = make_router(3, mode="round_robin")
    assert [router.route(route_request(f"r{i}", range(8))).worker_id for i in range(6)] == ["w1", "w2", "w0"] * 2
    router, _ = make_router(3, mode="random")
    assert len({router.route(route_request(f"r{i}", range(8))).worker_id for i in range(30)}) == 3
    router, _ = make_router(3, mode="least_loaded")
    router.on_load(heartbeat(card("w0"), active_requests=5).load)
    chosen = [router.route(route_request(f"r{i}", range(8))).worker_id for i in range(4)]
    assert "w0" not in chosen and sorted(Counter(chosen).values()) == [2, 2]


def test_direct_mode_and_worker_hint():
    router, _ = make_router(2)
    decision = router.route(route_request("r1", range(8), worker_id="w1"))
    assert decision.worker_id == "w1" and decision.mode == "direct"
    with pytest.raises(InvalidRequest) as info:  # a hint naming no live worker is the client's to fix
        router.route(route_request("r2", range(8), worker_id="nope"))
    assert info.value.param == "$.nvext.worker_id" and "w0" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        router.route(route_request("r3", range(8), mode="direct"))
    assert info.value.param == "$.nvext.worker_id"
    with pytest.raises(InvalidRequest) as info:
        router.route(route_request("r4", range(8), mode="fastest"))
    assert info.value.param == "$.nvext.router_mode"


def test_token_bytes_that_are_not_int32_are_invalid():
    router, _ = make_router(1)
    with pytest.raises(InvalidRequest) as info:
        router.route(RouteRequest(request_id="r", model="m", token_ids=b"abc"))
    assert info.value.param == "$.token_ids"


def test_per_request_mode_override():
    router, workers = make_router(2)
    cache(router, workers["w1"], range(32))
    assert router.route(route_request("r1", range(32), mode="round_robin")).mode == "round_robin"
    assert router.route(route_request("r2", range(32))).mode == "kv"


def test_policy_config_rejects_bad_values():
    for bad in ({"mode": "nope"}, {"overlap_weight": -1}, {"temperature": -0.1}, {"busy_kv_fraction": 0}):
        with pytest.raises(ValueError):
            PolicyConfig(**bad)


def test_worker_halfway_through_a_long_prefill_keeps_the_request_that_shares_its_prefix():
    """w0 holds the prefix and is mid-way through a long prompt. Counting that prompt in full until its first token
    sends the follow-up to the idle w1; draining it at the worker's prefill rate keeps the follow-up with its cache."""
    chosen = {}
    for rate in (0.0, 400.0):  # tokens/s; 0 = Dynamo's bookkeeping
        clock = Clock()
        router = Router(RouterConfig(policy=PolicyConfig(overlap_weight=16.0, miss_penalty=0.0, prefill_rate=rate)),
                        rng=random.Random(0), clock=clock)
        for worker_id in ("w0", "w1"):
            router.on_heartbeat(heartbeat(card(worker_id, block_size=4, capacity=64, max_queue=64)))
        assert not router.on_kv_events(stored_chain(SimWorker("w0"), range(400), 4))  # 100 blocks of prefix
        router.route(route_request("long", [7000] * 800, worker_id="w0"))  # 2 s of prefill at 400 tokens/s
        clock.now = 1.9  # 0.1 s to go
        # prefill tokens: w1 408; w0 800 + 8 counted in full, 40 + 8 drained
        chosen[rate] = router.route(route_request("follow-up", list(range(400)) + [5] * 8)).worker_id
    assert chosen == {0.0: "w1", 400.0: "w0"}


def test_router_learns_each_workers_prefill_curve_from_first_token_times():
    clock = Clock()
    router, _ = make_router(2)
    router.clock = clock
    for n, tokens in enumerate((400, 1200, 800, 2000, 1600)):  # w0 prefills 1,000 tokens/s, one request at a time
        router.route(route_request(f"r{n}", [9000 + n] * tokens, worker_id="w0"))
        clock.now += tokens / 1000
        router.on_first_token(f"r{n}")
        router.on_finish(f"r{n}")
    w0, w1 = router.tracker.workers["w0"].prefill, router.tracker.workers["w1"].prefill
    assert w0.is_known and w0.seconds(3000) == pytest.approx(3.0, rel=0.05) and not w1.is_known


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
