"""Router decision latency (hash + match + score) and KV event ingest, with a naive baseline in the same run.

Setup (issue 3): 32 workers, one million indexed (worker, block) pairs, 4,096-token prompts (256 blocks of 16, or 64
of 64 tokens) of which half share a cached 1,024-token prefix. The baseline hashes the Dynamo chain and matches
against one Python set of sequence hashes per worker (what a straightforward router does); "router" is the real
Router.route(). Run: python bench/bench_router.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.events import (  # noqa: E402
    Heartbeat, KvEvent, KvEventBatch, KvRemoved, KvStored, LoadReport, StoredBlock, WorkerCard, event_decoder,
    event_encoder,
)
from protocol.kv import chain_hashes, local_block_hashes, tokens_from_bytes  # noqa: E402
from protocol.routing import RouteRequest  # noqa: E402
from shell.process import GC_THRESHOLDS  # noqa: E402
from router.core import Router, RouterConfig  # noqa: E402

PROMPT_TOKENS = 4096
NUM_WORKERS = 32
SHARED_PREFIX_TOKENS = 1024
NUM_SYSTEM_PROMPTS = 64


def card(worker_id: str, block_size: int) -> WorkerCard:
    return WorkerCard(worker_id=worker_id, namespace="bench", component="mocker", model="m", capacity=256,
                      max_queue=1024, block_size=block_size, kv_total_blocks=1 << 20, publishes_kv_events=True)


def prompt(rng: np.random.Generator, prefixes: list[np.ndarray]) -> np.ndarray:
    """4,096 tokens; a cached system prompt first for half of them."""
    tokens = rng.integers(0, 150_000, PROMPT_TOKENS, dtype=np.int32)
    if rng.random() < 0.5:
        tokens[:SHARED_PREFIX_TOKENS] = prefixes[int(rng.integers(len(prefixes)))]
    return tokens


def build_events(num_blocks: int, rng: np.random.Generator, prefixes: list[np.ndarray],
                 block_size: int) -> list[tuple[bytes, int]]:
    """Encoded KV event batches (one stored chain of a prompt each) spread over the workers, and their block counts,
    until the workers hold `num_blocks` distinct (worker, block) pairs (shared prefixes repeat on a worker)."""
    batches, n = [], 0
    held: set[tuple[str, int]] = set()
    next_id = {f"w{i}": 0 for i in range(NUM_WORKERS)}
    while len(held) < num_blocks:
        worker = f"w{n % NUM_WORKERS}"
        local = local_block_hashes(prompt(rng, prefixes), block_size)
        blocks = [StoredBlock(s, h) for s, h in zip(chain_hashes(local), local)]
        next_id[worker] += 1
        event = KvEvent(event_id=next_id[worker], data=KvStored(parent_hash=None, blocks=blocks))
        batches.append((event_encoder.encode(KvEventBatch(worker_id=worker, events=[event])), len(blocks)))
        held.update((worker, b.block_hash) for b in blocks)
        n += 1
    return batches


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)) * 1e6, float(np.percentile(values, 99)) * 1e6


def ingest(router: Router, batches: list[tuple[bytes, int]]) -> dict:
    """Decode + apply every batch; then the same blocks removed again in per-chain events (timed separately)."""
    decoded = [event_decoder.decode(data) for data, _ in batches[:2000]]
    start = time.perf_counter()
    for data, _ in batches:
        router.on_kv_events(event_decoder.decode(data))
    stored_s = time.perf_counter() - start
    num_blocks = sum(n for _, n in batches)
    start = time.perf_counter()
    for batch in decoded:
        event = batch.events[0]
        router.on_kv_events(KvEventBatch(worker_id=batch.worker_id, events=[KvEvent(
            event_id=router.feed.last_event_id[batch.worker_id] + 1,
            data=KvRemoved(block_hashes=[b.block_hash for b in event.data.blocks]))]))
    removed_s = time.perf_counter() - start
    for batch in decoded:  # put them back so the decision benchmark sees the full index
        worker = batch.worker_id
        data = batch.events[0].data
        router.on_kv_events(KvEventBatch(worker_id=worker, events=[KvEvent(
            event_id=router.feed.last_event_id[worker] + 1, data=data)]))
    return {"stored_blocks_per_s": num_blocks / stored_s, "removed_blocks_per_s":
            sum(len(b.events[0].data.blocks) for b in decoded) / removed_s, "indexed_blocks": router.index.num_entries}


def decisions(router: Router, requests: list[bytes]) -> dict:
    """Wall time per route() and CPU time of this thread (immune to other processes taking the core)."""
    totals, cpu, hashing, matching, scoring, overlaps = [], [], [], [], [], []
    for n, token_ids in enumerate(requests):
        request = RouteRequest(request_id=f"r{n}", model="m", token_ids=token_ids)
        start, start_cpu = time.perf_counter(), time.thread_time()
        decision = router.route(request)
        cpu.append(time.thread_time() - start_cpu)
        totals.append(time.perf_counter() - start)
        router.on_finish(request.request_id)
        hashing.append(decision.hash_s)
        matching.append(decision.match_s)
        scoring.append(decision.score_s)
        overlaps.append(decision.overlap_blocks)
    out = {}
    for name, values in (("decision", totals), ("decision_cpu", cpu), ("hash", hashing), ("match", matching),
                         ("score", scoring)):
        out[f"{name}_p50_us"], out[f"{name}_p99_us"] = percentiles(values)
    out["mean_overlap_blocks"] = float(np.mean(overlaps))
    return out


def baseline_decisions(batches: list[tuple[bytes, int]], requests: list[bytes], block_size: int) -> dict:
    """Chain hashes + one set of sequence hashes per worker, linear match per worker, prefill-only scoring."""
    sets: dict[str, set[int]] = {}
    for data, _ in batches:
        batch = event_decoder.decode(data)
        sets.setdefault(batch.worker_id, set()).update(b.block_hash for b in batch.events[0].data.blocks)
    totals = []
    for token_ids in requests:
        start = time.perf_counter()
        chained = chain_hashes(local_block_hashes(tokens_from_bytes(token_ids), block_size))
        best, best_cost = None, None
        for worker, held in sets.items():
            overlap = 0
            for h in chained:
                if h not in held:
                    break
                overlap += 1
            cost = (len(chained) - overlap) * 2.0
            if best_cost is None or cost < best_cost:
                best, best_cost = worker, cost
        totals.append(time.perf_counter() - start)
    p50, p99 = percentiles(totals)
    return {"decision_p50_us": p50, "decision_p99_us": p99}


def run(num_blocks: int, num_decisions: int, tuned_gc: bool, block_size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    prefixes = [rng.integers(0, 150_000, SHARED_PREFIX_TOKENS, dtype=np.int32) for _ in range(NUM_SYSTEM_PROMPTS)]
    batches = build_events(num_blocks, rng, prefixes, block_size)
    requests = [prompt(rng, prefixes).tobytes() for _ in range(num_decisions)]
    if tuned_gc:
        gc.set_threshold(*GC_THRESHOLDS)
    else:
        gc.set_threshold(700, 10, 10)
    router = Router(RouterConfig(), rng=random.Random(seed))
    for i in range(NUM_WORKERS):
        router.on_heartbeat(Heartbeat(card=card(f"w{i}", block_size), load=LoadReport(worker_id=f"w{i}")))
    result = {"block_size": block_size, "gc": "tuned" if tuned_gc else "default", **ingest(router, batches)}
    result.update(decisions(router, requests))
    result.update({f"baseline_{k}": v for k, v in baseline_decisions(batches, requests, block_size).items()})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k blocks, 300 decisions")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--blocks", type=int, help="indexed blocks (default 1,000,000)")
    parser.add_argument("--decisions", type=int, help="timed decisions (default 3,000)")
    parser.add_argument("--block-size", type=int, action="append", help="KV block size(s) in tokens (default 16 and 64)")
    args = parser.parse_args()
    num_blocks = args.blocks or (100_000 if args.quick else 1_000_000)
    num_decisions = args.decisions or (300 if args.quick else 3000)
    rows = [run(num_blocks, num_decisions, tuned_gc, block_size)
            for block_size in (args.block_size or [16, 64]) for tuned_gc in (False, True)]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{NUM_WORKERS} workers, {PROMPT_TOKENS}-token prompts, {rows[0]['indexed_blocks']:,} indexed (worker, block) "
          f"pairs, {num_decisions} decisions; CPU = this thread's CPU time (other processes excluded)")
    print("| block | gc | decision p50 µs | decision p99 µs | CPU p50/p99 µs | hash p50/p99 | match p50/p99 | score p50/p99 | "
          "baseline p50/p99 µs | stored blocks/s | removed blocks/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['block_size']} | {r['gc']} | {r['decision_p50_us']:.0f} | {r['decision_p99_us']:.0f} | "
              f"{r['decision_cpu_p50_us']:.0f}/{r['decision_cpu_p99_us']:.0f} | "
              f"{r['hash_p50_us']:.0f}/{r['hash_p99_us']:.0f} | {r['match_p50_us']:.0f}/{r['match_p99_us']:.0f} | "
              f"{r['score_p50_us']:.0f}/{r['score_p99_us']:.0f} | "
              f"{r['baseline_decision_p50_us']:.0f}/{r['baseline_decision_p99_us']:.0f} | "
              f"{r['stored_blocks_per_s']:,.0f} | {r['removed_blocks_per_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
