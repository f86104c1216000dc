"""Encode worker benchmark: batched vs one-at-a-time encoding, and repeated-image chat latency warm vs cold.

Two tables, each variant measured against its baseline in the same run (rounds alternate; medians).

1. Encode throughput: 32 concurrent callers, each embedding distinct 320x240 JPEGs one after another through the
   encode worker's own path (decode, resize, batcher, vision tower + projector; embedding cache off), --max-batch 8
   vs 1.
2. Chat latency: a real mesh in this process (nats-server, frontend, encode worker, multimodal tiny dLLM) driven
   over HTTP. Cold = an image the mesh has not seen (download-free data: URL, decode, encode, prefill of its
   blocks); warm = the same request again (decoded-image LRU, embedding cache, dLLM prefix cache). Time to first
   token and whole-request latency, streamed, `max_tokens` 16.

    python bench/bench_encode.py            # ~3 min on 2 shared CPU cores
    python bench/bench_encode.py --quick
    python bench/bench_encode.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.tables import Row, print_table, scratch_dir  # noqa: E402
from protocol.work import EncodeRequest  # noqa: E402
from shell.images import decode_image  # noqa: E402
from workers.dllm.tiny import TinySpec, ensure_tiny_dllm  # noqa: E402
from workers.encode.config import EncodeConfig  # noqa: E402
from workers.encode.engine import EncodeEngine  # noqa: E402
from workers.encode.tiny import TinyEncoderSpec, ensure_tiny_encoder  # noqa: E402
from workers.encode.worker import EncodeWorker  # noqa: E402

NUM_CALLERS = 32  # concurrent requests: enough queue to fill batches of 8
MAX_BATCH = 8
ENCODERS = {  # name -> spec: `diffmesh up`'s tiny tower, and a 224-px one whose forward is real work on a CPU
    "tiny (up's, 64 px, 16 tokens)": TinyEncoderSpec(),
    "224 px p16 h256 L4 (196 tokens)": TinyEncoderSpec(image_size=224, patch_size=16, hidden_size=256, num_layers=4,
                                                        num_heads=4),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/variant rounds")
    parser.add_argument("--images", type=int, default=4, help="images per caller per encode round")
    parser.add_argument("--chats", type=int, default=6, help="cold/warm pairs per chat round")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cache-dir", help="where the tiny models are built (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.images, args.chats = 2, 2, 3
    return args


def photo(seed: int, size=(640, 480)) -> bytes:
    """A JPEG with smooth gradients and noise: decodes like a photo of that size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([(x * (1 + seed % 3)) % 256, (y * 2) % 256, ((x + y) // 2 + 40 * seed) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def encode_request(index: int, data: bytes) -> EncodeRequest:
    return EncodeRequest(request_id=f"b{index}", model="bench", mm_hash=decode_image(data, 1 << 26).mm_hash, image=data)


async def encode_round(worker: EncodeWorker, requests: list[EncodeRequest]) -> float:
    """Images/s for NUM_CALLERS callers, each embedding its share of `requests` one after another."""

    async def caller(mine: list[EncodeRequest]) -> None:
        for request in mine:
            await worker.embed(request)

    started = time.perf_counter()
    await asyncio.gather(*(caller(requests[i::NUM_CALLERS]) for i in range(NUM_CALLERS)))
    return len(requests) / (time.perf_counter() - started)


async def bench_encode(name: str, model_dir: Path, args) -> Row:
    workers = {batch: EncodeWorker(EncodeEngine(EncodeConfig(model=str(model_dir), max_batch=batch, cache_bytes=0)))
               for batch in (1, MAX_BATCH)}
    images = [photo(i, (320, 240)) for i in range(NUM_CALLERS * args.images)]
    requests = [encode_request(i, data) for i, data in enumerate(images)]
    rates = {batch: [] for batch in workers}
    await encode_round(workers[1], requests[:NUM_CALLERS])  # warm-up
    for _ in range(args.rounds):
        for batch, worker in workers.items():
            rates[batch].append(await encode_round(worker, requests))
    sizes = workers[MAX_BATCH].batcher.batch_sizes
    for worker in workers.values():
        await worker.stop()
    solo, batched = statistics.median(rates[1]), statistics.median(rates[MAX_BATCH])
    return Row(f"encode, {NUM_CALLERS} concurrent callers", name, f"{solo:.0f} img/s (max-batch 1)",
               f"{batched:.0f} img/s (max-batch {MAX_BATCH})", batched / solo,
               f"mean batch {statistics.mean(sizes):.1f}; decode + resize of each JPEG included", ">= 2x", batched / solo >= 2)


def bench_forward(name: str, model_dir: Path, args) -> Row:
    """The batching itself: one forward over 8 prepared images vs 8 forwards of one (normalisation included)."""
    engine = EncodeEngine(EncodeConfig(model=str(model_dir)))
    prepared = [engine.prepare(decode_image(photo(i, (320, 240)), 1 << 26).image) for i in range(MAX_BATCH)]
    engine.encode_prepared(prepared)  # warm-up
    rates = {"solo": [], "batched": []}
    for _ in range(args.rounds * 5):
        started = time.perf_counter()
        for item in prepared:
            engine.encode_prepared([item])
        rates["solo"].append(MAX_BATCH / (time.perf_counter() - started))
        started = time.perf_counter()
        engine.encode_prepared(prepared)
        rates["batched"].append(MAX_BATCH / (time.perf_counter() - started))
    solo, batched = statistics.median(rates["solo"]), statistics.median(rates["batched"])
    return Row("vision forward, 8 prepared images", name, f"{solo:.0f} img/s (8 forwards)",
               f"{batched:.0f} img/s (1 forward)", batched / solo, "tower + projector + normalisation", ">= 2x",
               batched / solo >= 2)


# --- chat latency through a real mesh -----------------------------------------------------------------------------


async def start_mesh(dllm_dir: Path, encoder_dir: Path):
    from frontend.app import run_frontend
    from shell.bus import EmbeddedNats, free_port
    from shell.config import FrontendConfig, NatsConfig, RuntimeConfig
    from workers.dllm.config import DllmConfig
    from workers.dllm.engine import DllmEngine
    from workers.dllm.worker import DllmWorker
    from workers.runtime import serve

    server = EmbeddedNats(port=None).start()
    nats, port = NatsConfig(url=server.url), free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(run_frontend(FrontendConfig(nats=nats, namespace="bench", host="127.0.0.1", port=port),
                                              ready=ready, stop=stop))]
    await ready.wait()
    engines = [EncodeWorker(EncodeEngine(EncodeConfig(model=str(encoder_dir), served_name="bench-encoder"))),
               DllmWorker(DllmEngine.from_pretrained(DllmConfig(model=str(dllm_dir), served_model_name="bench-vlm",
                                                                vision_encoder="bench-encoder")))]
    for engine in engines:
        started = asyncio.get_running_loop().create_future()
        tasks.append(asyncio.create_task(serve(engine, RuntimeConfig(nats=nats, namespace="bench", heartbeat_s=0.2),
                                               ready=started, stop=stop)))
        await started
    return f"http://127.0.0.1:{port}", stop, tasks, server


async def stream_chat(session, url: str, image: bytes) -> tuple[float, float, int]:
    """(time to first token, whole request, cached prompt tokens) of one streamed multimodal chat."""
    import base64

    part = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(image).decode()}}
    body = {"model": "bench-vlm", "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "what is in this picture"}, part]}],
            "nvext": {"ignore_eos": True}}
    started = time.perf_counter()
    first, cached = None, -1
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if event.get("usage"):
                cached = event["usage"]["prompt_tokens_details"]["cached_tokens"]
    return first, time.perf_counter() - started, cached


