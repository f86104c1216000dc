"""Test harness: real nats-server, in-process frontend and workers on real sockets, subprocess workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field

import aiohttp

from shell.bus import connect, free_port, wait_for
from shell.config import FrontendConfig, NatsConfig
from frontend.app import run_frontend
from workers.mocker.engine import MockerConfig
from workers.mocker.worker import MockerEngine
from workers.runtime import RuntimeConfig, WorkerRuntime, serve

FAST_MOCKER = MockerConfig(speedup_ratio=float("inf"))


@dataclass
class InProcessWorker:
    engine: object
    stop: asyncio.Event
    task: asyncio.Task
    runtime: WorkerRuntime | None = None

    @property
    def worker_id(self) -> str:
        return self.runtime.worker_id


@dataclass
class Mesh:
    """One namespace on the shared test NATS server: a frontend and its workers."""

    nats_url: str
    namespace: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    port: int = 0
    workers: list[InProcessWorker] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    _frontend_stop: asyncio.Event | None = None
    _frontend_task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start_frontend(self, nats: NatsConfig | None = None, **overrides) -> None:
        self.port = free_port()
        config = FrontendConfig(nats=nats or NatsConfig(url=self.nats_url), namespace=self.namespace, host="127.0.0.1",
                                port=self.port, **overrides)
        self._frontend_stop, ready = asyncio.Event(), asyncio.Event()
        self._frontend_task = asyncio.create_task(run_frontend(config, ready=ready, stop=self._frontend_stop))
        await asyncio.wait([self._frontend_task, asyncio.ensure_future(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        if self._frontend_task.done():
            self._frontend_task.result()  # raises what went wrong at startup

    async def add_worker(self, engine, heartbeat_s: float = 0.2, nats: NatsConfig | None = None, **runtime) -> InProcessWorker:
        """Serve `engine` in this process (real NATS) until the mesh stops."""
        stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
        config = RuntimeConfig(nats=nats or NatsConfig(url=self.nats_url), namespace=self.namespace, heartbeat_s=heartbeat_s,
                               **runtime)
        task = asyncio.create_task(serve(engine, config, ready=ready, stop=stop))
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not ready.done():
            task.result()  # raises what went wrong at startup
        worker = InProcessWorker(engine, stop, task, ready.result())
        self.workers.append(worker)
        return worker

    async def add_mocker(self, model: str = "mocker", config: MockerConfig = FAST_MOCKER, **runtime) -> InProcessWorker:
        return await self.add_worker(MockerEngine(model, config), **runtime)

    def spawn_worker(self, *args: str) -> subprocess.Popen:
        """A worker in its own process (for kill -9 tests)."""
        command = [sys.executable, "-m", "diffmesh.cli", "--log-level", "WARNING", "worker", *args,
                   "--nats-url", self.nats_url, "--namespace", self.namespace]
        process = subprocess.Popen(command, start_new_session=True)
        self.processes.append(process)
        return process

    async def wait_models(self, model: str, num_workers: int, timeout_s: float = 30.0) -> None:
        async def ready():  # /health lists live workers per model and stays public when API keys are on
            async with aiohttp.ClientSession() as session, session.get(f"{self.url}/health") as response:
                models = (await response.json())["models"]
            return len(models.get(model, [])) >= num_workers

        await wait_for(ready, timeout_s, 0.05)

    async def close(self) -> None:
        for worker in self.workers:
            worker.stop.set()
        await asyncio.gather(*(w.task for w in self.workers), return_exceptions=True)
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._frontend_stop is not None:
            self._frontend_stop.set()
            await self._frontend_task


@contextlib.asynccontextmanager
async def nats_client(url: str):
    nc = await connect(NatsConfig(url=url), name="test")
    try:
        yield nc
    finally:
        await nc.close()
