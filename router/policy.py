"""Worker choice: Dynamo's KV cost plus round_robin, random, least_loaded and direct, behind one function."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.keys import leading_active
from router.tracker import WorkerState

MODES = ("kv", "round_robin", "random", "least_loaded", "direct")
_TIE = 1e-9


@dataclass(frozen=True)
class PolicyConfig:
    mode: str = "kv"
    # Weight of prefill blocks against decode blocks. Dynamo's default is 1.0; on the Mooncake conversation replay
    # (router/replay.py, sweep in the README) 16 keeps 91–95 % of the infinite-cache hit rate where 1.0 keeps 77–88 %.
    overlap_weight: float = 16.0
    # Extra weight of the request's own uncached prompt tokens. They delay this request once (the 1 in 1 + penalty) and
    # again the requests that queue behind them on that worker, so sending a request away from its prefix costs more
    # than its own wait. 0 = Dynamo's cost. On the Mooncake replay (README) 1.5 keeps >= 90 % of the infinite-cache
    # hit rate at 4x the trace's rate; 3 piles light traffic sharing a system prompt onto few workers.
    miss_penalty: float = 1.5
    temperature: float = 0.0  # 0 = argmin; > 0 samples from a softmax over normalised costs
    busy_kv_fraction: float = 0.95  # a worker using more of its KV blocks than this is busy
    busy_waiting: int | None = None  # a worker with this many waiting requests is busy (None = capacity + max_queue)
    # How routed prefill drains until its first token (router.prefill): None learns each worker's prefill-time curve
    # from first-token times; > 0 is a fixed tokens/s; 0 keeps the tokens in full until the first token (Dynamo).
    prefill_rate: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"router mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.prefill_rate is not None and self.prefill_rate < 0:
            raise ValueError(f"router prefill_rate={self.prefill_rate} must be >= 0 tokens/s (or unset to learn it)")
        if min(self.overlap_weight, self.temperature, self.miss_penalty) < 0:
            raise ValueError(f"router overlap_weight={self.overlap_weight}, temperature={self.temperature} and "
                             f"miss_penalty={self.miss_penalty} must be >= 0")
        if not 0 < self.busy_kv_fraction <= 1:
            raise ValueError(f"router busy_kv_fraction={self.busy_kv_fraction} must be in (0, 1]")


def is_busy(state: WorkerState, config: PolicyConfig) -> bool:
    """Over a threshold at the worker's last report: full queue, too many waiting, or KV nearly all in use."""
    load, card = state.load, state.card
    if load.active_requests + load.waiting_requests >= card.capacity + card.max_queue > 0:
        return True
    if config.busy_waiting is not None and load.waiting_requests >= config.busy_waiting:
        return True
    total = load.kv_total_blocks or card.kv_total_blocks
    return bool(total) and load.active_decode_blocks / total > config.busy_kv_fraction


def is_full(state: WorkerState) -> bool:
    """The requests routed there and not finished (by every synced router) fill its slots and queue: a new one would
    be refused, so it is not sent (load reports lag; this count moves with every decision)."""
    card = state.card
    return card.capacity > 0 and state.num_active >= card.capacity + card.max_queue


def kv_costs(states: Sequence[WorkerState], overlaps: dict[str, int], num_tokens: int, block_size: int,
             keys: Sequence[int], overlap_weight: float, now: float | None = None, miss_penalty: float = 0.0,
             held_blocks: Callable[[str], int] | None = None) -> list[float]:
    """cost = overlap_weight × prefill_blocks + decode_blocks per worker (lower is better).

    prefill_blocks = (queued prefill + (1 + miss_penalty) × the prompt's prefill there) / block_size + the cached
    blocks the worker must evict to hold the new ones (from `held_blocks(worker_id)` and the card's kv_total_blocks:
    each is a prefix some later request misses). Prefill counts tokens (Dynamo) or, with `now` and a worker whose
    prefill curve is known (router.prefill), that worker's seconds still queued at `now` and for the prompt's uncached
    tokens, as tokens at the fleet's mean rate.
    decode_blocks = the worker's active blocks + the request's blocks not already active there.
    """
    costs = []
    num_blocks = len(keys)
    miss_weight = 1.0 + miss_penalty
    rate = reference_rate(states) if now is not None else 0.0
    for state in states:
        active = state.active_blocks
        worker_id = state.card.worker_id
        overlap = overlaps.get(worker_id, 0) if overlaps else 0
        new_tokens = max(num_tokens - overlap * block_size, 0)
        queue = state.prefill
        if rate and queue.is_known:
            prefill_tokens = rate * (queue.remaining(now) + miss_weight * queue.seconds(new_tokens))
        else:
            prefill_tokens = state.predicted_prefill_tokens + miss_weight * new_tokens
        prefill_blocks = prefill_tokens / block_size
        total = state.card.kv_total_blocks
        if total and held_blocks is not None:
            evicted = num_blocks - overlap - (total - held_blocks(worker_id))
            if evicted > 0:
                prefill_blocks += evicted
        decode_blocks = len(active) + num_blocks - (leading_active(active, keys) if active else 0)
        costs.append(overlap_weight * prefill_blocks + decode_blocks)
    return costs


def reference_rate(states: Sequence[WorkerState]) -> float:
    """Tokens/s that turns predicted seconds back into tokens: the mean rate of the workers whose curve is known."""
    rates = [s.prefill.tokens_per_s for s in states if s.prefill.tokens_per_s > 0 and s.prefill.is_known]
    return sum(rates) / len(rates) if rates else 0.0


def pick(costs: Sequence[float], tree_sizes: Callable[[list[int]], list[int]], temperature: float,
         rng: random.Random) -> int:
    """Index of the chosen cost: argmin, ties to the smaller tree then random; softmax sampling when temperature > 0.

    `tree_sizes(indices)` gives the cached blocks of those candidates (asked only when costs tie).
    """
    if temperature > 0 and len(costs) > 1:
        return softmax_sample(costs, temperature, rng)
    best = min(costs)
    tied = [i for i, cost in enumerate(costs) if cost - best <= _TIE]
    if len(tied) == 1:
        return tied[0]
    sizes = tree_sizes(tied)
    smallest = min(sizes)
    tied = [i for i, size in zip(tied, sizes) if size == smallest]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def softmax_sample(costs: Sequence[float], temperature: float, rng: random.Random) -> int:
    """p_i ∝ exp(-(c_i - c_min) / ((c_max - c_min)·T)); uniform when all costs are equal (Dynamo)."""
    low, high = min(costs), max(costs)
    if high - low <= _TIE:
        return rng.randrange(len(costs))
    weights = [math.exp(-(cost - low) / ((high - low) * temperature)) for cost in costs]
    return rng.choices(range(len(costs)), weights=weights)[0]


def least_loaded(states: Sequence[WorkerState], rng: random.Random) -> int:
    """Index of the worker with the fewest requests: its last report or the routers' own count, whichever is higher."""
    loads = [max(s.load.active_requests + s.load.waiting_requests, s.num_active) for s in states]
    low = min(loads)
    return rng.choice([i for i, load in enumerate(loads) if load == low])
