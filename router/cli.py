"""`diffmesh router` (standalone request/reply router) and `diffmesh replay` (trace replay in virtual time)."""

from __future__ import annotations

import argparse
import json
import os

from router.core import RouterConfig
from router.policy import MODES, PolicyConfig
from router.service import ServiceConfig
from shell.config import ConfigError, from_env
from shell.flags import add_nats_flags, nats_config
from shell.process import tune_gc

REPLAY_POLICIES = ("kv", "round_robin", "random", "least_loaded")


# --- diffmesh router ------------------------------------------------------------------------------


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `diffmesh router`; each also reads DIFFMESH_ROUTER_<NAME> (e.g. DIFFMESH_ROUTER_TEMPERATURE)."""
    add_nats_flags(parser)
    parser.add_argument("--router-mode", dest="mode", choices=MODES, help="default worker choice (kv)")
    parser.add_argument("--overlap-weight", type=float, help="weight of prefill blocks in the kv cost")
    parser.add_argument("--temperature", type=float, help="softmax temperature over kv costs (0 = argmin)")
    parser.add_argument("--miss-penalty", type=float, help="extra weight of a request's uncached tokens (1.5; 0 = Dynamo)")
    parser.add_argument("--prefill-rate", type=float, help="tokens/s routed prefill drains at (default: each worker's "
                        "prefill-time curve, learned from first tokens; 0 = no drain, as Dynamo)")
    parser.add_argument("--busy-kv-fraction", type=float, help="KV use above which a worker is busy (0.95)")
    parser.add_argument("--busy-waiting", type=int, help="waiting requests at which a worker is busy")
    parser.add_argument("--approx-ttl", type=float, dest="approx_ttl_s", help="approximate-mode TTL in seconds (120)")
    parser.add_argument("--approx-max-blocks", type=int, help="approximate-mode size cap in blocks (2^20)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (off by default)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="bind address of the metrics server")
    parser.add_argument("--dry-run", action="store_true", help="print the configuration and exit")


def service_config(args: argparse.Namespace) -> ServiceConfig:
    """ServiceConfig of `diffmesh router` from its flags and DIFFMESH_* variables."""
    return ServiceConfig(nats=nats_config(args), namespace=args.namespace or os.environ.get("DIFFMESH_NAMESPACE", "dm"),
                         router=router_config(args), metrics_host=args.metrics_host, metrics_port=args.metrics_port)


def router_config(args: argparse.Namespace) -> RouterConfig:
    """RouterConfig from DIFFMESH_ROUTER_* variables, then flags; bad values raise ConfigError naming them."""
    try:
        policy = from_env(PolicyConfig, prefix="DIFFMESH_ROUTER_", mode=args.mode, overlap_weight=args.overlap_weight,
                          temperature=args.temperature, busy_kv_fraction=args.busy_kv_fraction,
                          busy_waiting=args.busy_waiting, miss_penalty=args.miss_penalty,
                          prefill_rate=args.prefill_rate)
        return from_env(RouterConfig, prefix="DIFFMESH_ROUTER_", policy=policy, approx_ttl_s=args.approx_ttl_s,
                        approx_max_blocks=args.approx_max_blocks)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# --- diffmesh replay ------------------------------------------------------------------------------


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="Mooncake-format JSONL trace (timestamp, input_length, output_length, hash_ids)")
    parser.add_argument("--workers", type=int, default=8, help="simulated workers (8)")
    parser.add_argument("--policy", action="append", help="kv, round_robin, random, least_loaded; repeat or comma-"
                        "separate for several (default: all four)")
    parser.add_argument("--cache-fraction", type=float, default=0.2,
                        help="each worker's KV capacity as a fraction of the trace's distinct blocks (0.2)")
    parser.add_argument("--num-blocks", type=int, help="each worker's KV capacity in blocks (overrides --cache-fraction)")
    parser.add_argument("--block-size", type=int, default=64, help="engine KV block size in tokens (64)")
    parser.add_argument("--trace-block-tokens", type=int, default=512, help="tokens per trace hash id (512)")
    parser.add_argument("--speedup", type=float, default=1.0, help="divide arrival times by this (1.0)")
    parser.add_argument("--max-requests", type=int, help="replay only the first N requests")
    parser.add_argument("--overlap-weight", type=float, default=PolicyConfig.overlap_weight)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--miss-penalty", type=float, default=PolicyConfig.miss_penalty)
    parser.add_argument("--prefill-rate", type=float, help="tokens/s (default: learned curve per worker; 0 = Dynamo's count)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-batched-tokens", type=int, default=8192)
    parser.add_argument("--chunked-prefill", action=argparse.BooleanOptionalAction, default=False,
                        help="simulated workers split long prompts over steps of --max-batched-tokens (vLLM; off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per policy instead of the table")


def _policies(args: argparse.Namespace) -> list[str]:
    names = [p.strip() for value in (args.policy or [",".join(REPLAY_POLICIES)]) for p in value.split(",") if p.strip()]
    for name in names:
        if name not in REPLAY_POLICIES:
            raise ConfigError(f"--policy {name!r} is not one of {', '.join(REPLAY_POLICIES)}")
    return names


def run_replay(args: argparse.Namespace) -> int:
    """Replay the trace once per policy and print the comparison."""
    from router.replay import (
        Replay,
        ReplayConfig,
        blocks_per_worker,
        load_trace,
        trace_stats,
    )

    policies = _policies(args)
    if args.workers < 1 or args.speedup <= 0 or not 0 < args.cache_fraction:
        raise ConfigError(f"--workers={args.workers}, --speedup={args.speedup}, --cache-fraction={args.cache_fraction} "
                          "must be positive")
    try:
        requests = load_trace(args.trace, args.max_requests)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"trace {args.trace}: {exc}") from None
    tune_gc()
    distinct, infinite = trace_stats(requests, args.block_size, args.trace_block_tokens)
    num_blocks = args.num_blocks or blocks_per_worker(requests, distinct, args.block_size, args.cache_fraction)
    if not args.json:
        print(f"{args.trace}: {len(requests)} requests, {distinct} distinct {args.block_size}-token blocks; "
              f"{args.workers} workers x {num_blocks} blocks; arrivals x{args.speedup:g}; "
              f"infinite-cache hit rate {infinite:.1%}")
    rows = []
    for policy in policies:
        config = ReplayConfig(policy=policy, num_workers=args.workers, block_size=args.block_size, num_blocks=num_blocks,
                              max_num_seqs=args.max_num_seqs, max_batched_tokens=args.max_batched_tokens,
                              chunked_prefill=args.chunked_prefill,
                              speedup=args.speedup, trace_block_tokens=args.trace_block_tokens,
                              overlap_weight=args.overlap_weight, temperature=args.temperature,
                              miss_penalty=args.miss_penalty, prefill_rate=args.prefill_rate, seed=args.seed)
        result = Replay(requests, config).run()
        row = {**result.as_json(), "infinite_hit_rate": round(infinite, 4)}
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print(format_table(rows))
    return 0


COLUMNS = (("policy", "policy", "{}"), ("hit rate", "hit_rate", "{:.1%}"), ("of infinite", "of_infinite", "{:.0%}"),
           ("TTFT p50 ms", "ttft_p50_ms", "{:,.0f}"), ("TTFT p99 ms", "ttft_p99_ms", "{:,.0f}"),
           ("latency p50 ms", "latency_p50_ms", "{:,.0f}"), ("latency p99 ms", "latency_p99_ms", "{:,.0f}"),
           ("req/s", "throughput_rps", "{:.2f}"), ("output tok/s", "output_tokens_per_s", "{:,.0f}"),
           ("imbalance", "imbalance", "{:.2f}"), ("wall s", "wall_s", "{:.0f}"))


def format_table(rows: list[dict]) -> str:
    """A Markdown table, one row per policy."""
    lines = ["| " + " | ".join(title for title, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        values = {**row, "of_infinite": row["hit_rate"] / row["infinite_hit_rate"] if row["infinite_hit_rate"] else 0.0}
        lines.append("| " + " | ".join(fmt.format(values[key]) for _, key, fmt in COLUMNS) + " |")
    return "\n".join(lines)
