"""The README's run command: `diffmesh up` builds the tiny models on first run, serves every kind, stops on Ctrl-C."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from PIL import Image

from shell.bus import free_port
from tests.meshkit import child_pids, is_gone

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 240.0


def test_up_serves_mocker_dllm_and_image_then_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path)}  # first run: the tiny models are built here
    command = [str(Path(sys.executable).parent / "diffmesh"), "--log-format", "json", "up", "--host", "127.0.0.1",
               "--port", str(port), "--nats-port", str(free_port()), "--workers", "2"]
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "ready: models" not in log_path.read_text():  # `up` prints this once every worker is live
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        text = log_path.read_text()
        assert re.search(rf"HTTP http://127\.0\.0\.1:{port}\s+NATS nats://", text) and "curl http://" in text
        children = child_pids(process.pid)
        assert len(children) == 5  # nats-server, three workers and a second frontend process
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        models = {m.id for m in client.models.list().data}
        assert models == {"mocker", "tiny-dllm", "tiny-sd"}
        for model in ("mocker", "tiny-dllm"):
            chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
            assert chat.usage.completion_tokens > 0
        image = client.images.generate(model="tiny-sd", prompt="a red cat", size="64x64")
        assert Image.open(io.BytesIO(base64.b64decode(image.data[0].b64_json))).size == (64, 64)
        assert (tmp_path / ".cache" / "diffmesh" / "models").is_dir()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert code == 0, log_path.read_text()[-3000:]
    assert all(is_gone(pid) for pid in children)
