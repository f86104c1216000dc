"""Locust at several user counts, one table: users, req/s, TTFT p50/p99, ITL p50/p99, failures.

  python deploy/locust/sweep.py --host http://127.0.0.1:8000 --users 4,16,64 --run-time 45s
  python deploy/locust/sweep.py --start-mesh --mockers 2          # runs `diffmesh up` (mockers only) itself
  python deploy/locust/sweep.py --start-mesh --quick --json       # 2 short steps, JSON as well
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="frontend URL (omit with --start-mesh)")
    parser.add_argument("--start-mesh", action="store_true", help="start `diffmesh up --dllm 0 --image 0` on free ports")
    parser.add_argument("--mockers", type=int, default=2, help="mocker workers for --start-mesh")
    parser.add_argument("--users", default="4,16,64", help="comma-separated user counts, one run each")
    parser.add_argument("--run-time", default="45s", help="locust --run-time per step")
    parser.add_argument("--mix", default="text")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="users 4,16 for 10s each")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.run_time = "4,16", "10s"
    if bool(args.host) == args.start_mesh:
        parser.error("give exactly one of --host and --start-mesh")
    return args


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def started_mesh(num_mockers: int):
    """`diffmesh up` with mockers only, until every mocker is live; SIGINT at the end."""
    port = free_port()
    command = [str(BIN / "diffmesh"), "--log-format", "json", "--log-level", "WARNING", "up", "--host", "127.0.0.1",
               "--port", str(port), "--nats-port", str(free_port()), "--mocker", str(num_mockers), "--dllm", "0", "--demo-dllm", "0",
               "--image", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while live_workers(url) < num_mockers:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("diffmesh up did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def live_workers(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
            return sum(m["workers"] for m in json.load(response)["data"])
    except OSError:
        return -1


def run_step(host: str, users: int, args: argparse.Namespace, out: Path) -> dict:
    summary_path = out / f"summary-{users}.json"
    command = [str(BIN / "locust"), "-f", str(HERE / "locustfile.py"), "--headless", "--only-summary", "--host", host,
               "-u", str(users), "-r", str(users), "-t", args.run_time, "--stop-timeout", "30", "--mix", args.mix,
               "--max-tokens", str(args.max_tokens), "--trace-block-words", "64", "--trace-max-output",
               str(args.max_tokens), "--summary-json", str(summary_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=out)
    if not summary_path.exists():
        raise RuntimeError(f"locust wrote no summary (exit {result.returncode}):\n{result.stderr[-3000:]}")
    summary = json.loads(summary_path.read_text())
    return {"users": users, "rps": summary["rps"], "requests": summary["requests"], "failures": summary["failures"],
            "ttft_p50_ms": summary["TTFT"]["p50"], "ttft_p99_ms": summary["TTFT"]["p99"],
            "itl_p50_ms": summary["ITL"]["p50"], "itl_p99_ms": summary["ITL"]["p99"]}


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nlocust sweep: mix={args.mix}, max_tokens={args.max_tokens}, {args.run_time} per step, closed loop (no think time)")
    print("| users | req/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) | requests | failures |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['users']} | {r['rps']:.1f} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | {r['itl_p50_ms']} | "
              f"{r['itl_p99_ms']} | {r['requests']} | {r['failures']} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    user_counts = [int(u) for u in args.users.split(",")]
    with tempfile.TemporaryDirectory(prefix="diffmesh-sweep-") as tmp:
        if args.start_mesh:
            with started_mesh(args.mockers) as host:
                rows = [run_step(host, users, args, Path(tmp)) for users in user_counts]
        else:
            rows = [run_step(args.host, users, args, Path(tmp)) for users in user_counts]
    print_table(rows, args)
    if args.json:
        print(json.dumps(rows))
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
