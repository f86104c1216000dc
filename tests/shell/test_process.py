"""Children started with spawn_child end with their parent, even when the parent is SIGKILLed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.meshkit import is_gone

PARENT = """
import sys, time
from shell.process import spawn_child
child = spawn_child([sys.executable, "-c", "from shell.process import die_with_parent; import time; "
                     "die_with_parent(); print('armed', flush=True); time.sleep(120)"], stdout=sys.stdout)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_spawned_child_is_killed_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "armed"  # prctl is set before this line
        assert not is_gone(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while not is_gone(child):  # waits on the condition; the kernel sends SIGKILL as the parent exits
        assert time.monotonic() < deadline, f"child {child} outlived its parent"
        time.sleep(0.01)


def test_die_with_parent_does_nothing_for_a_process_started_by_hand():
    out = subprocess.run([sys.executable, "-c", "from shell.process import die_with_parent; die_with_parent(); "
                          "print('ok')"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
                         check=True)
    assert out.stdout.strip() == "ok"
