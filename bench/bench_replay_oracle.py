"""How close the kv router comes to an oracle on the Mooncake replay (router/replay.py), in the same run.

The oracle reads every simulated worker directly: its exact cache, its waiting queue and when its step in flight
ends. It sends each request where its TTFT would be smallest by the mocker's own timing model, plus `--extra`
times the prefill time it adds there (work that delays later requests). No real router can know all that; it bounds
what any per-request routing choice can reach with this engine model. Run:
python bench/bench_replay_oracle.py [TRACE] [--speedup 4] [--max-requests N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.kv import chain_hashes  # noqa: E402
from router.cli import format_table  # noqa: E402
from router.replay import Replay, ReplayConfig, blocks_per_worker, load_trace, trace_stats  # noqa: E402
from workers.mocker.engine import decode_ms, prefill_ms  # noqa: E402

TRACE = Path(__file__).resolve().parents[2] / "shared/data/traces/mooncake_conversation_trace.jsonl"


class OracleReplay(Replay):
    """Replay whose routing reads the simulated workers instead of asking the router."""

    extra = 1.0

    def choose(self, request_id: str, tokens: np.ndarray, local: list[int]) -> str:
        block_size = self.config.block_size
        chained = chain_hashes(local)
        best_cost, best = None, None
        for worker_id, worker in self.workers.items():
            scheduler = worker.scheduler
            cache = scheduler.cache
            free_in = worker.step_end_ms - self.now_ms if worker.busy else 0.0
            queued = sum(prefill_ms(s.prompt_len - cache.match_prefix(s.seq_hashes) * block_size) for s in scheduler.waiting)
            own = prefill_ms(len(tokens) - cache.match_prefix(chained) * block_size)
            ttft = free_in + queued + own + (decode_ms(scheduler.kv_usage()) if scheduler.running else 0.0)
            cost = ttft + self.extra * own
            if best_cost is None or cost < best_cost:
                best_cost, best = cost, worker_id
        return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", nargs="?", default=str(TRACE))
    parser.add_argument("--speedup", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--extra", type=float, default=1.0, help="oracle weight of the prefill time a request adds")
    args = parser.parse_args()
    requests = load_trace(args.trace, args.max_requests)
    block_size = ReplayConfig.block_size
    distinct, infinite = trace_stats(requests, block_size)
    num_blocks = blocks_per_worker(requests, distinct, block_size, cache_fraction=0.2)  # as `diffmesh replay`
    oracle = OracleReplay(requests, ReplayConfig(num_blocks=num_blocks, speedup=args.speedup))
    oracle.extra = args.extra
    replays = {policy: Replay(requests, ReplayConfig(policy=policy, num_blocks=num_blocks, speedup=args.speedup))
               for policy in ("kv", "round_robin")}
    rows = [{**replay.run().as_json(), "policy": policy, "infinite_hit_rate": infinite}
            for policy, replay in (*replays.items(), ("oracle", oracle))]
    print(f"{args.trace}: {len(requests)} requests, {ReplayConfig.num_workers} workers x {num_blocks} blocks, "
          f"arrivals x{args.speedup:g}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
