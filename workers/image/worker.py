"""Bus adapter of the diffusers engines: image pipelines (ImageOutput per image) and video pipelines (progress per
step, then one stored MP4), their model cards and CLI flags.

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
from protocol.work import Final, ImageOutput, ImageRequest, VideoRequest, WorkRequest
from workers.contract import KvEventSink, RequestContext
from workers.image.storage import DEFAULT_STORAGE_URL, StorageConfig

DEFAULT_MODEL_NAME = "tiny-sd"  # served name of the tiny default pipeline `diffmesh up` builds
ENV_PREFIX = "DIFFMESH_IMAGE_"


class ImageWorker:
    """WorkerEngine for diffusers pipelines (component "image"): text-to-image, edits, and text-to-video."""

    component = "image"

    def __init__(self, engine, max_queue: int | None = None):
        self.engine = engine  # workers.image.engine.ImageEngine or workers.image.video.VideoEngine
        self.max_queue = 4 * engine.config.max_batch if max_queue is None else max_queue

    @property
    def is_video(self) -> bool:
        return self.engine.load().family.kind == "video"

    @property
    def kinds(self) -> list[str]:
        return ["videos"] if self.is_video else ["images"]

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
            "kinds": self.kinds,
        }

    def model_card(self) -> ModelCard:
        return ModelCard(
            name=self.model_name,
            component=self.component,
            kinds=self.kinds,
            input_modalities=["text", "image"] if not self.is_video else ["text"],  # edits take an image
            output_modalities=["video"] if self.is_video else ["image"],
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
            "step_caches": ",".join(limits.step_caches),
            "edits": ",".join(limits.edit_kinds),
            "max_batch": self.engine.config.max_batch,
            **({"num_frames": limits.default_frames, "fps": limits.default_fps, "max_frames": limits.max_frames}
               if self.is_video else {}),
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
        """Images: partials (streaming), one ImageOutput per image, a Final. Videos: progress, one VideoOutput, a Final."""
        wanted = VideoRequest if self.is_video else ImageRequest
        if not isinstance(request, wanted):
            endpoint = "/v1/videos" if self.is_video else "/v1/images/generations and /v1/images/edits"
            raise InvalidRequest(f"model {self.model_name!r} serves {endpoint} only", param="$.model")
        async for out in self.engine.generate(request, is_cancelled=ctx.is_cancelled, deadline=ctx.deadline):
            yield out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `diffmesh worker image`; each also reads DIFFMESH_IMAGE_<FIELD> (e.g. DIFFMESH_IMAGE_MAX_BATCH)."""
    model = parser.add_argument_group("image model")
    model.add_argument("--model", help="diffusers pipeline directory or hub id (default: a tiny random pipeline, built on first run)")
    model.add_argument("--served-model-name", help=f"name clients use (default: the directory name, or {DEFAULT_MODEL_NAME})")
    model.add_argument("--model-cache-dir", default=os.environ.get("DIFFMESH_MODEL_CACHE", MODEL_CACHE_DIR),
                       help="where the tiny default pipeline is built (env DIFFMESH_MODEL_CACHE)")
    model.add_argument("--tiny-family", choices=["shapes", "sd", "flux", "wan"], default="shapes",
                       help="without --model: shapes = the small SD this repo trained and ships (draws the shape and "
                            "colours a prompt names); sd, flux, wan (text-to-video) = random weights, built on first run")
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
    serving.add_argument("--step-cache-kind", choices=["deepcache", "first_block", "teacache"],
                         help="which cache --step-cache (and nvext.step_cache=true) means (default: the family's first)")
    serving.add_argument("--step-cache-threshold", type=float, help="relative first-block change below which steps reuse the cache")
    serving.add_argument("--teacache-threshold", type=float, help="TeaCache: accumulated rescaled change below which steps are skipped")
    serving.add_argument("--max-frames", type=int, help="video pipelines: cap on num_frames (default 4x the model's length)")
    serving.add_argument("--no-batch-invariant", dest="batch_invariant", action="store_false", default=None,
                         help="allow batch-size dependent kernels (faster; batched bytes may differ from solo)")
    media = parser.add_argument_group("url responses")
    media.add_argument("--storage-url", help="fsspec URL or directory for url responses (env DIFFMESH_MEDIA_DIR in `diffmesh up`)")
    media.add_argument("--public-base-url", help="URL prefix clients fetch objects from, e.g. http://host:8000/v1/files")


def build_engine(args: argparse.Namespace) -> ImageWorker:
    """Load the pipeline named by the flags (building the tiny default on first run) and wrap it for the bus."""
    from diffusers import DiffusionPipeline

    from workers.image.engine import ImageEngine
    from workers.image.families import family_for_class
    from workers.image.video import VideoEngine

    config = config_from_args(args)
    family = family_for_class(DiffusionPipeline.load_config(config.model).get("_class_name", "?"))
    engine = VideoEngine(config) if family.kind == "video" else ImageEngine(config)
    engine.load()
    return ImageWorker(engine, max_queue=args.max_queue)


def config_from_args(args: argparse.Namespace, env: dict[str, str] | None = None):
    """Defaults, then DIFFMESH_IMAGE_* env vars, then flags; no --model means the tiny default pipeline."""
    from workers.image.engine import EngineConfig

    env = os.environ if env is None else env
    model, name = args.model or env.get(ENV_PREFIX + "MODEL"), args.served_model_name
    if model is None:
        from workers.image.tiny import DEMO_MODEL_DIR, ensure_tiny_image

        family = args.tiny_family
        model = str(DEMO_MODEL_DIR if family == "shapes" else ensure_tiny_image(Path(args.model_cache_dir).expanduser(), family))
        name = name or ("tiny-sd" if family == "shapes" else f"tiny-{family}")
    storage = StorageConfig(
        url=args.storage_url or env.get(ENV_PREFIX + "STORAGE_URL") or env.get("DIFFMESH_MEDIA_DIR") or DEFAULT_STORAGE_URL,
        public_base_url=args.public_base_url or env.get(ENV_PREFIX + "PUBLIC_BASE_URL") or env.get("DIFFMESH_PUBLIC_BASE_URL"),
    )
    return from_env(
        EngineConfig, env, prefix=ENV_PREFIX, model=model, served_name=name, device=args.device, dtype=args.dtype,
        cpu_offload=args.cpu_offload, num_threads=args.num_threads, max_batch=args.max_batch,
        batch_wait_s=args.batch_wait_s, max_steps=args.max_steps, default_steps=args.default_steps,
        max_side=args.max_side, step_cache=args.step_cache, step_cache_threshold=args.step_cache_threshold,
        step_cache_kind=args.step_cache_kind, teacache_threshold=args.teacache_threshold, max_frames=args.max_frames,
        batch_invariant=args.batch_invariant, storage=storage,
    )  # fmt: skip
