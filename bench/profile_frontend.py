"""Where a request's CPU goes: py-spy samples of the frontend, the mocker worker and the router decision path.

Starts the same mesh as bench_bus.py (embedded NATS, one mocker with no simulated time, the frontend), drives it with
wrk, and records each process with py-spy (`pip install py-spy`, in the test extra) while the load runs. Prints, per
process, the CPU it spent per request (from /proc) and the functions with the most samples: "self" counts samples in
the function itself, "total" samples anywhere under it. The router part loops Router.route() on bench_router.py's
setup (4,096-token prompts, 32 workers) in a child process and samples that.

Run: python bench/profile_frontend.py [--duration 6] [--case json|sse|router ...] [--top 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench_bus import ROOT, _body, _post, _spawn, _wait_http, cpu_seconds, wrk

from shell.bus import EmbeddedNats, free_port

SAMPLE_RATE = 250  # samples/s per process
SKIP_SELF = ("<module>", "run_forever", "run (", "until_signal", "run_until_signal", "main (", "_run_once")


def py_spy() -> str:
    path = Path(sys.executable).parent / "py-spy"
    if not path.exists():
        raise SystemExit("py-spy not found next to this Python: pip install py-spy (it is in the test extra)")
    return str(path)


def record(pid: int, seconds: float, out: str) -> subprocess.Popen:
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
                             str(SAMPLE_RATE), "--format", "raw", "--nolineno", "--output", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Where a sample's time goes: the first of these met walking its stack from the leaf up.
CATEGORIES = [
    ("templating + tokenizing", ("frontend/preprocess.py", "jinja2/", "(<template>)", "tokenizer.py")),
    ("detokenizing", ("workers/textstream.py", "TableDecoder")),
    ("routing", ("router/", "protocol/kv.py")),
    ("NATS client", ("nats/",)),
    ("aiohttp", ("aiohttp/", "multidict/", "yarl/")),
    ("metrics", ("shell/metrics.py", "prometheus_client/")),
    ("response building", ("frontend/textformat.py",)),
    ("request checks", ("frontend/capabilities.py", "frontend/fields.py")),
    ("choice plan", ("frontend/textplan.py",)),
    ("dispatch + reply streams", ("frontend/state.py", "frontend/bus.py")),
    ("handlers + middlewares", ("frontend/text.py", "frontend/app.py")),
    ("mocker engine", ("workers/mocker/",)),
    ("worker runtime", ("workers/",)),
    ("other frontend code", ("frontend/", "protocol/", "shell/")),
]
EVENT_LOOP = ("asyncio/", "uvloop", "runners.py")  # only when no frame above belongs to a part
LAUNCH = ("shell/process.py", "diffmesh/", "runpy", "profile_frontend.py")  # the frames every stack starts with


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        if any(mark in frame for mark in LAUNCH):
            continue
        for name, marks in CATEGORIES:
            if any(mark in frame for mark in marks):
                return name
    return "event loop" if any(mark in frame for frame in frames for mark in EVENT_LOOP) else "other"


def summarize(raw_path: str, top: int) -> dict:
    """Self and total sample shares per function from py-spy's collapsed stacks ("f (file);g (file) count")."""
    own, total, kinds, num = Counter(), Counter(), Counter(), 0
    for line in Path(raw_path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames, count = stack.split(";"), int(count)
        num += count
        own[frames[-1]] += count
        kinds[category(frames)] += count
        for frame in set(frames):
            total[frame] += count
    rows = [{"function": f, "self": own[f] / num, "total": total[f] / num} for f, _ in own.most_common(top)]
    inclusive = [{"function": f, "total": c / num} for f, c in total.most_common(top * 3)
                 if not any(s in f for s in SKIP_SELF)][:top]
    return {"samples": num, "self": rows, "inclusive": inclusive,
            "categories": {name: count / num for name, count in kinds.most_common()}}


def profile_mesh(args: argparse.Namespace, case: str, tmp: str) -> dict:
    server = EmbeddedNats(port=None).start()
    port = free_port()
    worker = _spawn("-m", "diffmesh.cli", "--log-level", "WARNING", "worker", "mocker", "--nats-url", server.url,
                    "--speedup-ratio", "inf", "--max-num-seqs", "512")
    front = _spawn("-m", "diffmesh.cli", "--log-level", "WARNING", "frontend", "--nats-url", server.url, "--port",
                   str(port), "--host", "127.0.0.1", *args.frontend_args)
    procs = {"frontend": front, "mocker": worker}
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/v1/models")
        stream = case == "sse"
        body = _body(stream)
        _post(f"{url}/v1/chat/completions", body)
        wrk(f"{url}/v1/chat/completions", body, args.connections, 1)  # warm-up
        pids = {name: proc.pid for name, proc in procs.items()} | {"nats-server": server.process.pid}
        before = {name: cpu_seconds([pid]) for name, pid in pids.items()}
        spies = {name: record(procs[name].pid, args.duration, f"{tmp}/{case}-{name}.txt") for name in procs}
        result = wrk(f"{url}/v1/chat/completions", body, args.connections, args.duration)
        after = {name: cpu_seconds([pid]) for name, pid in pids.items()}
        for spy in spies.values():
            spy.wait()
        num_requests = result["rps"] * args.duration
        out = {"case": case, "connections": args.connections, "rps": result["rps"],
               "cpu_ms_per_request": {n: (after[n] - before[n]) * 1e3 / num_requests for n in pids}}
        out["profiles"] = {name: summarize(f"{tmp}/{case}-{name}.txt", args.top) for name in procs}
        return out
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait()
        server.stop()


def profile_router(args: argparse.Namespace, tmp: str) -> dict:
    """Samples the decision loop only: py-spy attaches once the child has built its index."""
    out_path = f"{tmp}/router.txt"
    loop = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--router-loop", str(args.duration),
                             "--blocks", str(args.blocks)], stdout=subprocess.PIPE, text=True)
    assert loop.stdout.readline().strip() == "ready"
    spy = record(loop.pid, args.duration, out_path)
    stats = json.loads(loop.stdout.readline())
    loop.wait()
    spy.wait()
    return {"case": "router", **stats, "profiles": {"router": summarize(out_path, args.top)}}