async def bench_chat(name: str, dllm_dir: Path, encoder_dir: Path, args, offset: int) -> list[Row]:
    import aiohttp

    url, stop, tasks, server = await start_mesh(dllm_dir, encoder_dir)
    samples = {"cold": [], "warm": []}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_models(session, url)
            await stream_chat(session, url, photo(offset + 999))  # warm-up: torch kernels, first connections
            for i in range(args.rounds * args.chats):
                image = photo(offset + i)
                samples["cold"].append(await stream_chat(session, url, image))
                samples["warm"].append(await stream_chat(session, url, image))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.stop()
    rows = []
    for label, index in (("TTFT", 0), ("whole request", 1)):
        c, w = (statistics.median(s[index] for s in samples[v]) for v in ("cold", "warm"))
        cached = statistics.median(s[2] for s in samples["warm"])
        rows.append(Row(f"repeated-image chat, {label}", name, f"{c * 1000:.1f} ms cold", f"{w * 1000:.1f} ms warm",
                        c / w, f"warm reuses {cached:.0f} cached prompt tokens; 640x480 JPEG", ">= 2x", c / w >= 2))
    return rows


async def wait_models(session, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with session.get(f"{url}/health") as response:
            if sum(len(w) for w in (await response.json())["models"].values()) >= 2:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError("the bench mesh did not come up")


async def main_async(args) -> list[Row]:
    cache_dir = scratch_dir(args.cache_dir, "bench-encode-")
    rows = []
    for offset, (name, spec) in enumerate(ENCODERS.items()):
        encoder_dir = ensure_tiny_encoder(cache_dir, spec)
        rows.append(bench_forward(name, encoder_dir, args))
        rows.append(await bench_encode(name, encoder_dir, args))
        dllm_dir = ensure_tiny_dllm(cache_dir, TinySpec(image_tokens=spec.num_patches))
        rows += await bench_chat(name, dllm_dir, encoder_dir, args, 1000 * (offset + 1))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = asyncio.run(main_async(args))
    header = (f"bench_encode: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
              f"load avg {os.getloadavg()[0]:.1f}; {args.rounds} rounds, medians")
    if args.json:
        print(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print_table(rows, header, notes="detail")
    return 0


if __name__ == "__main__":
    sys.exit(main())
