"""The process loop every long-running command uses: uvloop, SIGINT/SIGTERM to a stop event, GC tuning, and child
processes that die with their parent."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence

GC_THRESHOLDS = (100_000, 50, 1000)  # router indexes are millions of small containers: collect young objects less often


def tune_gc() -> None:
    """Collect the young generation less often (processes that hold a router index)."""
    gc.set_threshold(*GC_THRESHOLDS)


def run(coro: Awaitable[None]) -> None:
    """Run `coro` to completion on uvloop."""
    import uvloop

    uvloop.run(coro)


async def until_signal(start: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Await `start(stop)`, where `stop` is set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await start(stop)


def run_until_signal(start: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """`run(until_signal(start))`: the main loop of `diffmesh frontend`, `router` and `worker`."""
    run(until_signal(start))


PARENT_PID_ENV = "DIFFMESH_PARENT_PID"  # set by spawn_child: the child asks the kernel to end it with this parent
_PR_SET_PDEATHSIG = 1


def spawn_child(command: Sequence[str], env: Mapping[str, str] | None = None, **popen) -> subprocess.Popen:
    """Start a diffmesh child process that exits when this process dies, however it dies.

    The child calls `die_with_parent()` first thing (the CLI does): PR_SET_PDEATHSIG is set in the child itself rather
    than in a `preexec_fn`, which is unsafe in a process that has threads.
    """
    child_env = {**(os.environ if env is None else env), PARENT_PID_ENV: str(os.getpid())}
    return subprocess.Popen(list(command), env=child_env, **popen)


def die_with_parent() -> None:
    """If spawned by `spawn_child`: SIGKILL this process when its parent exits (Linux prctl), or exit now if the parent
    is already gone. Elsewhere, and for processes started by hand, nothing."""
    parent = os.environ.pop(PARENT_PID_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):  # it died before prctl took effect
        os._exit(1)
