"""Bus adapter of the encode engine: embedding cache by mm_hash, batching across requests, dtype+shape+bytes replies.

Encode workers keep no token cache (block_size 0, no KV events): the router runs them in approximate mode keyed by
the image's mm_hash, so an image returns to the worker that cached its embedding while that worker has room.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from protocol.errors import InvalidRequest
from protocol.events import ModelCard
from protocol.work import EmbeddingOutput, EncodeRequest, Final, TensorData, Usage, WorkRequest
from shell.config import MODEL_CACHE_DIR, MediaConfig, from_env, media_from_env
from shell.images import decode_image
from shell.lru import ByteBudgetLRU
from shell.metrics import EncoderMetrics
from workers.batcher import Batcher
from workers.contract import KvEventSink, RequestContext
from workers.encode.config import EncodeConfig

DEFAULT_MODEL_NAME = "tiny-clip"  # served name of the tiny default encoder `diffmesh up` builds
ENV_PREFIX = "DIFFMESH_ENCODE_"


class EncodeJob:
    """One image waiting for a vision forward (workers.batcher.BatchJob); resolves its future on the loop."""

    batch_key = None  # every image batches with every other
    num_images = 1

    def __init__(self, image, future: asyncio.Future, loop: asyncio.AbstractEventLoop):
        self.image = image  # EncodeEngine.prepare()d: resized and cropped
        self.future = future
        self.loop = loop

    def poll_stop(self) -> bool:
        return False  # shared by every caller waiting on this mm_hash: it always runs

    def done(self, embedding) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, embedding, None)

    def fail(self, exc: BaseException) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, None, exc)


def _settle(future: asyncio.Future, result, exc: BaseException | None) -> None:
    if not future.done():
        future.set_exception(exc) if exc is not None else future.set_result(result)


class EncodeWorker:
    """WorkerEngine for vision encoders (component "encode")."""

    component = "encode"

    def __init__(self, engine, media: MediaConfig | None = None, metrics: EncoderMetrics | None = None,
                 metrics_port: int | None = None, metrics_host: str = "0.0.0.0"):
        self.engine = engine  # workers.encode.engine.EncodeEngine
        self.config: EncodeConfig = engine.config
        self.cache = ByteBudgetLRU(self.config.cache_bytes)  # mm_hash -> embedding
        self.media = media or MediaConfig()  # decoding takes the frontend's format allow-list and pixel cap
        self.metrics = metrics or EncoderMetrics()
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self.batcher = Batcher(self._run_batch, self.executor, self.config.max_batch, self.config.batch_wait_s)
        self._inflight: dict[int, asyncio.Future] = {}  # mm_hash -> its encoding: concurrent misses share one
        self._server = None

    def worker_card(self) -> dict:
        return {"model": self.engine.model_name, "capacity": 4 * self.config.max_batch, "max_queue": self.config.max_queue,
                "block_size": 0, "kv_total_blocks": 0, "publishes_kv_events": False}

    def model_card(self) -> ModelCard:
        defaults = {"num_image_tokens": self.engine.num_image_tokens, "hidden_size": self.engine.hidden_size,
                    "dtype": self.config.dtype, "max_batch": self.config.max_batch}
        return ModelCard(name=self.engine.model_name, component=self.component, kinds=["embeddings"],
                         input_modalities=["image"], output_modalities=["embedding"], defaults=defaults,
                         num_image_tokens=self.engine.num_image_tokens, created=int(time.time()))

    def model_files(self) -> dict[str, bytes]:
        return {}

    def load_report(self) -> dict:
        return {"active_decode_blocks": len(self._inflight)}  # images being encoded: a load signal

    async def start(self, kv_sink: KvEventSink) -> None:
        if self.metrics_port:
            from prometheus_client import start_http_server

            self._server, _ = start_http_server(self.metrics_port, self.metrics_host, registry=self.metrics.registry)

    async def stop(self) -> None:
        await self.batcher.close()
        self.executor.shutdown(wait=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def kv_dump(self) -> list:
        return []

    def clear_cache(self) -> None:
        self.cache.clear()
        self._refresh_gauges()

    async def generate(self, request: WorkRequest, ctx: RequestContext) -> AsyncIterator[EmbeddingOutput | Final]:
        """One EmbeddingOutput (inline, or through the Object Store when over the payload limit), then a Final."""
        if not isinstance(request, EncodeRequest):
            raise InvalidRequest("the encode worker embeds images only", param="$.model")
        embedding, cached = await self.embed(request, ctx.blobs)
        from workers.tensors import tensor_to_bytes  # torch is loaded by now; keep the CLI import light

        dtype, shape, data = tensor_to_bytes(embedding)
        data, name = await ctx.blobs.pack(data) if ctx.blobs is not None else (data, None)
        yield EmbeddingOutput(request_id=request.request_id, seq=0, mm_hash=request.mm_hash, cached=cached,
                              embedding=TensorData(dtype=dtype, shape=shape, data=data, object_name=name))
        yield Final(request_id=request.request_id, seq=0,
                    usage=Usage(images=1, prompt_tokens=shape[0], cached_tokens=shape[0] if cached else 0))

    async def embed(self, request: EncodeRequest, blobs=None):
        """(embedding, was it cached): the cache, else one shared encoding per mm_hash batched with other requests."""
        found = self.cache.get(request.mm_hash)
        if found is not None:
            self.metrics.cache_lookups.labels("hit").inc()
            return found, True
        self.metrics.cache_lookups.labels("miss").inc()
        pending = self._inflight.get(request.mm_hash)
        if pending is None:
            pending = self._inflight[request.mm_hash] = asyncio.ensure_future(self._encode(request, blobs))
            pending.add_done_callback(lambda _: self._inflight.pop(request.mm_hash, None))
        return await asyncio.shield(pending), False

    async def _encode(self, request: EncodeRequest, blobs):
        data = await blobs.unpack(request.image, request.image_object) if blobs is not None else request.image
        prepared = await asyncio.to_thread(self._decode_and_prepare, data, request.mm_hash)  # off the encode thread
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.batcher.submit(EncodeJob(prepared, future, loop))
        embedding = await future
        self.metrics.cache_evictions.inc(self.cache.put(request.mm_hash, embedding))
        self._refresh_gauges()
        return embedding

    def _decode_and_prepare(self, data: bytes, mm_hash: int):
        """Decode with the frontend's checks (shell.images), check the pixels' hash, resize and crop."""
        decoded = decode_image(data, self.media.max_pixels)
        if decoded.mm_hash != mm_hash:
            raise InvalidRequest(f"the image's pixels hash to {decoded.mm_hash:#x}, not mm_hash {mm_hash:#x}",
                                 param="$.mm_hash")
        return self.engine.prepare(decoded.image)

    def _run_batch(self, jobs: list[EncodeJob]) -> None:
        """On the encode thread: one forward for every queued image."""
        started = time.perf_counter()
        try:
            embeddings = self.engine.encode_prepared([job.image for job in jobs])
        except Exception as exc:
            for job in jobs:
                job.fail(exc)
            return
        self.metrics.forward.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.images.inc(len(jobs))
        for job, embedding in zip(jobs, embeddings):
            job.done(embedding)

    def _refresh_gauges(self) -> None:
        self.metrics.cache_bytes.set(self.cache.num_bytes)
        self.metrics.cache_entries.set(len(self.cache))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `diffmesh worker encode`; each also reads DIFFMESH_ENCODE_<FIELD> (e.g. DIFFMESH_ENCODE_MAX_BATCH)."""
    model = parser.add_argument_group("vision encoder")
    model.add_argument("--model", help="CLIP/SigLIP vision tower directory or hub id, optionally with a diffmesh projector "
                                       "(default: a tiny random one, built on first run)")
    model.add_argument("--served-model-name", help=f"name language models refer to (default: the directory name, or {DEFAULT_MODEL_NAME})")
    model.add_argument("--model-cache-dir", default=os.environ.get("DIFFMESH_MODEL_CACHE", MODEL_CACHE_DIR),
                       help="where the tiny default encoder is built (env DIFFMESH_MODEL_CACHE)")
    model.add_argument("--tiny-family", choices=["clip", "siglip"], default="clip", help="which tiny default to build without --model")
    model.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    model.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: float32")
    model.add_argument("--feature-layer", type=int, help="hidden-state layer fed to the projector (default: the projector's, -1)")
    model.add_argument("--threads", type=int, dest="num_threads", help="torch intra-op threads")
    serving = parser.add_argument_group("encode serving")
    serving.add_argument("--max-batch", type=int, help="images per vision forward, across requests (default 8)")
    serving.add_argument("--batch-wait", type=float, dest="batch_wait_s", help="seconds an idle worker waits for companions (default 0)")
    serving.add_argument("--max-queue", type=int, help="requests waiting beyond capacity (default 64)")
    serving.add_argument("--cache-bytes", type=int, help="embedding cache budget in bytes (default 256 MiB; 0 = off)")
    serving.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics (embedding cache, batches) on this port")
    serving.add_argument("--metrics-host", default="0.0.0.0", help="bind address of the metrics server")


