"""Bus overhead: the same response served directly by aiohttp vs through frontend -> NATS -> mocker (zero sim time).

Prints req/s, chunks/s, p50/p99 and mesh/direct ratios for JSON at concurrency 1 and 64 and SSE with 50 chunks,
all measured in one run with wrk (Debian package `wrk`) as the load generator.
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


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def wrk(url: str, body: bytes, connections: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
                     'wrk.headers["Content-Type"] = "application/json"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(round(seconds))}s", "--latency", "-s", script.name, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
            "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
            "errors": int(errors.group(1)) if errors else 0}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run(args: argparse.Namespace) -> list[dict]:
    server = EmbeddedNats(port=None).start()
    mesh_port, direct_port = free_port(), free_port()
    procs = [
        _spawn("-m", "diffmesh.cli", "--log-level", "WARNING", "worker", "mocker", "--nats-url", server.url,
               "--speedup-ratio", "inf", "--max-num-seqs", "512"),
        _spawn("-m", "diffmesh.cli", "--log-level", "WARNING", "frontend", "--nats-url", server.url, "--port", str(mesh_port),
               "--host", "127.0.0.1", "--router-mode", args.router_mode),
    ]
    try:
        mesh_url = f"http://127.0.0.1:{mesh_port}"
        _wait_http(f"{mesh_url}/v1/models")
        json_resp = _post(f"{mesh_url}/v1/chat/completions", _body(False))
        sse_resp = _post(f"{mesh_url}/v1/chat/completions", _body(True))
        content_events = sum(1 for e in sse_resp.split(b"\n\n") if b'"content":"' in e)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "json").write_bytes(json_resp)
            Path(tmp, "sse").write_bytes(sse_resp)
            direct = _spawn("bench/direct_server.py", "--port", str(direct_port), "--json-body", f"{tmp}/json", "--sse-body", f"{tmp}/sse")
            procs.append(direct)
            direct.stdout.readline()
            return _measure(args, mesh_url, f"http://127.0.0.1:{direct_port}", content_events)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        server.stop()


def _measure(args, mesh_url: str, direct_url: str, content_events: int) -> list[dict]:
    rows = []
    for name, stream, connections in (("JSON", False, 1), ("JSON", False, 64), ("SSE-50", True, 1), ("SSE-50", True, 64)):
        body = _body(stream)
        wrk(f"{mesh_url}/v1/chat/completions", body, connections, 1)  # warm-up
        wrk(f"{direct_url}/v1/chat/completions", body, connections, 1)
        direct = wrk(f"{direct_url}/v1/chat/completions", body, connections, args.duration)
        mesh = wrk(f"{mesh_url}/v1/chat/completions", body, connections, args.duration)
        chunks = content_events if stream else 0
        rows.append({"case": name, "concurrency": connections, "direct_rps": direct["rps"], "mesh_rps": mesh["rps"],
                     "ratio": mesh["rps"] / direct["rps"], "direct_chunks_s": direct["rps"] * chunks,
                     "mesh_chunks_s": mesh["rps"] * chunks, "direct_p50_ms": direct["p50_ms"], "mesh_p50_ms": mesh["p50_ms"],
                     "added_p50_ms": mesh["p50_ms"] - direct["p50_ms"], "direct_p99_ms": direct["p99_ms"],
                     "mesh_p99_ms": mesh["p99_ms"], "errors": direct["errors"] + mesh["errors"]})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| case | conc | direct req/s | mesh req/s | mesh/direct | direct chunks/s | mesh chunks/s | p50 direct / mesh (ms) | added p50 (ms) | p99 direct / mesh (ms) | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        chunks = (f"{r['direct_chunks_s']:,.0f} | {r['mesh_chunks_s']:,.0f}" if r["direct_chunks_s"] else "– | –")
        print(f"| {r['case']} | {r['concurrency']} | {r['direct_rps']:,.0f} | {r['mesh_rps']:,.0f} | {r['ratio']:.2f} | {chunks} | "
              f"{r['direct_p50_ms']:.2f} / {r['mesh_p50_ms']:.2f} | {r['added_p50_ms']:+.2f} | "
              f"{r['direct_p99_ms']:.2f} / {r['mesh_p99_ms']:.2f} | {r['errors']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="2-second measurements")
    parser.add_argument("--router-mode", default="kv")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    if args.quick:
        args.duration = 2.0
    rows = run(args)
    print(json.dumps(rows, indent=1)) if args.json else print_table(rows)


if __name__ == "__main__":
    main()
