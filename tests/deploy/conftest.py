"""`diffmesh up` with mocker workers only, started once for the load and observability tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from shell.bus import free_port
from tests.deploy.composekit import import_deploy_module

NUM_MOCKERS = 2
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class RunningMesh:
    url: str
    nats_url: str
    log_path: Path


@pytest.fixture(scope="session")
def mesh_up(tmp_path_factory):
    """The README's one command, as a subprocess on free ports; SIGINT at the end, as Ctrl-C would."""
    port, log_path = free_port(), tmp_path_factory.mktemp("up") / "up.log"
    command = [str(Path(sys.executable).parent / "diffmesh"), "--log-format", "json", "up", "--host", "127.0.0.1",
               "--port", str(port), "--nats-port", str(free_port()), "--mocker", str(NUM_MOCKERS), "--dllm", "0", "--demo-dllm", "0",
               "--image", "0"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        live_workers = import_deploy_module("locust/sweep.py").live_workers
        while live_workers(url) < NUM_MOCKERS:  # polls a condition; gives up at the deadline
            assert process.poll() is None, f"diffmesh up exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"diffmesh up not ready:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        nats_url = re.search(r"NATS (nats://\S+)", log_path.read_text())[1]
        yield RunningMesh(url, nats_url, log_path)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
