"""`diffmesh up` supervises its tree: nothing outlives a SIGKILL of `up`, a killed worker is restarted and counted,
a worker that cannot start is given up on in one line, a port in use is one line."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import pytest

from shell.bus import free_port
from shell.process import EXIT_GAVE_UP, EXIT_OK, EXIT_STARTUP
from tests.prockit import cmdline, descendants, is_alive, kill_all, wait_until

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 240.0  # a dLLM worker builds its tiny model on first run
RESTART_METRIC = re.compile(r'^diffmesh_process_restarts_total\{process="mocker-0",reason="killed by SIGKILL"\} (\S+)$', re.M)


class Up:
    """`diffmesh up ...` in its own session, logging to a file; `close()` kills whatever of its tree is left."""

    def __init__(self, tmp_path: Path, *flags: str, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.log_path = tmp_path / "up.log"
        env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path), **(env or {})}  # temp dirs die with tmp_path
        command = [str(Path(sys.executable).parent / "diffmesh"), "--log-format", "json", "up", "--host", "127.0.0.1",
                   "--port", str(self.port), "--nats-port", str(free_port()), *flags]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.seen: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def tree(self) -> list[int]:
        pids = descendants(self.process.pid)
        self.seen.update(pids)
        return pids

    def wait_ready(self) -> None:
        def ready():
            assert self.process.poll() is None, self.log()[-3000:]
            return "ready: models" in self.log()

        wait_until(ready, START_TIMEOUT_S, "`up` to print ready")
        self.tree()

    def worker_pid(self, kind: str) -> int:
        return next(pid for pid in self.tree() if f" worker {kind} " in cmdline(pid))

    def close(self) -> None:
        if self.process.poll() is None:
            self.tree()
            self.process.kill()
            self.process.wait()
        kill_all(self.seen)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _workers(up: Up, model: str) -> list[str]:
    return json.loads(_get(f"{up.url}/health"))["models"].get(model, [])


def test_sigkill_of_up_leaves_no_process_of_its_tree_alive(tmp_path):
    up = Up(tmp_path, "--demo-dllm", "0", "--mocker", "1", "--dllm", "1", "--image", "0")  # and the encode worker the dLLM needs
    try:
        up.wait_ready()
        tree = up.tree()
        assert len(tree) == 4 and any("nats-server" in cmdline(pid) for pid in tree)  # nats-server, mocker, encode, dLLM
        up.process.kill()  # SIGKILL: `up` runs no cleanup at all
        up.process.wait()
        wait_until(lambda: not any(is_alive(pid) for pid in tree), 5.0, f"{tree} to exit with `up`")
    finally:
        up.close()


def test_killed_worker_is_restarted_counted_in_metrics_and_serves_again(tmp_path):
    up = Up(tmp_path, "--demo-dllm", "0", "--mocker", "1", "--dllm", "0", "--image", "0", "--mocker-speedup", "inf", "--restart-backoff", "0.1")
    try:
        up.wait_ready()
        [old_id] = _workers(up, "mocker")
        old_pid = up.worker_pid("mocker")
        os.kill(old_pid, signal.SIGKILL)

        def restarts() -> float:
            found = RESTART_METRIC.search(_get(f"{up.url}/metrics"))
            return float(found.group(1)) if found else 0.0

        wait_until(lambda: restarts() == 1.0, 60, "the restart metric to count the restart")
        wait_until(lambda: (ids := _workers(up, "mocker")) and old_id not in ids, 60, "the new worker, without the old")
        assert up.worker_pid("mocker") != old_pid
        client = openai.OpenAI(base_url=f"{up.url}/v1", api_key="unused", max_retries=0)
        chat = client.chat.completions.create(model="mocker", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert chat.usage.completion_tokens == 8
        assert "mocker-0 exited: killed by SIGKILL" in up.log()
        assert restarts() == 1.0
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=60) == EXIT_OK
    finally:
        up.close()


def test_worker_that_fails_at_start_is_given_up_with_a_one_line_reason(tmp_path):
    missing = tmp_path / "no-such-dllm"
    up = Up(tmp_path, "--demo-dllm", "0", "--mocker", "0", "--dllm", "1", "--encode", "0", "--image", "0", env={"DIFFMESH_DLLM_MODEL": str(missing)})
    try:
        assert up.process.wait(timeout=120) == EXIT_GAVE_UP
        lines = [line for line in up.log().splitlines() if line.startswith("diffmesh up: giving up")]
        assert lines == [f"diffmesh up: giving up: dllm-0 failed to start, exit 2 (startup failure): "
                         f"--model '{missing}' (or DIFFMESH_DLLM_MODEL): no such directory"]
        assert "Traceback" not in up.log()
    finally:
        up.close()
    assert not any(is_alive(pid) for pid in up.seen)


def test_port_in_use_is_one_line_and_starts_no_worker(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = Up(tmp_path, "--demo-dllm", "0", "--mocker", "1", "--dllm", "0", "--image", "0", port=port)
        try:
            assert up.process.wait(timeout=60) == EXIT_STARTUP
            text = up.log()
            assert f"diffmesh: --port {port}: cannot listen on 127.0.0.1:{port}: Address already in use" in text
            assert "Traceback" not in text and "mocker-0 started" not in text
        finally:
            up.close()
