"""Bus adapter of the image engine: model card (output modality image), one ImageOutput per image, CLI flags.

Image workers keep no token cache: block_size 0 and no KV events, so the router runs them in approximate mode.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from shell.config import MODEL_CACHE_DIR, from_env
from protocol.errors import InvalidRequest
from protocol.events import HealthCheck, ModelCard
from protocol.work import Final, ImageOutput, ImageRequest, WorkRequest
from workers.contract import KvEventSink, RequestContext
from workers.image.storage import DEFAULT_STORAGE_URL, StorageConfig

DEFAULT_MODEL_NAME = "tiny-sd"  # served name of the tiny default pipeline `diffmesh up` builds
ENV_PREFIX = "DIFFMESH_IMAGE_"


class ImageWorker:
    """WorkerEngine for diffusers text-to-image pipelines (component "image")."""

    component = "image"

    def __init__(self, engine, max_queue: int | None = None):
        self.engine = engine  # workers.image.engine.ImageEngine
        self.max_queue = 4 * engine.config.max_batch if max_queue is None else max_queue

    @property
    def model_name(self) -> str:
        return self.engine.config.served_name or Path(self.engine.config.model.rstrip("/")).name

    def worker_card(self) -> dict:
        return {
            "model": self.model_name,
            "capacity": self.engine.config.max_batch,  # requests admitted at once: enough to fill one batch
            "max_queue": self.max_queue,
            "block_size": 0,
            "kv_total_blocks": 0,
            "publishes_kv_events": False,
        }

    def model_card(self) -> ModelCard:
        return ModelCard(
            name=self.model_name,
            component=self.component,
            kinds=["images"],
            input_modalities=["text"],
            output_modalities=["image"],
            defaults=self._defaults(),
            created=int(time.time()),
            health_check=HealthCheck.images(self.model_name, self._defaults()["size"]),
        )

    def _defaults(self) -> dict[str, float | int | str | bool]:
        loaded = self.engine.load()
        limits = loaded.limits
        return {
            "family": loaded.family.name,
            "size": f"{limits.default_width}x{limits.default_height}",
            "min_side": limits.min_side,
            "max_side": limits.max_side,
            "size_multiple": limits.size_multiple,
            "steps": limits.default_steps,
            "max_steps": limits.max_steps,
            "guidance_scale": limits.default_guidance,
            "step_cache": self.engine.config.step_cache and limits.supports_step_cache,
            "max_batch": self.engine.config.max_batch,
        }

    def model_files(self) -> dict[str, bytes]:
        return {}  # prompts travel as text; the frontend needs no tokenizer

    def load_report(self) -> dict:
        return {"active_decode_blocks": self.engine.num_images_in_flight}  # images queued or running: a load signal

    async def start(self, kv_sink: KvEventSink) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    def kv_dump(self) -> list:
        return []

    def clear_cache(self) -> None:
        pass  # step caches live only within one pipeline call

    async def generate(self, request: WorkRequest, ctx: RequestContext) -> AsyncIterator[ImageOutput | Final]:
        """Partial images (streaming), then one ImageOutput per image, then a Final with Usage(images=n)."""
        if not isinstance(request, ImageRequest):
            raise InvalidRequest("the image worker serves /v1/images/generations only", param="$.model")
        async for out in self.engine.generate(request, is_cancelled=ctx.is_cancelled, deadline=ctx.deadline):
            yield out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `diffmesh worker image`; each also reads DIFFMESH_IMAGE_<FIELD> (e.g. DIFFMESH_IMAGE_MAX_BATCH)."""
    model = parser.add_argument_group("image model")
    model.add_argument("--model", help="diffusers pipeline directory or hub id (default: a tiny random pipeline, built on first run)")
    model.add_argument("--served-model-name", help=f"name clients use (default: the directory name, or {DEFAULT_MODEL_NAME})")
    model.add_argument("--model-cache-dir", default=os.environ.get("DIFFMESH_MODEL_CACHE", MODEL_CACHE_DIR),
                       help="where the tiny default pipeline is built (env DIFFMESH_MODEL_CACHE)")
    model.add_argument("--tiny-family", choices=["sd", "flux"], default="sd", help="which tiny default to build without --model")
    model.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    model.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="default: bfloat16 on cuda, float32 on cpu")
    model.add_argument("--cpu-offload", action="store_true", default=None, help="keep components on the CPU until they run (CUDA)")
    model.add_argument("--threads", type=int, dest="num_threads", help="torch CPU threads (default: one per core)")
    serving = parser.add_argument_group("image serving")
    serving.add_argument("--max-batch", type=int, help="images per pipeline call (default 8)")
    serving.add_argument("--max-queue", type=int, help="requests waiting beyond --max-batch (default 4 x max batch)")
    serving.add_argument("--batch-wait", type=float, dest="batch_wait_s", help="seconds an idle worker waits for companions (default 0)")
    serving.add_argument("--max-steps", type=int, help="cap on num_inference_steps (default 100)")
    serving.add_argument("--steps", type=int, dest="default_steps", help="default steps (default: the model's)")
    serving.add_argument("--max-side", type=int, help="largest width/height in pixels (default: 2x the model's size)")
    serving.add_argument("--step-cache", action="store_true", default=None, help="reuse block outputs across steps by default")
    serving.add_argument("--step-cache-threshold", type=float, help="relative first-block change below which steps reuse the cache")
    serving.add_argument("--no-batch-invariant", dest="batch_invariant", action="store_false", default=None,
                         help="allow batch-size dependent kernels (faster; batched bytes may differ from solo)")
    media = parser.add_argument_group("url responses")
    media.add_argument("--storage-url", help="fsspec URL or directory for url responses (env DIFFMESH_MEDIA_DIR in `diffmesh up`)")
    media.add_argument("--public-base-url", help="URL prefix clients fetch objects from, e.g. http://host:8000/v1/files")


