"""The process loop every long-running command uses: uvloop, SIGINT/SIGTERM to a stop event (a second one exits at
once), GC tuning, exit codes, and children that die with their parent (`spawn`)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("shell.process")

GC_THRESHOLDS = (100_000, 50, 1000)  # router indexes are millions of small containers: collect young objects less often

# Exit codes of every diffmesh command (the README's table). 128 + N: killed by signal N, or forced by a second one.
EXIT_OK = 0  # stopped as asked; every in-flight request finished
EXIT_CRASH = 1  # an unexpected error (traceback in the log)
EXIT_STARTUP = 2  # bad flag or variable, bad model path, port in use: one line on stderr
EXIT_BROKER_LOST = 3  # NATS unreachable for longer than --nats-give-up-after
EXIT_DRAIN_TIMEOUT = 4  # in-flight requests were cut at shutdown (--drain-timeout passed, or NATS was gone)
EXIT_GAVE_UP = 5  # `up`: a supervised child failed to start or crashed too often
EXIT_MEANINGS = {EXIT_OK: "stopped", EXIT_CRASH: "crashed", EXIT_STARTUP: "startup failure",
                 EXIT_BROKER_LOST: "NATS unreachable", EXIT_DRAIN_TIMEOUT: "drain cut short", EXIT_GAVE_UP: "gave up"}

PARENT_PID_ENV = "DIFFMESH_PARENT_PID"  # set by `spawn`: Python children watch this pid (the fallback to prctl)
PARENT_POLL_S = 0.5
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StartupError(Exception):
    """A process could not start (port in use, model missing): reported as one line, exit code EXIT_STARTUP."""


def cannot_listen(flag: str, host: str, port: int, exc: OSError) -> StartupError:
    """'--port 8000: cannot listen on 0.0.0.0:8000: Address already in use'."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return StartupError(f"{flag} {port}: cannot listen on {host}:{port}: {reason}")


def tune_gc() -> None:
    """Collect the young generation less often (processes that hold a router index)."""
    gc.set_threshold(*GC_THRESHOLDS)


def run(coro: Awaitable):
    """Run `coro` to completion on uvloop; returns its result."""
    import uvloop

    return uvloop.run(coro)


def install_stop_handlers(stop: asyncio.Event, hard_exit_after_s: float | None = None) -> bool:
    """SIGINT/SIGTERM set `stop`; a second one exits at once (128 + signal). After the first, a watchdog thread
    exits with EXIT_DRAIN_TIMEOUT if the process is still alive `hard_exit_after_s` later. False off the main thread."""
    loop = asyncio.get_running_loop()
    watchdog: list[threading.Timer] = []

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            _exit_now(128 + signum)
        stop.set()
        if hard_exit_after_s is not None and not watchdog:
            watchdog.append(threading.Timer(hard_exit_after_s, _exit_now, (EXIT_DRAIN_TIMEOUT,)))
            watchdog[0].daemon = True
            watchdog[0].start()

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
    except (NotImplementedError, RuntimeError, ValueError):
        return False  # not the main thread
    return True


def _exit_now(code: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)


async def is_set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `event`; whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except asyncio.TimeoutError:
        return False
    return True


async def until_signal(start: Callable[[asyncio.Event], Awaitable], hard_exit_after_s: float | None = None):
    """Await `start(stop)`, where `stop` is set by SIGINT or SIGTERM (a second one exits at once); returns its result."""
    stop = asyncio.Event()
    install_stop_handlers(stop, hard_exit_after_s)
    return await start(stop)


def run_until_signal(start: Callable[[asyncio.Event], Awaitable], hard_exit_after_s: float | None = None):
    """`run(until_signal(start))`: the main loop of `diffmesh up`, `frontend` and `router`."""
    return run(until_signal(start, hard_exit_after_s))


# --- children that die with their parent -------------------------------------------------------------


def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return None  # not Linux: Python children still watch PARENT_PID_ENV


PRCTL = _load_prctl() if sys.platform.startswith("linux") else None


def spawn(command: list[str], *, env: dict[str, str] | None = None, death_signal: int = signal.SIGKILL,
          **popen_kwargs) -> subprocess.Popen:
    """Start `command` so that it dies with this process, however this process dies.

    Linux: PR_SET_PDEATHSIG(`death_signal`) set in the child before exec (works for any binary, e.g. nats-server);
    `death_signal=0` skips it. Everywhere: the child's env carries PARENT_PID_ENV, which `watch_parent_from_env`
    (run by the `diffmesh` CLI) polls. The death signal fires when the *thread* that forked exits, so this must be
    called from the main thread (an event loop's thread), never from an executor.
    """
    if death_signal and threading.current_thread() is not threading.main_thread():
        raise RuntimeError("spawn() from a non-main thread: the child would die with that thread")
    parent = os.getpid()
    env = {**(os.environ if env is None else env), PARENT_PID_ENV: str(parent)}
    preexec = _die_with(parent, death_signal) if death_signal and PRCTL is not None else None
    return subprocess.Popen(command, env=env, preexec_fn=preexec, **popen_kwargs)


def _die_with(parent: int, death_signal: int) -> Callable[[], None]:
    prctl = PRCTL  # resolved before fork: the child only makes the call

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os.kill(os.getpid(), death_signal)

    return in_child


def is_orphaned(expected_parent: int, current_parent: int) -> bool:
    """True when this process was reparented (to init or a subreaper): the process that spawned it is gone."""
    return current_parent != expected_parent


def watch_parent_from_env(poll_s: float = PARENT_POLL_S) -> threading.Thread | None:
    """If `spawn` started this process, kill it (SIGKILL, as PR_SET_PDEATHSIG would) once its parent is gone."""
    raw = os.environ.pop(PARENT_PID_ENV, "")  # popped: our own children get their own value from spawn()
    if not raw.isdigit():
        return None
    parent = int(raw)

    def watch() -> None:
        while not is_orphaned(parent, os.getppid()):
            time.sleep(poll_s)
        log.warning("parent process %d is gone; exiting", parent)
        _exit_now(128 + signal.SIGKILL)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


async def wait_exit(process: subprocess.Popen, poll_s: float = 0.05) -> int:
    """Await a child's exit without blocking the loop (a pidfd on Linux, else polling); returns its returncode."""
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    while process.poll() is None:
        await asyncio.sleep(poll_s)
    return process.returncode


def describe_exit(returncode: int) -> str:
    """'exit 3 (NATS unreachable)', 'killed by SIGKILL': what a child's returncode means."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    meaning = EXIT_MEANINGS.get(returncode)
    if meaning is None and returncode > 128:
        try:
            meaning = f"{signal.Signals(returncode - 128).name}"
        except ValueError:
            pass
    return f"exit {returncode} ({meaning})" if meaning else f"exit {returncode}"


def owned_temp_dir(prefix: str) -> str:
    """A new temporary directory named after this process (`{prefix}{pid}-...`), for the caller to remove. First the
    directories of that prefix whose process is gone are removed: a SIGKILL skips its own cleanup."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{prefix}*-*")):
        pid = os.path.basename(path)[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not is_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
