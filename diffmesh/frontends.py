"""Several HTTP frontend processes on one port: this process serves, and N - 1 supervised children serve it too.

The kernel spreads new connections over the listening sockets (SO_REUSEPORT). Each process has its own NATS
connection and embedded router; the routers share predicted load over the router sync subject, and every one of
them follows every worker's heartbeats and KV events. The children are `shell.supervise` children (restarted when
they crash, killed with their parent). Metrics are summed over the processes by prometheus_client's multiprocess
mode, so /metrics on any of them counts every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator

from shell.config import METRICS_MULTIPROC_ENV, FrontendConfig, to_env
from shell.metrics import SupervisorMetrics, disable_multiprocess, enable_multiprocess, forget_process
from shell.process import EXIT_GAVE_UP, EXIT_OK, owned_temp_dir
from shell.supervise import ChildSpec, GiveUp, RestartPolicy, Supervisor

JOIN_WARMUP_S = 1.5  # children listen after one worker heartbeat interval (1 s) and the KV dumps it triggers
STOP_TIMEOUT_S = 10.0
METRICS_DIR_PREFIX = "diffmesh-metrics-"  # then the first process's pid (see owned_temp_dir)


def frontend_specs(config: FrontendConfig, log_args: list[str]) -> list[ChildSpec]:
    """The extra processes of `config.num_processes` (the caller's own is the first), configured through DIFFMESH_*
    variables; call inside `shared_metrics` so that they inherit its directory."""
    child = dataclasses.replace(config, workers=1, join_warmup_s=max(config.join_warmup_s, JOIN_WARMUP_S))
    env = {**os.environ, **to_env(child)}
    command = [sys.executable, "-m", "diffmesh.cli", *log_args, "frontend"]
    return [ChildSpec(f"frontend-{i}", command, env) for i in range(1, config.num_processes)]


@contextlib.contextmanager
def shared_metrics(num_processes: int) -> Iterator[None]:
    """With several processes, prometheus_client's multiprocess mode in a temporary directory, removed afterwards.
    Enter it before this process makes any metric."""
    if num_processes <= 1 or os.environ.get(METRICS_MULTIPROC_ENV):
        yield
        return
    directory = owned_temp_dir(METRICS_DIR_PREFIX)
    enable_multiprocess(directory)
    try:
        yield
    finally:
        disable_multiprocess()
        shutil.rmtree(directory, ignore_errors=True)


def child_supervisor(specs: list[ChildSpec], policy: RestartPolicy, metrics: SupervisorMetrics | None) -> Supervisor:
    """Runs the frontend children (and, for `up`, the workers); an exited frontend's live gauges stop counting."""
    return Supervisor(specs, policy, metrics, on_exit=_forget, start_new_session=True)


def _forget(process: subprocess.Popen) -> None:
    if os.environ.get(METRICS_MULTIPROC_ENV):
        forget_process(process.pid)


async def serve_group(serve_here: Callable[[asyncio.Event], Awaitable[None]], specs: list[ChildSpec],
                      policy: RestartPolicy, stop: asyncio.Event) -> int:
    """`diffmesh frontend --workers N`: this process's frontend (`serve_here(stop)`) and the supervised others, until
    `stop` or until a child is given up on; the exit code. A frontend here that cannot listen raises (StartupError)."""
    if not specs:
        await serve_here(stop)
        return EXIT_OK
    ended = asyncio.Event()  # the signal, or this process's frontend ending on its own
    http = asyncio.create_task(serve_here(ended))
    http.add_done_callback(lambda _: ended.set())
    relay = asyncio.create_task(_relay(stop, ended))
    try:
        failure: GiveUp | None = await child_supervisor(specs, policy, None).run(ended, STOP_TIMEOUT_S)
    finally:
        ended.set()
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await http  # raises what stopped it
    if failure is not None:
        print(f"diffmesh frontend: giving up: {failure.reason}", file=sys.stderr, flush=True)
        return EXIT_GAVE_UP
    return EXIT_OK


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
