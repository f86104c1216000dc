"""Bus overhead: the same response served directly by aiohttp vs through frontend -> NATS -> mocker (zero sim time).

Prints req/s, chunks/s, p50/p99, CPU per request and mesh/direct ratios for JSON at concurrency 1 and 64 and SSE with
50 chunks, with the same number of HTTP processes on both sides (`--processes`, default one per core: N direct servers
vs N frontend processes, plus the mocker and nats-server), all measured in one run with wrk (Debian package `wrk`)
as the load generator; then the router's decision latency on bench_router.py's setup (4,096-token prompts,
32 workers, 1M indexed blocks). Run: python bench/bench_bus.py [--quick] [--processes N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shell.bus import EmbeddedNats, free_port  # noqa: E402

JSON_TOKENS, SSE_TOKENS = 16, 50
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _body(stream: bool) -> bytes:
    return json.dumps({"model": "mocker", "messages": [{"role": "user", "content": "benchmark the bus"}],
                       "max_tokens": SSE_TOKENS if stream else JSON_TOKENS, "stream": stream}).encode()


def _post(url: str, body: bytes) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def _wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = json.loads(urllib.request.urlopen(url, timeout=1).read())
            if data.get("data"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _wait_frontends(url: str, num: int, timeout_s: float = 60) -> None:
    """Until /health, asked on new connections, has been answered by `num` different frontend processes."""
    seen, deadline = set(), time.monotonic() + timeout_s
    while len(seen) < num:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(seen)} of {num} frontend processes answered")
        seen.add(json.loads(urllib.request.urlopen(f"{url}/health", timeout=5).read())["frontend"])


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes and their reaped children, from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15])
    return total / CLK_TCK


def descendants(pid: int) -> list[int]:
    """The process and every process below it (frontend children), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def wrk(url: str, body: bytes, connections: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
                     'wrk.headers["Content-Type"] = "application/json"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(round(seconds))}s", "--latency", "-s", script.name, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
            "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
            "errors": int(errors.group(1)) if errors else 0}


def measured(url: str, body: bytes, connections: int, seconds: float, pids: list[int]) -> dict:
    """wrk against `url`, and the CPU the serving processes spent per request meanwhile."""
    before = cpu_seconds(pids)
    result = wrk(url, body, connections, seconds)
    result["cpu_ms_per_request"] = (cpu_seconds(pids) - before) * 1e3 / max(result["requests"], 1)
    return result


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run(args: argparse.Namespace) -> list[dict]:
    server = EmbeddedNats(port=None).start()
    mesh_port, direct_port = free_port(), free_port()
    worker = _spawn("-m", "diffmesh.cli", "--log-level", "WARNING", "worker", "mocker", "--nats-url", server.url,
                    "--speedup-ratio", "inf", "--max-num-seqs", "512")
    front = _spawn("-m", "diffmesh.cli", "--log-level", "WARNING", "frontend", "--nats-url", server.url, "--port",
                   str(mesh_port), "--host", "127.0.0.1", "--router-mode", args.router_mode, "--workers",
                   str(args.processes))
    procs = [worker, front]
    try:
        mesh_url = f"http://127.0.0.1:{mesh_port}"
        _wait_http(f"{mesh_url}/v1/models")
        _wait_frontends(mesh_url, args.processes)
        json_resp = _post(f"{mesh_url}/v1/chat/completions", _body(False))
        sse_resp = _post(f"{mesh_url}/v1/chat/completions", _body(True))
        content_events = sum(1 for e in sse_resp.split(b"\n\n") if b'"content":"' in e)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "json").write_bytes(json_resp)
            Path(tmp, "sse").write_bytes(sse_resp)
            directs = [_spawn("bench/direct_server.py", "--port", str(direct_port), "--json-body", f"{tmp}/json",
                              "--sse-body", f"{tmp}/sse") for _ in range(args.processes)]
            procs += directs
            for direct in directs:
                direct.stdout.readline()
            sides = {"direct": [d.pid for d in directs],
                     "mesh": descendants(front.pid) + [worker.pid, server.process.pid]}
            return _measure(args, mesh_url, f"http://127.0.0.1:{direct_port}", content_events, sides)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        server.stop()