def router_loop(seconds: float, num_blocks: int) -> None:
    """Child process: build bench_router's index, then route + finish 4,096-token prompts for `seconds`."""
    import random

    import numpy as np

    import bench_router as br
    from protocol.events import Heartbeat, LoadReport
    from protocol.routing import RouteRequest
    from router.core import Router, RouterConfig
    from shell.process import tune_gc

    tune_gc()
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(0, 150_000, br.SHARED_PREFIX_TOKENS, dtype=np.int32) for _ in range(br.NUM_SYSTEM_PROMPTS)]
    router = Router(RouterConfig(), rng=random.Random(0))
    for i in range(br.NUM_WORKERS):
        router.on_heartbeat(Heartbeat(card=br.card(f"w{i}", 16), load=LoadReport(worker_id=f"w{i}")))
    for data, _ in br.build_events(num_blocks, rng, prefixes, 16):
        router.on_kv_events(br.event_decoder.decode(data))
    requests = [br.prompt(rng, prefixes).tobytes() for _ in range(1000)]
    print("ready", flush=True)
    deadline, n = time.monotonic() + seconds, 0
    start_cpu = time.thread_time()
    while time.monotonic() < deadline:
        request = RouteRequest(request_id=f"r{n}", model="m", token_ids=requests[n % len(requests)])
        router.route(request)
        router.on_finish(request.request_id)
        n += 1
    print(json.dumps({"decisions": n, "cpu_us_per_decision_and_finish": (time.thread_time() - start_cpu) / n * 1e6,
                      "indexed_blocks": router.index.num_entries}), flush=True)


def print_tables(results: list[dict]) -> None:
    for r in results:
        if r["case"] == "router":
            print(f"\n### router: Router.route() + on_finish(), {r['indexed_blocks']:,} indexed blocks, 4,096-token "
                  f"prompts, 32 workers: {r['cpu_us_per_decision_and_finish']:.0f} µs CPU per decision")
        else:
            cpu = ", ".join(f"{n} {ms:.3f}" for n, ms in r["cpu_ms_per_request"].items())
            print(f"\n### {r['case'].upper()} c={r['connections']}: {r['rps']:,.0f} req/s; CPU ms per request: {cpu}")
        for name, prof in r["profiles"].items():
            cpu_us = r.get("cpu_ms_per_request", {}).get(name, r.get("cpu_us_per_decision_and_finish", 0) / 1e3) * 1e3
            print(f"\n{name} ({prof['samples']:,} samples): where the time goes\n\n| share | µs per request | part |\n|---|---|---|")
            for part, share in prof["categories"].items():
                print(f"| {share:.1%} | {share * cpu_us:.0f} | {part} |")
            print("\n| self | total | function (self time) |\n|---|---|---|")
            for row in prof["self"]:
                print(f"| {row['self']:.1%} | {row['total']:.1%} | `{row['function']}` |")
            print("\n| total | function (inclusive) |\n|---|---|")
            for row in prof["inclusive"]:
                print(f"| {row['total']:.1%} | `{row['function']}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load per case")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--case", action="append", choices=["json", "sse", "router"], help="default: all three")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--blocks", type=int, default=1_000_000, help="indexed blocks for the router case")
    parser.add_argument("--frontend-args", nargs=argparse.REMAINDER, default=["--workers", "1"],
                        help="`diffmesh frontend` flags (default: --workers 1, one process to sample)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--router-loop", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.router_loop:
        router_loop(args.router_loop, args.blocks)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="diffmesh-profile-") as tmp:
        for case in args.case or ["json", "sse", "router"]:
            results.append(profile_router(args, tmp) if case == "router" else profile_mesh(args, case, tmp))
    print(json.dumps(results, indent=1)) if args.json else print_tables(results)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
