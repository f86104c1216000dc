"""A `diffmesh worker` in its own process with its --health-port, for shutdown and broker-loss tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid

import aiohttp

from frontend.bus import Requester
from protocol import subjects
from protocol.kv import tokens_to_bytes
from protocol.work import GenerateRequest, SamplingOptions, is_terminal, work_encoder
from shell.bus import close_bus, connect, free_port, wait_for
from shell.config import NatsConfig

START_TIMEOUT_S = 120.0  # a dLLM worker imports torch and loads its model first


class WorkerProcess:
    """`diffmesh worker KIND ...` on `nats_url`; `health()` reads its endpoint; `close()` kills what is left."""

    def __init__(self, nats_url: str, kind: str, *flags: str, namespace: str | None = None):
        self.namespace = namespace or f"t{uuid.uuid4().hex[:10]}"
        self.health_port = free_port()
        command = [sys.executable, "-m", "diffmesh.cli", "--log-level", "WARNING", "worker", kind, "--nats-url", nats_url,
                   "--namespace", self.namespace, "--health-host", "127.0.0.1", "--health-port", str(self.health_port), *flags]
        self.process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, text=True)

    async def health(self) -> tuple[int, dict] | None:
        """(status, body) of GET /health, None while nothing listens."""
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{self.health_port}/health") as response:
                    return response.status, await response.json()
        except aiohttp.ClientError:
            return None

    async def wait_status(self, status: str, timeout_s: float = START_TIMEOUT_S) -> dict:
        """Poll /health until its status is `status` ("serving", "disconnected", "draining"); returns the body."""
        async def seen():
            assert self.process.poll() is None, f"worker exited {self.process.returncode}: {self.process.stderr.read()}"
            result = await self.health()
            return result[1] if result and result[1]["status"] == status else None

        return await wait_for(seen, timeout_s, 0.05)

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    async def exit_code(self, timeout_s: float) -> int:
        """The exit code, or AssertionError if the worker is still running `timeout_s` from now."""
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"worker still running {timeout_s} s later"
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stderr(self) -> str:
        return self.process.stderr.read() if self.process.poll() is not None else ""

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process.stderr.close()


def long_request(request_id: str, max_tokens: int = 5000) -> bytes:
    tokens = tokens_to_bytes([ord(c) for c in "hello"])
    return work_encoder.encode(GenerateRequest(request_id=request_id, model="mocker", token_ids=tokens, stream=True,
                                               sampling=SamplingOptions(max_tokens=max_tokens)))


@contextlib.asynccontextmanager
async def requester(nats_url: str, namespace: str):
    """A Requester on its own connection (closed without waiting if the server is gone)."""
    nc = await connect(NatsConfig(url=nats_url), name="test")
    req = Requester(nc, namespace)
    await req.start()
    try:
        yield req
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(req.stop(), 5)
        await close_bus(nc, 1.0)


async def send_to(req: Requester, worker_id: str, request_id: str, max_tokens: int = 5000):
    """Send a long mocker request straight to `worker_id`; returns its reply stream after the first reply."""
    subject = subjects.generate_direct(req.ns, "mocker", worker_id)
    stream = await req.send(subject, request_id, long_request(request_id, max_tokens), worker_id, 120)
    first = await stream.next()
    assert not is_terminal(first), first
    return stream


async def until_terminal(stream):
    while True:
        reply = await stream.next()
        if is_terminal(reply):
            return reply


@contextlib.asynccontextmanager
async def busy_worker(nats_url: str, drain_timeout_s: float):
    """A slow mocker worker process (~6 ms per token) generating one 5000-token answer: yields (worker, its stream)."""
    worker = WorkerProcess(nats_url, "mocker", "--speedup-ratio", "1", "--drain-timeout", str(drain_timeout_s))
    try:
        worker_id = (await worker.wait_status("serving"))["worker_id"]
        async with requester(nats_url, worker.namespace) as req:
            yield worker, await send_to(req, worker_id, "r-long")
    finally:
        worker.close()
