"""The README's run command: `diffmesh up` builds the tiny models on first run, serves every kind (chat with images
through the encode worker included), stops on Ctrl-C."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from PIL import Image

from shell.bus import free_port
from tests.meshkit import child_pids, is_gone
from tests.imagekit import data_url, encoded
from workers.image import shapes

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 300.0
BLOCK = 32  # the tiny default dLLM's block size
TEXT = " ".join(["hello world what is the red cat"] * 6)  # 42 one-token words: the first block is text only
NVEXT = {"nvext": {"ignore_eos": True}}


def _wait(condition, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return response.read().decode()


def _counter(text: str, line_start: str) -> float:
    match = re.search(rf"^{re.escape(line_start)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _ImageServer:
    """A real loopback HTTP server (in a thread: this test is synchronous) serving one PNG."""

    def __init__(self, directory: Path):
        (directory / "blue.png").write_bytes(encoded((30, 30, 220), (48, 48), noise=4))
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/blue.png"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ask(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": TEXT}, {"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": TEXT}]}]


def _chat(client, messages):
    raw = client.chat.completions.with_raw_response.create(model="tiny-dllm", messages=messages, max_tokens=8,
                                                           extra_body=NVEXT)
    return raw.parse(), raw.headers["x-diffmesh-worker"]


def _check_multimodal(client, url: str, http_image: str) -> None:
    red = data_url(encoded((220, 30, 30), (48, 48), noise=3))
    by_http, _ = _chat(client, _ask(http_image))
    assert by_http.usage.completion_tokens == 8
    first, worker = _chat(client, _ask(red))
    _wait(lambda: _counter(_metrics(url), f'dynamo_router_indexed_blocks{{worker_id="{worker}"}}') >= 3,
          "the dLLM worker's KV events never reached the router")
    second, again = _chat(client, _ask(red))
    assert again == worker  # the router sent the repeat to the worker holding its image blocks
    full = first.usage.prompt_tokens // BLOCK * BLOCK
    assert first.usage.prompt_tokens_details.cached_tokens <= BLOCK  # at most the text block the http request left
    assert second.usage.prompt_tokens_details.cached_tokens == full  # every block, the image's included
    other, _ = _chat(client, _ask(data_url(encoded((30, 220, 30), (48, 48), noise=5))))
    assert other.usage.prompt_tokens_details.cached_tokens == BLOCK  # the text block before the image, nothing more
    text = _metrics(url)
    assert _counter(text, 'dynamo_frontend_image_embeddings_total{cache="hit",model="tiny-clip"}') == 1
    assert _counter(text, 'dynamo_frontend_image_embeddings_total{cache="miss",model="tiny-clip"}') == 3


def _check_health_checks(url: str) -> None:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as response:
        models = json.load(response)["data"]
    modalities = {m["id"]: (m["input_modalities"], m["output_modalities"]) for m in models}
    assert modalities == {"mocker": (["text"], ["text"]), "tiny-dllm": (["text", "image"], ["text"]),
                          "demo-dllm": (["text"], ["text"]), "tiny-sd": (["text", "image"], ["image"])}  # edits: image in
    for model in models:
        check = model["health_check"]
        request = urllib.request.Request(url + check["path"], data=json.dumps(check["body"]).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200, model["id"]


def _check_locust_multimodal_user(url: str, tmp_path: Path) -> None:
    """The multimodal locust user finds the image-taking model itself (no --mm-model)."""
    locustfile = Path(__file__).resolve().parents[2] / "deploy" / "locust" / "locustfile.py"
    summary = tmp_path / "locust.json"
    command = [str(Path(sys.executable).parent / "locust"), "-f", str(locustfile), "--headless", "--only-summary",
               "--users", "2", "--spawn-rate", "2", "--run-time", "4s", "--mix", "multimodal", "--max-tokens", "8",
               "--host", url, "--summary-json", str(summary)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    stats = json.loads(summary.read_text())
    assert stats["requests"] > 0 and stats["failures"] == 0 and stats["TTFT"]["count"] > 0


def test_up_serves_every_kind_chat_with_images_included_then_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    scratch = tmp_path / "tmp"  # `up`'s temporary directories (NATS store, url responses, metrics) go with it
    scratch.mkdir()
    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(scratch)}  # first run: the tiny models are built here
    command = [str(Path(sys.executable).parent / "diffmesh"), "--log-format", "json", "up", "--host", "127.0.0.1",
               "--port", str(port), "--nats-port", str(free_port()), "--dllm", "2", "--media-allowed-hosts", "127.0.0.1",
               "--workers", "2"]
    log_path = tmp_path / "up.log"
    images = _ImageServer(tmp_path)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "ready: models" not in log_path.read_text():  # `up` prints this once every worker is live
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        text = log_path.read_text()
        assert re.search(rf"HTTP http://127\.0\.0\.1:{port}\s+NATS nats://", text) and "curl http://" in text
        assert "image_url" in text  # a ready-to-paste multimodal curl
        children = child_pids(process.pid)
        assert len(children) == 8  # nats-server, mocker, encode, two dLLM, the demo dLLM and image workers, a frontend
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        models = {m.id for m in client.models.list().data}
        assert models == {"mocker", "tiny-dllm", "demo-dllm", "tiny-sd"}  # the encoder serves the dLLM, not clients
        for model in ("mocker", "tiny-dllm"):
            chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
            assert chat.usage.completion_tokens > 0
        question = [{"role": "user", "content": "i have a pink dog. what color is my dog?"}]  # held out of its training
        chat = client.chat.completions.create(model="demo-dllm", messages=question, max_tokens=32)
        assert chat.choices[0].message.content.replace(" .", ".") == "your dog is pink."
        image = client.images.generate(model="tiny-sd", prompt="a red circle on blue", size="64x64", extra_body={"seed": 1})
        picture = Image.open(io.BytesIO(base64.b64decode(image.data[0].b64_json)))  # the trained shapes model
        assert picture.size == (64, 64) and shapes.colour_share(picture, "red", shapes.centre_disk(9)) >= 0.6
        _check_multimodal(client, url, images.url)
        _check_health_checks(url)
        _check_locust_multimodal_user(url, tmp_path)
        assert (tmp_path / ".cache" / "diffmesh" / "models").is_dir()
    finally:
        images.close()
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert code == 0, log_path.read_text()[-3000:]
    assert all(is_gone(pid) for pid in children)
    assert not list(scratch.glob("diffmesh-*"))  # (torch keeps its empty torchinductor_<user> cache dir there)
