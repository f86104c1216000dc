"""Approximate mode: workers without KV events; the router's own decisions become cached blocks with a TTL."""

from __future__ import annotations

import random

from frontend.images import routing_tokens
from protocol.kv import MmObject
from protocol.routing import RouteRequest
from protocol.work import ImageRequest
from router.approx import ApproxIndex
from router.core import Router, RouterConfig
from tests.router.sim import card, heartbeat, route_request

WORKERS = ("i0", "i1", "i2", "i3")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def image_router(ttl_s: float = 120.0, max_blocks: int = 1 << 20) -> tuple[Router, Clock]:
    clock = Clock()
    router = Router(RouterConfig(approx_ttl_s=ttl_s, approx_max_blocks=max_blocks), rng=random.Random(3), clock=clock)
    for worker_id in WORKERS:
        router.on_heartbeat(heartbeat(card(worker_id, block_size=0, events=False)))
    return router, clock


def advance(router: Router, clock: Clock, now: float) -> None:
    """Time passes; the workers keep heartbeating, so only approximate entries can expire."""
    clock.now = now
    for worker_id in WORKERS:
        router.on_heartbeat(heartbeat(card(worker_id, block_size=0, events=False)))
    router.expire()


def image_route(request_id: str, prompt: str, **fields) -> RouteRequest:
    work = ImageRequest(request_id=request_id, model="m", prompt=prompt)
    return RouteRequest(request_id=request_id, model="m", token_ids=routing_tokens(work), **fields)


def test_repeated_image_prompts_land_on_the_same_worker():
    router, _ = image_router()
    prompts = [f"{i}: a watercolour painting of a lighthouse at dusk" for i in range(8)]
    first = {}
    for i, prompt in enumerate(prompts):
        first[prompt] = router.route(image_route(f"a{i}", prompt)).worker_id
        router.on_finish(f"a{i}")
    assert len(set(first.values())) >= 3  # new prompts spread by load/tie-breaks
    for i, prompt in enumerate(prompts * 2):
        decision = router.route(image_route(f"b{i}", prompt))
        router.on_finish(f"b{i}")
        assert decision.worker_id == first[prompt] and decision.overlap_blocks == decision.num_blocks > 0


def test_short_prompt_shorter_than_a_block_still_sticks():
    router, _ = image_router()
    worker = router.route(image_route("a", "a cat")).worker_id
    router.on_finish("a")
    assert all(router.route(image_route(f"b{i}", "a cat")).worker_id == worker for i in range(3))


def test_same_image_in_a_request_routes_to_the_worker_that_saw_it():
    router, _ = image_router()
    tokens = [7] * 64
    picture = [MmObject(mm_hash=0xABCDEF, offsets=[(16, 48)])]
    owner = router.route(route_request("a", tokens, mm_objects=picture)).worker_id
    router.on_finish("a")
    again = router.route(route_request("b", tokens, mm_objects=picture))
    router.on_finish("b")
    other = router.route(route_request("c", tokens, mm_objects=[MmObject(mm_hash=1, offsets=[(16, 48)])]))
    assert again.worker_id == owner and again.overlap_blocks == 4
    assert other.overlap_blocks == 1  # only the text block before the image is shared


def test_entries_expire_after_the_ttl():
    router, clock = image_router(ttl_s=120.0)
    router.route(image_route("a", "a very specific prompt that is long enough"))
    router.on_finish("a")
    advance(router, clock, 119.0)
    assert router.route(image_route("b", "a very specific prompt that is long enough")).overlap_blocks > 0
    router.on_finish("b")  # "b" refreshed the entries until 239 s
    advance(router, clock, 240.0)
    assert len(router.approx) == 0
    assert router.route(image_route("c", "a very specific prompt that is long enough")).overlap_blocks == 0


def test_size_cap_prunes_soonest_expiring_entries_first():
    index = ApproxIndex(ttl_s=100.0, max_blocks=10, prune_ratio=0.5)
    index.record("w", [1, 2, 3, 4], [11, 12, 13, 14], now=0.0)  # oldest
    index.record("w", [5, 6, 7, 8], [15, 16, 17, 18], now=1.0)
    index.record("w", [9, 10, 11], [19, 20, 21], now=2.0)  # 11 entries > 10: prune down to 5
    assert len(index) <= 5 and index.num_pruned >= 6
    assert index.find_matches([9, 10, 11]) == {"w": 3}  # the newest survive
    assert index.find_matches([1]) == {}


def test_refresh_keeps_a_hot_prompt_alive_and_lapsed_worker_is_forgotten():
    index = ApproxIndex(ttl_s=10.0)
    index.record("w", [1, 2], [11, 12], now=0.0)
    index.record("w", [1, 2], [11, 12], now=8.0)
    assert index.expire(now=12.0) == 0 and index.find_matches([1, 2]) == {"w": 2}
    assert index.expire(now=18.0) == 2 and index.find_matches([1, 2]) == {}
    index.record("v", [3], [13], now=20.0)
    index.remove_worker("v")
    assert len(index) == 0 and index.find_matches([3]) == {}
