"""Keep child processes running: restart a crashed one after a capped exponential backoff, give up on one that
crashes too often (or cannot start), and stop them all within a bound.

`CrashHistory` is the pure policy (plain floats and exit codes); `Supervisor` runs real processes through
`shell.process.spawn`, so every child dies with its parent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from shell.config import ConfigError
from shell.metrics import SupervisorMetrics
from shell.process import EXIT_STARTUP, describe_exit, is_set_within, spawn, wait_exit

log = logging.getLogger("shell.supervise")

MAX_REASON_CHARS = 300
STDERR_LINE_LIMIT = 1 << 20
FATAL_EXIT_CODES = (EXIT_STARTUP,)  # a bad flag, model path or port does not fix itself: give up at once


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart (env DIFFMESH_RESTART_BACKOFF, _MAX_BACKOFF, _MAX_CRASHES, _WINDOW; `shell.flags.add_restart_flags`)."""

    backoff_s: float = field(default=1.0, metadata={"env": "BACKOFF"})  # before the first restart; doubles per crash
    max_backoff_s: float = field(default=30.0, metadata={"env": "MAX_BACKOFF"})
    max_crashes: int = 5  # this many crashes inside window_s: give up on the child
    window_s: float = field(default=60.0, metadata={"env": "WINDOW"})

    def __post_init__(self) -> None:
        for name in ("backoff_s", "max_backoff_s", "window_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} ({POLICY_SOURCES[name]}) must be > 0")
        if self.max_crashes < 1:
            raise ConfigError(f"max_crashes={self.max_crashes} ({POLICY_SOURCES['max_crashes']}) must be >= 1")


POLICY_SOURCES = {"backoff_s": "--restart-backoff, DIFFMESH_RESTART_BACKOFF",
                  "max_backoff_s": "--restart-max-backoff, DIFFMESH_RESTART_MAX_BACKOFF",
                  "max_crashes": "--max-crashes, DIFFMESH_RESTART_MAX_CRASHES",
                  "window_s": "--crash-window, DIFFMESH_RESTART_WINDOW"}


class CrashHistory:
    """One child's crashes inside the policy's window."""

    def __init__(self, policy: RestartPolicy):
        self.policy = policy
        self.times: deque[float] = deque()

    def record(self, now: float, returncode: int) -> float | None:
        """Note a crash at `now` (seconds, any monotonic clock): the delay before the restart, or None to give up."""
        self.times.append(now)
        while self.times[0] <= now - self.policy.window_s:
            self.times.popleft()
        if returncode in FATAL_EXIT_CODES or len(self.times) >= self.policy.max_crashes:
            return None
        return min(self.policy.max_backoff_s, self.policy.backoff_s * 2 ** (len(self.times) - 1))


@dataclass(frozen=True)
class ChildSpec:
    name: str  # in logs, the restart metric and the give-up line: "mocker-0"
    command: list[str]
    env: dict[str, str] | None = None  # None: this process's environment


@dataclass(frozen=True)
class GiveUp:
    name: str
    returncode: int
    reason: str  # one line: which child, what happened, the last thing it said


def last_words(line: str) -> str:
    """The message in a child's last stderr line (a JSON log record's `msg`, or the text without `diffmesh: `)."""
    line = line.strip()
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if isinstance(record, dict) and "msg" in record:
        line = str(record["msg"]) + (f": {record['exc'].strip().splitlines()[-1]}" if record.get("exc") else "")
    line = line.removeprefix("diffmesh: ")
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def give_up_reason(name: str, returncode: int, num_crashes: int, policy: RestartPolicy, said: str) -> str:
    what = describe_exit(returncode)
    if returncode in FATAL_EXIT_CODES:
        head = f"{name} failed to start, {what}"
    else:
        head = f"{name} crashed {num_crashes} times in {policy.window_s:g} s (last: {what})"
    return f"{head}: {said}" if said else head


