"""Load tests for a diffmesh frontend (OpenAI API). Presets: smoke.conf (CI), soak.conf; sweep.py for a table.

  locust -f deploy/locust/locustfile.py --config deploy/locust/smoke.conf --host http://127.0.0.1:8000

User classes (pick with --mix text|image|multimodal|all or a comma list of class names):
  ChatStreamUser      streamed chat; TTFT and ITL are recorded as their own entries ("TTFT"/"ITL" rows)
  CompletionUser      non-streamed /v1/completions
  TracePrefixUser     streamed completions replaying a Mooncake trace: prompts share prefixes where hash_ids do
  ImageUser           /v1/images/generations, b64_json, checks the PNG
  MultimodalChatUser  streamed chat with an image_url part, on the first chat model whose /v1/models
                      input_modalities include "image" (or --mm-model)
"""

from __future__ import annotations

import base64
import itertools
import json
import struct
import time
import zlib

from locust import FastHttpUser, events, task
from locust.exception import StopUser
from meshload_sse import StreamResult, read_sse, response_lines
from meshload_trace import default_trace_path, load_trace, prompt_for

MIXES = {
    "text": ["ChatStreamUser", "CompletionUser", "TracePrefixUser"],
    "image": ["ImageUser"],
    "multimodal": ["MultimodalChatUser"],
    "all": ["ChatStreamUser", "CompletionUser", "TracePrefixUser", "ImageUser", "MultimodalChatUser"],
}
PROMPTS = ["Tell me about diffusion language models.", "Write a haiku about routers.",
           "Explain KV caches to a five-year-old.", "List three uses of a message bus."]
STREAM_HEADERS = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
TIMING_TYPES = ("TTFT", "ITL")  # pseudo request types: locust rows that hold latencies, not requests


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    group = parser.add_argument_group("diffmesh")
    group.add_argument("--mix", default="text", env_var="LOCUST_MIX", help="text|image|multimodal|all or Class,Class")
    group.add_argument("--chat-model", default="", env_var="LOCUST_CHAT_MODEL", help="default: first chat model listed")
    group.add_argument("--image-model", default="", env_var="LOCUST_IMAGE_MODEL", help="default: first image model")
    group.add_argument("--mm-model", default="", env_var="LOCUST_MM_MODEL",
                       help="multimodal chat model (default: the first chat model that takes images)")
    group.add_argument("--max-tokens", type=int, default=32, env_var="LOCUST_MAX_TOKENS")
    group.add_argument("--think-time", type=float, default=0.0, env_var="LOCUST_THINK_TIME", help="seconds between tasks")
    group.add_argument("--trace-path", default=str(default_trace_path()), env_var="LOCUST_TRACE_PATH")
    group.add_argument("--trace-block-words", type=int, default=64, env_var="LOCUST_TRACE_BLOCK_WORDS",
                       help="words per 512-token trace block (512 = the trace's real prompt lengths)")
    group.add_argument("--trace-max-blocks", type=int, default=16, env_var="LOCUST_TRACE_MAX_BLOCKS",
                       help="leading blocks kept of longer trace prompts (to fit the model's context)")
    group.add_argument("--trace-max-output", type=int, default=64, env_var="LOCUST_TRACE_MAX_OUTPUT")
    group.add_argument("--trace-max-requests", type=int, default=None, env_var="LOCUST_TRACE_MAX_REQUESTS")
    group.add_argument("--image-size", default="256x256", env_var="LOCUST_IMAGE_SIZE")
    group.add_argument("--image-steps", type=int, default=None, env_var="LOCUST_IMAGE_STEPS")
    group.add_argument("--summary-json", default="", env_var="LOCUST_SUMMARY_JSON", help="write the summary here")


@events.init.add_listener
def select_users(environment, **_kwargs) -> None:
    """Keep the user classes named by --mix (the list is shared with the runner, so filter it in place)."""
    mix = environment.parsed_options.mix
    names = MIXES.get(mix, [name.strip() for name in mix.split(",") if name.strip()])
    unknown = set(names) - {user.__name__ for user in environment.user_classes}
    if unknown:
        raise ValueError(f"--mix names unknown user classes: {sorted(unknown)}")
    environment.user_classes[:] = [user for user in environment.user_classes if user.__name__ in names]


