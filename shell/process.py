"""The process loop every long-running command uses: uvloop, SIGINT/SIGTERM to a stop event, GC tuning."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable

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
