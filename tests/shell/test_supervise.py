"""Restart policy with plain values; the Supervisor with real child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
from prometheus_client import CollectorRegistry

from shell.bus import wait_for
from shell.config import ConfigError
from shell.metrics import SupervisorMetrics
from shell.process import EXIT_STARTUP
from shell.supervise import ChildSpec, CrashHistory, RestartPolicy, Supervisor, last_words
from tests.prockit import is_alive, kill_all

POLICY = RestartPolicy(backoff_s=1.0, max_backoff_s=5.0, max_crashes=5, window_s=60.0)
FAST = RestartPolicy(backoff_s=0.01, max_backoff_s=0.05, max_crashes=3, window_s=600.0)


def test_backoff_doubles_per_crash_up_to_the_cap_then_gives_up():
    history = CrashHistory(RestartPolicy(backoff_s=1.0, max_backoff_s=5.0, max_crashes=6, window_s=60.0))
    assert [history.record(t, 1) for t in (0, 1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert history.record(5, 1) is None  # the 6th crash inside 60 s


def test_crashes_older_than_the_window_are_forgotten():
    history = CrashHistory(POLICY)
    assert [history.record(t, 1) for t in (0, 10, 20, 30)] == [1.0, 2.0, 4.0, 5.0]
    assert history.record(100, 1) == 1.0  # a worker that ran a while starts over at the first delay
    assert len(history.times) == 1


def test_a_startup_failure_is_given_up_at_once():
    assert CrashHistory(POLICY).record(0, EXIT_STARTUP) is None


def test_bad_policy_values_raise_naming_the_field():
    with pytest.raises(ConfigError, match="max_crashes"):
        RestartPolicy(max_crashes=0)
    with pytest.raises(ConfigError, match="backoff_s"):
        RestartPolicy(backoff_s=0)


def test_last_words_reads_json_log_records_and_plain_lines():
    assert last_words('{"ts": 1, "level": "ERROR", "msg": "engine failed", "exc": "Traceback\\n  x\\nValueError: bad"}\n') \
        == "engine failed: ValueError: bad"
    assert last_words("diffmesh: --model '/x': no such directory\n") == "--model '/x': no such directory"
    assert len(last_words("x" * 1000)) == 300


def _child(name: str, code: str) -> ChildSpec:
    return ChildSpec(name, [sys.executable, "-c", code])


async def _run(supervisor: Supervisor, stop: asyncio.Event, stop_timeout_s: float = 10.0) -> asyncio.Task:
    return asyncio.create_task(supervisor.run(stop, stop_timeout_s))


async def test_killed_child_is_restarted_and_counted_in_the_metric():
    registry = CollectorRegistry()
    code = "import sys, time; print('up', file=sys.stderr, flush=True); time.sleep(600)"
    supervisor = Supervisor([_child("sleeper", code)], FAST, SupervisorMetrics(registry))
    stop = asyncio.Event()
    task = await _run(supervisor, stop)
    pids = []
    try:
        await wait_for(lambda: supervisor.last_lines.get("sleeper", "").strip() == "up", 30)
        first = supervisor.processes["sleeper"].pid
        pids.append(first)
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: supervisor.processes["sleeper"].pid != first, 30)
        pids.append(supervisor.processes["sleeper"].pid)
        await wait_for(lambda: is_alive(pids[-1]), 30)
        assert supervisor.num_restarts == {"sleeper": 1}
        labels = {"process": "sleeper", "reason": "killed by SIGKILL"}
        assert registry.get_sample_value("diffmesh_process_restarts_total", labels) == 1.0
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 60) is None  # stopped as asked: no failure
        kill_all(pids)
    assert not any(is_alive(pid) for pid in pids)


async def test_child_that_keeps_crashing_is_given_up_with_its_last_words():
    code = "import sys; print('RuntimeError: no GPU', file=sys.stderr); sys.exit(1)"
    supervisor = Supervisor([_child("crasher", code)], FAST)
    failure = await asyncio.wait_for(supervisor.run(asyncio.Event(), 10.0), 120)
    assert failure.name == "crasher" and failure.returncode == 1
    assert failure.reason == "crasher crashed 3 times in 600 s (last: exit 1 (crashed)): RuntimeError: no GPU"
    assert supervisor.num_restarts == {"crasher": 2}


async def test_child_that_fails_to_start_is_given_up_without_a_restart():
    code = f"import sys; print('diffmesh: --model /nope: no such directory', file=sys.stderr); sys.exit({EXIT_STARTUP})"
    supervisor = Supervisor([_child("dllm-0", code), _child("other", "import time; time.sleep(600)")], FAST)
    failure = await asyncio.wait_for(supervisor.run(asyncio.Event(), 10.0), 120)
    assert failure.reason == "dllm-0 failed to start, exit 2 (startup failure): --model /nope: no such directory"
    assert supervisor.num_restarts == {"dllm-0": 0, "other": 0}
    assert supervisor.processes["other"].returncode == -signal.SIGTERM  # the others were stopped


async def test_stop_kills_a_child_that_ignores_sigterm():
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', file=sys.stderr, flush=True); time.sleep(600)")
    supervisor = Supervisor([_child("stubborn", code)], FAST)
    stop = asyncio.Event()
    task = await _run(supervisor, stop, stop_timeout_s=0.5)
    try:
        await wait_for(lambda: supervisor.last_lines.get("stubborn", "").strip() == "ready", 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        kill_all([supervisor.processes["stubborn"].pid])
    assert supervisor.processes["stubborn"].returncode == -signal.SIGKILL