def build_engine(args: argparse.Namespace) -> EncodeWorker:
    """Load the vision tower the flags name (building the tiny default on first run) and wrap it for the bus."""
    import torch

    from workers.encode.engine import EncodeEngine

    config = config_from_args(args)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    return EncodeWorker(EncodeEngine(config), media_from_env(), metrics_port=args.metrics_port,
                        metrics_host=args.metrics_host)


def config_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> EncodeConfig:
    """Defaults, then DIFFMESH_ENCODE_* env vars, then flags; no --model means the tiny default encoder."""
    env = os.environ if env is None else env
    model, name = args.model or env.get(ENV_PREFIX + "MODEL"), args.served_model_name
    if model is None:
        from workers.encode.tiny import ensure_tiny_encoder

        model = str(ensure_tiny_encoder(Path(args.model_cache_dir).expanduser(), family=args.tiny_family))
        name = name or f"tiny-{args.tiny_family}"
    device = args.device or env.get(ENV_PREFIX + "DEVICE") or _default_device()
    return from_env(
        EncodeConfig, env, prefix=ENV_PREFIX, model=model, served_name=name, device=device, dtype=args.dtype,
        max_batch=args.max_batch, batch_wait_s=args.batch_wait_s, max_queue=args.max_queue, cache_bytes=args.cache_bytes,
        feature_layer=args.feature_layer, num_threads=args.num_threads,
    )  # fmt: skip


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
