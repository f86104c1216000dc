"""Worker choice: Dynamo's KV cost plus round_robin, random, least_loaded and direct, behind one function."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from router.tracker import WorkerState

MODES = ("kv", "round_robin", "random", "least_loaded")


@dataclass(frozen=True)
class PolicyConfig:
    mode: str = "kv"
    overlap_weight: float = 1.0  # weight of prefill blocks against decode blocks in the cost
    temperature: float = 0.0  # 0 = argmin; > 0 samples from a softmax over normalised costs
    busy_kv_fraction: float = 0.95  # a worker using more of its KV blocks than this is busy
    busy_waiting: int | None = None  # a worker with this many waiting requests is busy (None = its max_queue)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"router mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.overlap_weight < 0 or self.temperature < 0:
            raise ValueError("router overlap_weight and temperature must be >= 0")


@dataclass(frozen=True)
class Candidate:
    state: WorkerState
    overlap_blocks: int  # request prefix blocks this worker already holds
    tree_size: int  # blocks the index holds for this worker (tie-break)


@dataclass(frozen=True)
class Scored:
    worker_id: str
    cost: float
    overlap_blocks: int
    prefill_tokens: int


def is_busy(state: WorkerState, config: PolicyConfig) -> bool:
    load, card = state.load, state.card
    if load.active_requests + load.waiting_requests >= card.capacity + card.max_queue:
        return True
    if config.busy_waiting is not None and load.waiting_requests >= config.busy_waiting:
        return True
    total = load.kv_total_blocks or card.kv_total_blocks
    return bool(total) and load.active_decode_blocks / total > config.busy_kv_fraction


def kv_costs(candidates: Sequence[Candidate], num_tokens: int, block_size: int, request_blocks: Sequence[int],
             overlap_weight: float) -> list[Scored]:
    """cost = overlap_weight × prefill_blocks + decode_blocks (lower is better)."""
    scored = []
    bs = max(block_size, 1)
    for c in candidates:
        new_tokens = max(num_tokens - c.overlap_blocks * bs, 0)
        prefill_tokens = c.state.predicted_prefill_tokens + new_tokens
        new_blocks = sum(1 for b in request_blocks if b not in c.state.active_blocks)
        decode_blocks = c.state.num_active_blocks + new_blocks
        cost = overlap_weight * prefill_tokens / bs + decode_blocks
        scored.append(Scored(c.state.worker_id, cost, c.overlap_blocks, new_tokens))
    return scored


def pick(scored: Sequence[Scored], tree_sizes: dict[str, int], temperature: float, rng: random.Random) -> Scored:
    """Argmin with ties to the smaller tree then random; softmax sampling when temperature > 0."""
    if temperature > 0 and len(scored) > 1:
        low, high = min(s.cost for s in scored), max(s.cost for s in scored)
        if high > low:
            weights = [math.exp(-(s.cost - low) / ((high - low) * temperature)) for s in scored]
            return rng.choices(list(scored), weights=weights)[0]
        return rng.choice(list(scored))
    best = min(s.cost for s in scored)
    tied = [s for s in scored if s.cost - best <= 1e-9]
    smallest = min(tree_sizes.get(s.worker_id, 0) for s in tied)
    tied = [s for s in tied if tree_sizes.get(s.worker_id, 0) == smallest]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def least_loaded(states: Sequence[WorkerState], rng: random.Random) -> WorkerState:
    """Fewest requests: the worker's last report or this router's own count, whichever is higher."""

    def load(s: WorkerState) -> int:
        return max(s.load.active_requests + s.load.waiting_requests, s.num_active)

    low = min(load(s) for s in states)
    return rng.choice([s for s in states if load(s) == low])
