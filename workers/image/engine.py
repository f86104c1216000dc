"""Image-diffusion engine: validated requests -> batched diffusers pipeline calls -> encoded images (no NATS here).

`generate()` yields protocol ImageOutput messages (partials first when streaming, then one per image) and one Final,
all with seq=0 (the runtime numbers them). The pipeline runs on one dedicated thread; the event loop only queues.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from protocol.errors import DeadlineExceeded, EngineError, InvalidRequest, MeshError, PayloadTooLarge
from protocol.work import Final, ImageOutput, ImageRequest, Usage
from workers.batcher import Batcher
from workers.image.encode import encode_image
from workers.image.invariant import batch_invariant
from workers.image.jobs import Done, Encoded, Failed, Job, StepMonitor, Stopped
from workers.image.loader import LoadedPipeline, check_model_exists, decode_latents, load_pipeline
from workers.image.request import resolve_request
from workers.image.storage import MediaStore, StorageConfig

MAX_INLINE_BYTES = 8 * 1024 * 1024 - 64 * 1024  # one image per NATS message (8 MB max_payload) with envelope room


@dataclass(frozen=True)
class EngineConfig:
    model: str  # local diffusers directory or hub id
    served_name: str | None = None  # model name clients use; None = the directory name
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16
    cpu_offload: bool = False
    max_batch: int = 8  # images per pipeline call
    batch_wait_s: float = 0.0  # extra wait for companions when idle (0: only what is queued already)
    max_steps: int = 100  # cap on num_inference_steps
    default_steps: int | None = None  # None = the model's / family's default
    default_guidance: float | None = None
    max_side: int | None = None  # None = 2x the model's default size
    step_cache: bool = False  # worker default when a request does not say
    step_cache_kind: str | None = None  # which cache `step_cache` means (deepcache | first_block | teacache); None = family's
    step_cache_threshold: float | None = None  # None = the model's / family's default
    teacache_threshold: float | None = None  # None = the model's / TeaCache's default
    step_cache_max_skips: int = 2
    batch_invariant: bool | None = None  # None = on for CPU (batched bytes == solo bytes), off on CUDA
    num_threads: int | None = None  # torch intra-op threads (None = torch's default, one per core)
    max_frames: int | None = None  # video pipelines: cap on num_frames (None = 4x the model's default length)
    storage: StorageConfig = field(default_factory=StorageConfig)
    max_inline_bytes: int = MAX_INLINE_BYTES


@dataclass
class EngineStats:
    num_pipeline_calls: int = 0
    num_denoiser_calls: int = 0  # UNet / transformer forwards
    num_images: int = 0  # final images produced
    num_cancelled: int = 0


class PipelineHost:
    """One pipeline on its own thread, its media store and counters; the image and video engines build on it."""

    thread_name = "pipeline"

    def __init__(self, config: EngineConfig):
        check_model_exists(config.model)
        self.config = config
        self.stats = EngineStats()
        self.store = MediaStore(config.storage)
        self.loaded: LoadedPipeline | None = None
        self.num_images_in_flight = 0  # images (or videos) queued or running: a load signal for the router
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)

    def load(self) -> LoadedPipeline:
        """Load the pipeline now (blocking); `start()` does this on the pipeline thread."""
        if self.loaded is None:
            if self.config.num_threads:
                torch.set_num_threads(self.config.num_threads)
            self.loaded = load_pipeline(self.config)
            self.check_loaded(self.loaded)
            self.loaded.denoiser.register_forward_pre_hook(self._count_denoiser_call)
        return self.loaded

    def check_loaded(self, loaded: LoadedPipeline) -> None:
        if loaded.family.kind != "image":
            raise InvalidRequest(f"{self.config.model} is a {loaded.family.kind} pipeline, not an image one", param="$.model")

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.load)

    def _count_denoiser_call(self, module, args) -> None:
        self.stats.num_denoiser_calls += 1


class ImageEngine(PipelineHost):
    """Owns one image pipeline, its batcher and the media store; `start()` loads, `generate()` serves."""

    thread_name = "image-pipeline"

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self.batcher = Batcher(self._run_batch, self._executor, config.max_batch, config.batch_wait_s)

    @property
    def is_invariant(self) -> bool:
        if self.config.batch_invariant is not None:
            return self.config.batch_invariant
        return self.loaded is not None and self.loaded.device.type == "cpu"

    async def wait_idle(self) -> None:
        """Return once no pipeline call is queued or running."""
        await self.batcher.wait_idle()

    async def stop(self) -> None:
        await self.batcher.close()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)  # a running call finishes

    async def generate(
        self, request: ImageRequest, is_cancelled: Callable[[], bool] | None = None, deadline: float | None = None,
    ) -> AsyncIterator[ImageOutput | Final]:
        """Validate, queue, and stream this request's images; raises InvalidRequest before any work on bad input."""
        loaded = self.loaded or await asyncio.to_thread(self.load)
        spec = resolve_request(request, loaded.limits, self.config.step_cache)
        is_cache_invariant = spec.step_cache == "deepcache"  # per-image decisions; the DiT caches decide per batch
        job = Job(spec, spec.batch_key(is_cache_invariant), asyncio.get_running_loop(), is_cancelled, deadline)
        self.batcher.submit(job)
        self.num_images_in_flight += spec.n
        try:
            while True:
                item = await job.queue.get()
                match item:
                    case Encoded():
                        yield await self._to_output(job, item)
                    case Done(num_forwards=num_forwards):
                        yield Final(request_id=spec.request_id, seq=0, usage=Usage(images=spec.n, forward_passes=num_forwards))
                        return
                    case Stopped(reason="cancelled"):
                        yield Final(request_id=spec.request_id, seq=0, finish_reason="cancelled")
                        return
                    case Stopped():
                        raise DeadlineExceeded(f"request {spec.request_id} passed its deadline")
                    case Failed(error=error):
                        raise error
        finally:
            job.is_abandoned = True  # a consumer that stops iterating (client gone) cancels the work
            self.num_images_in_flight -= spec.n

    async def _to_output(self, job: Job, item: Encoded) -> ImageOutput:
        spec = job.spec
        fields = dict(request_id=spec.request_id, seq=0, index=item.index, output_format=spec.output_format,
                      width=spec.width, height=spec.height, partial_index=item.partial_index)
        if spec.response_format == "url" and item.partial_index is None:
            name = f"{item.index}.{spec.output_format}"
            key = self.store.make_key(spec.user, spec.request_id, name)
            fields["url"] = await asyncio.to_thread(self.store.put, key, item.data)
            if not spec.is_streaming:  # streamed events always carry the image itself (OpenAI streams b64 only)
                return ImageOutput(**fields)
        if len(item.data) > self.config.max_inline_bytes:
            raise PayloadTooLarge(
                f"image of {len(item.data)} bytes exceeds the {self.config.max_inline_bytes}-byte message limit; "
                "use response_format=url or output_format jpeg/webp", param="$.response_format",
            )
        return ImageOutput(**fields, data=item.data)

    # --- pipeline thread ------------------------------------------------------------------------

    def _run_batch(self, jobs: list[Job]) -> None:
        """One pipeline call for `jobs` (same size/steps/guidance); every job ends with Done, Stopped or Failed."""
        loaded = self.loaded
        monitor = StepMonitor(jobs, self._encode_latents)
        calls_before = self.stats.num_denoiser_calls
        try:
            latents = self._call_pipeline(loaded, jobs, monitor)
        except StepMonitor.AllStopped:
            self.stats.num_cancelled += len(jobs)
            return
        except MeshError as exc:
            _fail_all(jobs, exc)
            return
        except Exception as exc:  # a pipeline bug fails this batch, not the worker
            _fail_all(jobs, EngineError(f"pipeline failed: {type(exc).__name__}: {exc}"))
            return
        num_forwards = self.stats.num_denoiser_calls - calls_before
        for job, rows in monitor.live_slices():
            self._finish_job(job, latents[rows], num_forwards)

    def _call_pipeline(self, loaded: LoadedPipeline, jobs: list[Job], monitor: StepMonitor) -> torch.Tensor:
        spec = jobs[0].spec
        pipe = loaded.pipe_for(spec.kind)
        kwargs = dict(
            prompt=[job.spec.prompt for job in jobs for _ in range(job.spec.n)],
            height=spec.height, width=spec.width, num_inference_steps=spec.steps, guidance_scale=spec.guidance,
            generator=[torch.Generator("cpu").manual_seed(seed) for job in jobs for seed in job.spec.seeds],
            output_type="latent", callback_on_step_end=monitor, callback_on_step_end_tensor_inputs=["latents"],
            **loaded.call_kwargs,
        )
        if loaded.family.supports_negative_prompt:
            kwargs["negative_prompt"] = [job.spec.negative_prompt for job in jobs for _ in range(job.spec.n)]
        if spec.edit is not None:
            kwargs = without_size(pipe, {**kwargs, **edit_kwargs(pipe, jobs)})
        num_steps = spec.edit.num_steps if spec.edit else spec.steps
        for kind, cache in loaded.step_caches.items():
            cache.begin(len(kwargs["prompt"]), kind == spec.step_cache, num_steps=num_steps)
        self.stats.num_pipeline_calls += 1
        try:
            with torch.inference_mode(), batch_invariant(self.is_invariant):
                return pipe(**kwargs).images
        finally:
            for cache in loaded.step_caches.values():
                cache.end()

    def _finish_job(self, job: Job, latents: torch.Tensor, num_forwards: int) -> None:
        try:
            for item in self._encode_latents(latents, job.spec):
                job.emit(item)
        except Exception as exc:
            job.emit(Failed(EngineError(f"decoding failed: {type(exc).__name__}: {exc}")))
            return
        self.stats.num_images += job.spec.n
        job.emit(Done(num_forwards))

    def _encode_latents(self, latents: torch.Tensor, spec) -> list[Encoded]:
        with torch.inference_mode(), batch_invariant(self.is_invariant):
            images = decode_latents(self.loaded, latents, spec.width, spec.height)
        return [
            Encoded(index, None, encode_image(image, spec.output_format, spec.output_compression, spec.is_transparent))
            for index, image in enumerate(images)
        ]


def edit_kwargs(pipe, jobs: list[Job]) -> dict:
    """Input images (and masks) per output image; pipelines without height/width take the pre-sized image."""
    edits = [job.spec.edit for job in jobs for _ in range(job.spec.n)]
    kwargs: dict = {"image": [edit.image for edit in edits], "strength": edits[0].strength}
    if edits[0].mask is not None:
        kwargs["mask_image"] = [edit.mask for edit in edits]
    return kwargs


def without_size(pipe, kwargs: dict) -> dict:
    """SD's img2img takes no height/width (the input image, already resized, sets the size)."""
    params = inspect.signature(pipe.__call__).parameters
    return {k: v for k, v in kwargs.items() if k not in ("height", "width") or k in params}


def _fail_all(jobs: list[Job], error: MeshError) -> None:
    for job in jobs:
        job.emit(Failed(error))

