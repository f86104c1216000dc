"""Children die with their parent (PR_SET_PDEATHSIG, and the parent-pid watch without it); a second signal exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from shell.process import EXIT_BROKER_LOST, EXIT_DRAIN_TIMEOUT, describe_exit, is_orphaned, spawn
from tests.prockit import is_alive, kill_all, wait_until

# A parent that spawns one child through shell.process.spawn, prints the child's pid, then waits to be killed.
PARENT = textwrap.dedent("""
    import sys, time
    from shell.process import spawn
    child = spawn([sys.executable, "-c", sys.argv[1]], death_signal=int(sys.argv[2]))
    print(child.pid, flush=True)
    time.sleep(600)
""")
SLEEPER = "import time; time.sleep(600)"
WATCHER = "from shell.process import watch_parent_from_env; watch_parent_from_env(); import time; time.sleep(600)"


def _orphan_after_parent_killed(child_code: str, death_signal: int) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, child_code, str(death_signal)], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert is_alive(child)
        parent.kill()
        parent.wait()
        wait_until(lambda: not is_alive(child), 10, f"child {child} to die with its parent")
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        kill_all([child] if child else [])


def test_spawned_child_dies_when_its_parent_is_sigkilled():
    _orphan_after_parent_killed(SLEEPER, signal.SIGKILL)


def test_python_child_exits_by_watching_its_parent_pid_without_prctl():
    _orphan_after_parent_killed(WATCHER, 0)  # death_signal=0: no PR_SET_PDEATHSIG, only the fallback watch


def test_spawn_refuses_a_thread_whose_exit_would_kill_the_child():
    errors = []
    thread = threading.Thread(target=lambda: _try(errors))
    thread.start()
    thread.join()
    assert len(errors) == 1 and "non-main thread" in str(errors[0])


def _try(errors: list) -> None:
    try:
        spawn([sys.executable, "-c", "pass"])
    except RuntimeError as exc:
        errors.append(exc)


def test_spawn_tells_the_child_its_parent_pid():
    child = spawn([sys.executable, "-c", "import os; print(os.environ['DIFFMESH_PARENT_PID'])"], stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=60)
    assert int(out) == os.getpid()


def test_is_orphaned_compares_with_the_parent_that_spawned_us():
    assert not is_orphaned(1234, 1234)
    assert is_orphaned(1234, 1)  # reparented to init
    assert is_orphaned(1234, 77)  # or to a subreaper


@pytest.mark.parametrize(("returncode", "text"), [
    (0, "exit 0 (stopped)"), (EXIT_BROKER_LOST, "exit 3 (NATS unreachable)"), (EXIT_DRAIN_TIMEOUT, "exit 4 (drain cut short)"),
    (-9, "killed by SIGKILL"), (143, "exit 143 (SIGTERM)"), (17, "exit 17"),
])
def test_describe_exit_names_codes_and_signals(returncode, text):
    assert describe_exit(returncode) == text


# until_signal around a start() that never finishes on its own: the first SIGTERM only sets `stop`.
STUBBORN = textwrap.dedent("""
    import asyncio, sys
    from shell.process import run_until_signal

    async def start(stop):
        print("serving", flush=True)
        await stop.wait()
        print("stopping", flush=True)
        await asyncio.Event().wait()  # a drain that never ends

    run_until_signal(start, hard_exit_after_s=float(sys.argv[1]) if len(sys.argv) > 1 else None)
""")


def _stubborn(*args: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", STUBBORN, *args], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "serving"
    return process


def test_second_sigterm_exits_at_once_with_128_plus_signal():
    process = _stubborn()
    try:
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline().strip() == "stopping"  # the first one started the (endless) drain
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_watchdog_ends_a_shutdown_that_hangs_with_exit_code_4():
    process = _stubborn("0.5")
    try:
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline().strip() == "stopping"
        assert process.wait(timeout=30) == EXIT_DRAIN_TIMEOUT
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
