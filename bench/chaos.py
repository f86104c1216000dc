"""Chaos run: bounded load against a mesh of mocker workers while a worker is killed -9 every few seconds.

One frontend, one NATS server and `--workers` mocker processes. A killer picks a random worker every `--kill-every`
seconds, SIGKILLs its process group and starts a replacement (a new worker id, as a restarted pod would get); no
kill comes before the frontend has seen the last one and its replacement serves.
Clients send `--requests` streamed chat completions, `--concurrency` at a time, from a few prompts whose answers a
clean pass recorded first (the mocker is deterministic, so a migrated stream must give exactly the same text).

Prints sent, completed (the clean answer, whole), migrated (the frontend's migration counter), failed (an error, or
a wrong answer) and hung (no end within `--hang-after` s), for a baseline without kills and for the chaos run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shell.bus import EmbeddedNats, free_port  # noqa: E402
from shell.process import spawn  # noqa: E402

PROMPTS = [f"chaos prompt {i}: tell me about the weather on day {i}" for i in range(8)]


def _spawn(*args: str, log=None) -> subprocess.Popen:
    """A diffmesh process in its own group (killed -9 as a whole) that also dies with this script; its log goes to
    the open file `log` at INFO, or nowhere."""
    command = [sys.executable, "-m", "diffmesh.cli", "--log-level", "INFO" if log else "ERROR", *args]
    return spawn(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL, start_new_session=True)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@dataclass
class Mesh:
    nats: EmbeddedNats
    url: str
    worker_args: list[str]
    frontend: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    generation: int = 0

    def start_worker(self) -> str:
        self.generation += 1
        worker_id = f"chaos-{self.generation}"
        self.workers[worker_id] = _spawn("worker", "mocker", "--nats-url", self.nats.url, "--worker-id", worker_id,
                                         *self.worker_args)
        return worker_id

    def stop(self) -> None:
        for process in self.workers.values():
            _kill(process)
        if self.frontend is not None:  # SIGTERM: it removes its metrics directory (a kill -9 would leave it)
            self.frontend.terminate()
            try:
                self.frontend.wait(30)
            except subprocess.TimeoutExpired:
                _kill(self.frontend)
        self.nats.stop()


def start_mesh(args: argparse.Namespace) -> Mesh:
    nats = EmbeddedNats(port=None).start()
    port = free_port()
    mesh = Mesh(nats, f"http://127.0.0.1:{port}", ["--speedup-ratio", str(args.speedup), "--heartbeat", str(args.heartbeat)])
    log = open(args.frontend_log, "ab") if args.frontend_log else None  # noqa: SIM115 (the child holds it)
    mesh.frontend = _spawn("frontend", "--nats-url", nats.url, "--host", "127.0.0.1", "--port", str(port),
                           "--stall-timeout", str(args.stall_timeout), log=log)
    if log:
        log.close()
    for _ in range(args.workers):
        mesh.start_worker()
    return mesh


async def wait_workers(session: aiohttp.ClientSession, mesh: Mesh, count: int = 0, worker_id: str | None = None,
                       gone: str | None = None, timeout_s: float = 120) -> None:
    """Until the frontend lists `count` mocker workers (`worker_id` among them, `gone` no longer: its loss seen)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{mesh.url}/health") as response:
                live = (await response.json())["models"].get("mocker", [])
            if len(live) >= count and (worker_id is None or worker_id in live) and gone not in live:
                return
        except (aiohttp.ClientError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"mocker workers did not come up ({count} wanted, {worker_id or 'any id'})")


