"""Several HTTP frontend processes on one port: this process serves, and N - 1 children serve the same port too.

The kernel spreads new connections over the listening sockets (SO_REUSEPORT). Each process has its own NATS
connection and embedded router; the routers share predicted load over the router sync subject, and every one of
them follows every worker's heartbeats and KV events. Metrics are summed over the processes by prometheus_client's
multiprocess mode, so /metrics on any of them counts every request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from shell.config import METRICS_MULTIPROC_ENV, FrontendConfig, to_env
from shell.process import spawn_child

log = logging.getLogger("diffmesh.frontends")
MIN_UPTIME_S = 5.0  # a child that dies sooner (port taken, bad config) stops the group instead of restarting
WATCH_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 10.0
JOIN_WARMUP_S = 1.5  # children listen after one worker heartbeat interval (1 s) and the KV dumps it triggers


class FrontendGroup:
    """Starts, restarts and stops the extra frontend processes of `diffmesh frontend --workers N` and `up`.

    Enter it before this process imports prometheus_client (the multiprocess mode is chosen at import).
    """

    def __init__(self, config: FrontendConfig, log_args: list[str]):
        self.num_children = config.num_processes - 1
        self._command = [sys.executable, "-m", "diffmesh.cli", *log_args, "frontend"]
        child = dataclasses.replace(config, workers=1, join_warmup_s=max(config.join_warmup_s, JOIN_WARMUP_S))
        self._env = {**os.environ, **to_env(child)}
        self.children: list[subprocess.Popen] = []
        self._started: dict[int, float] = {}  # pid -> monotonic start
        self._metrics_dir: str | None = None
        self.failed = False

    def __enter__(self) -> FrontendGroup:
        if self.num_children > 0:
            if METRICS_MULTIPROC_ENV not in os.environ:
                if "prometheus_client" in sys.modules:
                    log.warning("prometheus_client was imported before the frontend group: /metrics counts one process")
                self._metrics_dir = tempfile.mkdtemp(prefix="diffmesh-metrics-")
                os.environ[METRICS_MULTIPROC_ENV] = self._env[METRICS_MULTIPROC_ENV] = self._metrics_dir
            self.children = [self._spawn() for _ in range(self.num_children)]
        return self

    def __exit__(self, *exc) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in self.children:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            os.environ.pop(METRICS_MULTIPROC_ENV, None)

    def _spawn(self) -> subprocess.Popen:
        child = spawn_child(self._command, env=self._env)
        self._started[child.pid] = time.monotonic()
        return child

    async def serve(self, serve_here: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> None:
        """Run this process's frontend (`serve_here(stop)`) while restarting children that die, until `stop`."""
        watcher = asyncio.create_task(self._watch(stop))
        try:
            await serve_here(stop)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(WATCH_INTERVAL_S)
            for i, child in enumerate(self.children):
                if child.poll() is not None and not stop.is_set():
                    self._replace(i, child, stop)

    def _replace(self, i: int, child: subprocess.Popen, stop: asyncio.Event) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(child.pid)  # its live gauges no longer count
        uptime = time.monotonic() - self._started.pop(child.pid)
        if uptime < MIN_UPTIME_S:
            log.error("frontend process %d exited with %s after %.1f s; stopping", child.pid, child.returncode, uptime)
            self.failed = True
            stop.set()
            return
        log.warning("frontend process %d exited with %s; starting another", child.pid, child.returncode)
        self.children[i] = self._spawn()