def _measure(args, mesh_url: str, direct_url: str, content_events: int, sides: dict[str, list[int]]) -> list[dict]:
    rows = []
    for name, stream, connections in (("JSON", False, 1), ("JSON", False, 64), ("SSE-50", True, 1), ("SSE-50", True, 64)):
        body = _body(stream)
        wrk(f"{mesh_url}/v1/chat/completions", body, connections, 1)  # warm-up
        wrk(f"{direct_url}/v1/chat/completions", body, connections, 1)
        direct = measured(f"{direct_url}/v1/chat/completions", body, connections, args.duration, sides["direct"])
        mesh = measured(f"{mesh_url}/v1/chat/completions", body, connections, args.duration, sides["mesh"])
        chunks = content_events if stream else 0
        rows.append({"case": name, "concurrency": connections, "processes": args.processes,
                     "direct_rps": direct["rps"], "mesh_rps": mesh["rps"],
                     "ratio": mesh["rps"] / direct["rps"], "direct_chunks_s": direct["rps"] * chunks,
                     "mesh_chunks_s": mesh["rps"] * chunks, "direct_p50_ms": direct["p50_ms"], "mesh_p50_ms": mesh["p50_ms"],
                     "added_p50_ms": mesh["p50_ms"] - direct["p50_ms"], "direct_p99_ms": direct["p99_ms"],
                     "mesh_p99_ms": mesh["p99_ms"], "direct_cpu_ms": direct["cpu_ms_per_request"],
                     "mesh_cpu_ms": mesh["cpu_ms_per_request"], "errors": direct["errors"] + mesh["errors"]})
    return rows


def router_decisions(args: argparse.Namespace) -> dict:
    """bench_router.py's decision benchmark (block 16, tuned GC) in a child process, as one row."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_router.py"), "--json", "--block-size", "16",
                          "--blocks", str(args.router_blocks), "--decisions", str(args.router_decisions)],
                         capture_output=True, text=True, check=True).stdout
    return next(r for r in json.loads(out) if r["gc"] == "tuned")


def print_table(rows: list[dict], router: dict | None) -> None:
    print(f"{rows[0]['processes']} HTTP process(es) on each side (mesh: frontends + 1 mocker + nats-server)\n")
    print("| case | conc | direct req/s | mesh req/s | mesh/direct | direct chunks/s | mesh chunks/s | p50 direct / mesh (ms) "
          "| added p50 (ms) | p99 direct / mesh (ms) | CPU ms/req direct / mesh | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        chunks = (f"{r['direct_chunks_s']:,.0f} | {r['mesh_chunks_s']:,.0f}" if r["direct_chunks_s"] else "– | –")
        print(f"| {r['case']} | {r['concurrency']} | {r['direct_rps']:,.0f} | {r['mesh_rps']:,.0f} | {r['ratio']:.2f} | {chunks} | "
              f"{r['direct_p50_ms']:.2f} / {r['mesh_p50_ms']:.2f} | {r['added_p50_ms']:+.2f} | "
              f"{r['direct_p99_ms']:.2f} / {r['mesh_p99_ms']:.2f} | {r['direct_cpu_ms']:.3f} / {r['mesh_cpu_ms']:.3f} | "
              f"{r['errors']} |")
    if router:
        print(f"\nRouter decision, {router['indexed_blocks']:,} indexed blocks, 4,096-token prompt (256 blocks of 16), "
              f"32 workers: p50 {router['decision_p50_us']:.0f} µs, p99 {router['decision_p99_us']:.0f} µs "
              f"(this thread's CPU: p50 {router['decision_cpu_p50_us']:.0f}, p99 {router['decision_cpu_p99_us']:.0f} µs; "
              f"hash / match / score p50 {router['hash_p50_us']:.0f} / {router['match_p50_us']:.0f} / "
              f"{router['score_p50_us']:.0f} µs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="2-second measurements, 100k router blocks")
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)),
                        help="HTTP processes per side (default: one per core)")
    parser.add_argument("--router-mode", default="kv")
    parser.add_argument("--router-blocks", type=int, default=1_000_000)
    parser.add_argument("--router-decisions", type=int, default=3000)
    parser.add_argument("--no-router", action="store_true", help="skip the router decision benchmark")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.router_blocks, args.router_decisions = 2.0, 100_000, 500
    rows = run(args)
    router = None if args.no_router else router_decisions(args)
    print(json.dumps({"bus": rows, "router": router}, indent=1)) if args.json else print_table(rows, router)


if __name__ == "__main__":
    main()
