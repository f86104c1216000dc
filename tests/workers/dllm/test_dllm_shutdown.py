"""A dLLM worker process (engine thread, torch) whose NATS server died still exits promptly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

from shell.bus import EmbeddedNats
from shell.process import EXIT_OK
from tests.workers.workerproc import WorkerProcess

DRAIN_TIMEOUT_S = 10.0


async def test_dllm_worker_exits_within_the_drain_timeout_after_its_nats_server_was_killed(tiny_dir):
    server = EmbeddedNats(port=None).start()
    worker = WorkerProcess(server.url, "dllm", "--model", str(tiny_dir), "--threads", "1",
                           "--drain-timeout", str(DRAIN_TIMEOUT_S))
    try:
        await worker.wait_status("serving")
        server.process.kill()
        server.process.wait()
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code(DRAIN_TIMEOUT_S) == EXIT_OK  # nothing was in flight: nothing was cut
    finally:
        worker.close()
        server.stop()


def test_dllm_worker_with_a_missing_model_directory_fails_in_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    result = subprocess.run([sys.executable, "-m", "diffmesh.cli", "worker", "dllm", "--model", str(missing)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"diffmesh: --model '{missing}' (or DIFFMESH_DLLM_MODEL): no such directory"]