class MeshUser(FastHttpUser):
    abstract = True
    model_kind = "chat"  # which /v1/models `kinds` entry this user needs

    def wait_time(self) -> float:
        return self.environment.parsed_options.think_time

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.model = self.configured_model() or self.discover_model()

    def configured_model(self) -> str:
        return self.options.chat_model

    def wants(self, model: dict) -> bool:
        """Whether a /v1/models entry serves this user."""
        return self.model_kind in model.get("kinds", [])

    def discover_model(self) -> str:
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as response:
            models = [m["id"] for m in response.json().get("data", []) if self.wants(m)]
            if not models:
                response.failure(f"no model for {type(self).__name__} is served")
                raise StopUser()
        return models[0]

    def record(self, kind: str, label: str, seconds: float | None) -> None:
        if seconds is not None:
            self.environment.events.request.fire(request_type=kind, name=label, response_time=seconds * 1000.0,
                                                 response_length=0, exception=None, context={})

    def stream(self, path: str, body: dict, label: str) -> StreamResult | None:
        """POST a streamed request; the row's time is the whole stream; TTFT and ITL get rows of their own."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        with self.client.post(path, json=body, name=label, stream=True, catch_response=True,
                              headers=STREAM_HEADERS) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:300]}")
                return None
            result = read_sse(response_lines(response), start)
            response.request_meta["response_time"] = (time.perf_counter() - start) * 1000.0
            response.request_meta["response_length"] = len(result.text)
            if result.error:
                response.failure(result.error)
                return None
        self.record("TTFT", label, result.ttft_s)
        self.record("ITL", label, result.itl_s)
        return result

    def prompt(self) -> str:
        return PROMPTS[int(time.monotonic() * 1000) % len(PROMPTS)]


class ChatStreamUser(MeshUser):
    @task
    def chat_stream(self) -> None:
        messages = [{"role": "user", "content": self.prompt()}]
        self.stream("/v1/chat/completions", {"model": self.model, "messages": messages,
                                              "max_tokens": self.options.max_tokens}, "chat stream")


class CompletionUser(MeshUser):
    model_kind = "completions"

    @task
    def completion(self) -> None:
        body = {"model": self.model, "prompt": self.prompt(), "max_tokens": self.options.max_tokens}
        with self.client.post("/v1/completions", json=body, name="completion", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:300]}")
                return
            reply = response.json()
            if not reply["choices"][0]["text"] or reply["usage"]["completion_tokens"] < 1:
                response.failure("empty completion")


class TracePrefixUser(MeshUser):
    """Replays a Mooncake trace in order (shared by the users of this process), prompts built from hash_ids."""

    model_kind = "completions"
    _records = None  # one cursor per process: consecutive requests share prefixes as in the trace

    def on_start(self) -> None:
        super().on_start()
        cls = type(self)
        if cls._records is None:
            cls._records = itertools.cycle(load_trace(self.options.trace_path, self.options.trace_max_requests))

    @task
    def trace_completion(self) -> None:
        record = next(type(self)._records)
        prompt = prompt_for(record, self.options.trace_block_words, self.options.trace_max_blocks)
        body = {"model": self.model, "prompt": prompt,
                "max_tokens": max(1, min(record.output_length, self.options.trace_max_output))}
        self.stream("/v1/completions", body, "trace completion")


class ImageUser(MeshUser):
    model_kind = "images"

    def configured_model(self) -> str:
        return self.options.image_model

    @task
    def generate_image(self) -> None:
        body = {"model": self.model, "prompt": "a lighthouse at dusk, oil painting", "size": self.options.image_size,
                "response_format": "b64_json"}
        if self.options.image_steps:
            body["nvext"] = {"num_inference_steps": self.options.image_steps}
        with self.client.post("/v1/images/generations", json=body, name="image", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:300]}")
                return
            data = response.json().get("data") or [{}]
            if not base64.b64decode(data[0].get("b64_json") or "").startswith(b"\x89PNG"):
                response.failure("reply holds no PNG")


def tiny_png(rgb: tuple[int, int, int], side: int = 8) -> bytes:
    """A solid-colour PNG, built without an imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * side for _ in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class MultimodalChatUser(MeshUser):
    IMAGES = [base64.b64encode(tiny_png(rgb)).decode() for rgb in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]

    def configured_model(self) -> str:
        return self.options.mm_model

    def wants(self, model: dict) -> bool:
        return "chat" in model.get("kinds", []) and "image" in model.get("input_modalities", [])

    @task
    def chat_with_image(self) -> None:
        image = self.IMAGES[int(time.monotonic() * 1000) % len(self.IMAGES)]
        content = [{"type": "text", "text": "What colour is this picture?"},
                   {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]
        self.stream("/v1/chat/completions", {"model": self.model, "max_tokens": self.options.max_tokens,
                                              "messages": [{"role": "user", "content": content}]}, "multimodal chat")


def summarize(stats) -> dict:
    """Requests, req/s, failures, and TTFT/ITL percentiles (ms) from locust's aggregated stats."""
    rows = [e for e in stats.entries.values() if e.method not in TIMING_TYPES and e.name != "/v1/models"]
    num_requests = sum(e.num_requests for e in rows)
    duration_s = max((stats.total.last_request_timestamp or 0) - stats.total.start_time, 1e-9)
    out = {"requests": num_requests, "failures": stats.total.num_failures, "rps": num_requests / duration_s}
    for kind in TIMING_TYPES:
        timing = [e for e in stats.entries.values() if e.method == kind]
        merged = timing[0].__class__(stats, kind, kind) if timing else None
        for entry in timing:
            merged.extend(entry)
        out[kind] = {"count": merged.num_requests if merged else 0,
                     **{f"p{q}": (merged.get_response_time_percentile(q / 100) if merged and merged.num_requests else None)
                        for q in (50, 90, 99)}}
    return out


@events.quitting.add_listener
def report(environment, **_kwargs) -> None:
    """Print TTFT/ITL percentiles; a run with stream users but no TTFT sample fails."""
    if environment.runner is None or type(environment.runner).__name__ == "WorkerRunner":
        return
    summary = summarize(environment.runner.stats)
    print(f"diffmesh summary: {summary['requests']} requests, {summary['rps']:.1f} req/s, {summary['failures']} failures")
    for kind in TIMING_TYPES:
        s = summary[kind]
        print(f"diffmesh {kind} ms: n={s['count']} p50={s['p50']} p90={s['p90']} p99={s['p99']}")
    if environment.parsed_options.summary_json:
        with open(environment.parsed_options.summary_json, "w") as handle:
            json.dump(summary, handle)
    streams = {"ChatStreamUser", "TracePrefixUser", "MultimodalChatUser"}
    if streams & {u.__name__ for u in environment.user_classes} and summary["TTFT"]["count"] == 0:
        print("diffmesh: no stream produced a first token")
        environment.process_exit_code = 1