def build_engine(args: argparse.Namespace) -> ImageWorker:
    """Load the pipeline named by the flags (building the tiny default on first run) and wrap it for the bus."""
    from workers.image.engine import ImageEngine

    engine = ImageEngine(config_from_args(args))
    engine.load()
    return ImageWorker(engine, max_queue=args.max_queue)


def config_from_args(args: argparse.Namespace, env: dict[str, str] | None = None):
    """Defaults, then DIFFMESH_IMAGE_* env vars, then flags; no --model means the tiny default pipeline."""
    from workers.image.engine import EngineConfig

    env = os.environ if env is None else env
    model, name = args.model or env.get(ENV_PREFIX + "MODEL"), args.served_model_name
    if model is None:
        from workers.image.tiny import ensure_tiny_image

        model = str(ensure_tiny_image(Path(args.model_cache_dir).expanduser(), args.tiny_family))
        name = name or f"tiny-{args.tiny_family}"
    storage = StorageConfig(
        url=args.storage_url or env.get(ENV_PREFIX + "STORAGE_URL") or env.get("DIFFMESH_MEDIA_DIR") or DEFAULT_STORAGE_URL,
        public_base_url=args.public_base_url or env.get(ENV_PREFIX + "PUBLIC_BASE_URL") or env.get("DIFFMESH_PUBLIC_BASE_URL"),
    )
    return from_env(
        EngineConfig, env, prefix=ENV_PREFIX, model=model, served_name=name, device=args.device, dtype=args.dtype,
        cpu_offload=args.cpu_offload, num_threads=args.num_threads, max_batch=args.max_batch,
        batch_wait_s=args.batch_wait_s, max_steps=args.max_steps, default_steps=args.default_steps,
        max_side=args.max_side, step_cache=args.step_cache, step_cache_threshold=args.step_cache_threshold,
        batch_invariant=args.batch_invariant, storage=storage,
    )  # fmt: skip
