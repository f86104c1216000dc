"""Bounded waits for a worker's shutdown: in-flight work gets until a deadline (or until NATS is gone), cut work a
short grace to send its terminal message, and every cleanup step a time limit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats

from shell.bus import LinkWatch
from shell.process import is_set_within

log = logging.getLogger("diffmesh.worker")

CUT_GRACE_S = 2.0  # cancelled requests get this long to send their final message
RECONNECT_GRACE_S = 2.0  # a drain waits this long for a lost NATS link to come back before it cuts in-flight work
STEP_TIMEOUT_S = 5.0  # one cleanup step (engine stop, goodbye) at most


async def wait_in_flight(tasks: set[asyncio.Task], link: LinkWatch, deadline: float,
                         reconnect_grace_s: float = RECONNECT_GRACE_S) -> bool:
    """Wait until every task of the live set `tasks` is done or loop time `deadline`; True if all are done.

    While the link is down nobody receives what the tasks send: wait `reconnect_grace_s` for it to come back (a
    cluster fails over in about a second), then give up waiting rather than wait for a broker that is gone."""
    loop = asyncio.get_running_loop()
    while any(not task.done() for task in tasks):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        if not link.is_up:
            if not await is_set_within(link.up, min(reconnect_grace_s, remaining)):
                return False
            continue
        down = asyncio.ensure_future(link.down.wait())
        try:
            await asyncio.wait({*tasks, down}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            down.cancel()
    return True


async def cut(tasks: set[asyncio.Task], grace_s: float = CUT_GRACE_S) -> None:
    """Give already-cancelled work `grace_s` to end on its own (its final message), then cancel the tasks outright."""
    if not tasks:
        return
    _, pending = await asyncio.wait(set(tasks), timeout=grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def bounded(step: Callable[[], Awaitable], what: str, timeout_s: float = STEP_TIMEOUT_S) -> None:
    """Run one cleanup step for at most `timeout_s`; a timeout or a dead connection is logged, not raised."""
    try:
        await asyncio.wait_for(step(), timeout_s)
    except asyncio.TimeoutError:
        log.warning("%s did not finish within %g s; going on", what, timeout_s)
    except (nats.errors.Error, OSError) as exc:
        log.warning("%s failed: %s", what, exc)