class Supervisor:
    """Runs each ChildSpec, restarting it when it exits on its own, until stopped or one child is given up on."""

    def __init__(self, specs: list[ChildSpec], policy: RestartPolicy | None = None,
                 metrics: SupervisorMetrics | None = None, **popen_kwargs):
        self.specs = specs
        self.policy = policy or RestartPolicy()
        self.metrics = metrics
        self.popen_kwargs = popen_kwargs  # e.g. start_new_session=True
        self.processes: dict[str, subprocess.Popen] = {}  # the current process of each child
        self.last_lines: dict[str, str] = {}  # the last stderr line of each child
        self.num_restarts: dict[str, int] = {spec.name: 0 for spec in specs}
        self.failure: GiveUp | None = None
        self._stopping = asyncio.Event()
        self._gave_up = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def run(self, stop: asyncio.Event, stop_timeout_s: float) -> GiveUp | None:
        """Start every child; when `stop` is set or a child is given up on, stop them all (`stop_children`)."""
        if stop.is_set():
            return None
        self._tasks = [asyncio.create_task(self._keep(spec)) for spec in self.specs]
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._gave_up.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await self.stop_children(stop_timeout_s)
        return self.failure

    async def stop_children(self, timeout_s: float) -> None:
        """SIGTERM every child, SIGKILL those still alive `timeout_s` later; no restarts from here on."""
        self._stopping.set()
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for name, process in self.processes.items():
                if process.poll() is None:
                    log.warning("%s (pid %d) still running %g s after SIGTERM: killing it", name, process.pid, timeout_s)
                    process.kill()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _keep(self, spec: ChildSpec) -> None:
        history = CrashHistory(self.policy)
        while not self._stopping.is_set():
            returncode = await self._run_once(spec)
            if self._stopping.is_set():
                return
            delay = history.record(time.monotonic(), returncode)
            # what it said last explains an exit of its own (a traceback's last line), not a signal from outside
            said = last_words(self.last_lines.get(spec.name, "")) if returncode > 0 else ""
            if delay is None:
                self._give_up(GiveUp(spec.name, returncode, give_up_reason(spec.name, returncode, len(history.times),
                                                                         self.policy, said)))
                return
            log.warning("%s exited: %s%s; restarting in %.1f s", spec.name, describe_exit(returncode),
                        f" ({said})" if said else "", delay)
            if await is_set_within(self._stopping, delay):
                return
            self.num_restarts[spec.name] += 1
            if self.metrics is not None:
                self.metrics.restarts.labels(spec.name, describe_exit(returncode).split(" (")[0]).inc()

    async def _run_once(self, spec: ChildSpec) -> int:
        self.last_lines.pop(spec.name, None)
        process = spawn(spec.command, env=spec.env, stderr=subprocess.PIPE, **self.popen_kwargs)
        self.processes[spec.name] = process
        log.info("%s started (pid %d)", spec.name, process.pid)
        pump = asyncio.create_task(self._pump_stderr(spec.name, process))
        returncode = await wait_exit(process)
        try:
            await asyncio.wait_for(pump, 2.0)  # the last lines it wrote before exiting
        except asyncio.TimeoutError:
            pass  # a grandchild holds the pipe open
        return returncode

    async def _pump_stderr(self, name: str, process: subprocess.Popen) -> None:
        """Copy the child's stderr to ours line by line, remembering its last non-empty line."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STDERR_LINE_LIMIT)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), process.stderr)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line over the limit: pass it on in pieces
                    line = await reader.read(STDERR_LINE_LIMIT)
                if not line:
                    return
                text = line.decode(errors="replace")
                sys.stderr.write(text)
                if text.strip():
                    self.last_lines[name] = text
        finally:
            transport.close()

    def _give_up(self, failure: GiveUp) -> None:
        log.error("giving up: %s", failure.reason)
        if self.failure is None:
            self.failure = failure
        self._gave_up.set()
