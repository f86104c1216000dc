"""The README's run command: `diffmesh up` serves the shipped demo models and the mocker, stops cleanly on Ctrl-C."""

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
from workers.image import shapes

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 240.0


def _children(pid: int) -> list[int]:
    """Direct children, read from /proc (field 4 of /proc/PID/stat is the parent pid)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_up_serves_mocker_dllm_and_image_then_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path)}  # a fresh home: nothing cached, the demo models ship with the code
    command = [str(Path(sys.executable).parent / "diffmesh"), "--log-format", "json", "up", "--host", "127.0.0.1",
               "--port", str(port), "--nats-port", str(free_port())]
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
        children = _children(process.pid)
        assert len(children) == 4  # nats-server and three workers
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        models = {m.id for m in client.models.list().data}
        assert models == {"mocker", "tiny-dllm", "tiny-sd"}
        chat = client.chat.completions.create(model="mocker", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert chat.usage.completion_tokens > 0
        question = [{"role": "user", "content": "i have a pink dog. what color is my dog?"}]  # held out of the demo's training
        chat = client.chat.completions.create(model="tiny-dllm", messages=question, max_tokens=32)
        assert chat.choices[0].message.content.replace(" .", ".") == "your dog is pink."
        image = client.images.generate(model="tiny-sd", prompt="a red circle on blue", size="64x64", extra_body={"seed": 1})
        picture = Image.open(io.BytesIO(base64.b64decode(image.data[0].b64_json)))
        assert picture.size == (64, 64) and shapes.colour_share(picture, "red", shapes.centre_disk(9)) >= 0.6
        assert not (tmp_path / ".cache" / "diffmesh" / "models").exists()  # nothing had to be built
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert code == 0, log_path.read_text()[-3000:]
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