async def stream_chat(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int) -> str:
    """The streamed answer's text; raises RuntimeError on an error status or in-band error, or a stream cut short."""
    body = {"model": "mocker", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": True}
    text, done = [], False
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
        async for line in response.content:
            if line.strip() == b"data: [DONE]":
                done = True
            elif line.startswith(b"data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(f"in-band error: {event['error']['code']}: {event['error']['message'][:120]}")
                if event["choices"]:
                    text.append(event["choices"][0]["delta"].get("content") or "")
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    return "".join(text)


@dataclass
class Tally:
    sent: int = 0
    completed: int = 0
    wrong: int = 0
    failed: int = 0
    hung: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ended(self) -> int:
        return self.completed + self.wrong + self.failed + self.hung


async def drive(session, mesh: Mesh, expected: dict[str, str], args: argparse.Namespace, num_requests: int,
                tally: Tally) -> Tally:
    queue = list(range(num_requests))

    async def client() -> None:
        while queue:
            i = queue.pop()
            prompt = PROMPTS[i % len(PROMPTS)]
            tally.sent += 1
            try:
                text = await asyncio.wait_for(stream_chat(session, mesh.url, prompt, args.max_tokens), args.hang_after)
            except asyncio.TimeoutError:
                tally.hung += 1
                continue
            except (RuntimeError, aiohttp.ClientError) as exc:
                tally.failed += 1
                key = str(exc)[:80]
                tally.errors[key] = tally.errors.get(key, 0) + 1
                continue
            if text == expected[prompt]:
                tally.completed += 1
            else:
                tally.wrong += 1

    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    return tally


async def killer(session, mesh: Mesh, due, stop: asyncio.Event, rng: random.Random, kills: list[str]) -> None:
    """Kill -9 a random worker and start a new one whenever `await due()` returns, until `stop`; the next kill waits
    until the frontend has seen the loss and the replacement serves (one worker down at a time, as a pod restart
    gives), so a kill rate set by request counts cannot outrun heartbeats and start-up."""
    while True:
        waiting = asyncio.ensure_future(due())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        stopped.cancel()
        if stop.is_set():
            return
        victim = rng.choice(sorted(mesh.workers))
        _kill(mesh.workers.pop(victim))
        kills.append(victim)
        await wait_workers(session, mesh, worker_id=mesh.start_worker(), gone=victim)


def every_seconds(seconds: float):
    """Due every `seconds` on a fixed schedule (a recovery that takes part of the interval does not stretch it)."""
    next_at = time.monotonic()

    async def due() -> None:
        nonlocal next_at
        next_at = max(next_at + seconds, time.monotonic())
        await asyncio.sleep(next_at - time.monotonic())

    return due


def every_requests(tally: Tally, count: int):
    """Due once `count` more requests have ended than when it was asked (the killer asks after each recovery): a
    time-free trigger for short CI runs that leaves the mesh a stretch of work between kills."""

    async def due() -> None:
        mark = tally.ended + count
        while tally.ended < mark:
            await asyncio.sleep(0.01)

    return due


async def migrations(session, mesh: Mesh) -> dict[str, float]:
    async with session.get(f"{mesh.url}/metrics") as response:
        text = await response.text()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("dynamo_frontend_model_migration_total{"):
            kind = line.split('migration_type="', 1)[1].split('"', 1)[0]
            counts[kind] = counts.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


async def run(args: argparse.Namespace) -> list[dict]:
    mesh = start_mesh(args)
    rng = random.Random(args.seed)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            await wait_workers(session, mesh, args.workers)
            expected = {p: await stream_chat(session, mesh.url, p, args.max_tokens) for p in PROMPTS}
            rows = []
            chaos_name = (f"kill -9 every {args.kill_every_requests} requests" if args.kill_every_requests
                          else f"kill -9 every {args.kill_every:g} s")
            for name, num, kills_on in (("no kills (baseline)", args.baseline_requests, False),
                                        (chaos_name, args.requests, True)):
                if not num:
                    continue
                await wait_workers(session, mesh, args.workers)
                before = await migrations(session, mesh)
                stop, kills, tally = asyncio.Event(), [], Tally()
                due = (every_requests(tally, args.kill_every_requests) if args.kill_every_requests
                       else every_seconds(args.kill_every))
                chaos = asyncio.ensure_future(killer(session, mesh, due, stop, rng, kills)) if kills_on else None
                started = time.monotonic()
                await drive(session, mesh, expected, args, num, tally)
                elapsed = time.monotonic() - started
                stop.set()
                if chaos is not None:
                    await chaos
                after = await migrations(session, mesh)
                moved = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
                rows.append(_row(name, tally, moved, len(kills), elapsed))
            return rows
    finally:
        mesh.stop()


def _row(name: str, t: Tally, moved: dict[str, float], kills: int, elapsed: float) -> dict:
    return {"run": name, "sent": t.sent, "completed": t.completed, "completed_pct": 100.0 * t.completed / max(t.sent, 1),
            "migrated": int(sum(moved.values())), "mid_stream": int(moved.get("ongoing_request", 0)),
            "failed": t.failed + t.wrong, "wrong": t.wrong, "hung": t.hung, "kills": kills, "seconds": round(elapsed, 1),
            "req_per_s": round(t.sent / elapsed, 1), "errors": t.errors}


def print_table(rows: list[dict]) -> None:
    print("| run | sent | completed | completed % | migrated (mid-stream) | failed | hung | kills | req/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['sent']:,} | {r['completed']:,} | {r['completed_pct']:.2f} | {r['migrated']} "
              f"({r['mid_stream']}) | {r['failed']} | {r['hung']} | {r['kills']} | {r['req_per_s']} |")
    for r in rows:
        for error, count in r["errors"].items():
            print(f"- {r['run']}: {count} x {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1200, help="requests in the chaos run")
    parser.add_argument("--baseline-requests", type=int, default=300, help="requests in the run without kills (0 = skip)")
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--kill-every-requests", type=int, default=0,
                        help="kill after each N requests ended since the last recovery instead")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--speedup", type=float, default=1.0, help="mocker --speedup-ratio")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="worker heartbeat interval (a kill shows after 3)")
    parser.add_argument("--stall-timeout", type=float, default=15.0, help="frontend --stall-timeout")
    parser.add_argument("--hang-after", type=float, default=120.0, help="a request not done by then counts as hung")
    parser.add_argument("--seed", type=int, default=0, help="which workers get killed")
    parser.add_argument("--frontend-log", help="append the frontend's INFO log (migrations, with reasons) to this file")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    print(json.dumps(rows)) if args.json else print_table(rows)


if __name__ == "__main__":
    main()
