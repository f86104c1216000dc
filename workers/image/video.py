"""Text-to-video engine (Wan family): VideoRequest -> progress per denoising step -> an MP4 in the media store.

One job at a time on a dedicated pipeline thread (videos do not batch here); the rest wait in FIFO order.
`generate()` yields a VideoProgress at once (resolved size, frames, fps), one when the job starts, one after every
step, then a VideoOutput and a Final. Cancellation and the deadline are checked between steps. No NATS here.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import torch

from protocol.errors import DeadlineExceeded, EngineError, InvalidRequest, MeshError
from protocol.work import Final, ImageRequest, Usage, VideoOutput, VideoProgress, VideoRequest
from workers.image.engine import PipelineHost
from workers.image.loader import LoadedPipeline
from workers.image.mp4 import encode_mp4, to_uint8
from workers.image.request import MAX_SEED, ModelLimits, resolve_request, resolve_step_cache

MAX_FPS = 120


@dataclass(frozen=True)
class VideoSpec:
    request_id: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    guidance: float
    seed: int
    step_cache: str | None
    user: str | None


class _Stop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def resolve_video(request: VideoRequest, limits: ModelLimits, default_step_cache: bool | str) -> VideoSpec:
    """Validate every field against the model (sizes, steps and guidance as for images); 400s name the field."""
    image = resolve_request(ImageRequest(request_id=request.request_id, model=request.model, prompt=request.prompt,
                                         width=request.width, height=request.height, seed=request.seed,
                                         num_inference_steps=request.num_inference_steps,
                                         guidance_scale=request.guidance_scale, negative_prompt=request.negative_prompt),
                            limits, False)
    fps = limits.default_fps if request.fps is None else request.fps
    if not 1 <= fps <= MAX_FPS:
        raise InvalidRequest(f"fps must be between 1 and {MAX_FPS}, got {fps}", param="$.fps")
    return VideoSpec(
        request_id=request.request_id, prompt=request.prompt, negative_prompt=image.negative_prompt,
        width=image.width, height=image.height, num_frames=resolve_frames(request, limits, fps), fps=fps,
        steps=image.steps, guidance=image.guidance,
        seed=secrets.randbits(63) if request.seed is None else request.seed % (MAX_SEED + 1),
        step_cache=resolve_step_cache(request.step_cache, limits, default_step_cache), user=request.user,
    )


def resolve_frames(request: VideoRequest, limits: ModelLimits, fps: int) -> int:
    """num_frames as asked (on the model's grid), else seconds x fps snapped to the grid, else the model's default."""
    multiple, top = limits.frame_multiple, limits.max_frames
    if request.num_frames is not None and request.seconds is not None:
        raise InvalidRequest("give seconds or num_frames, not both", param="$.num_frames")
    if request.num_frames is not None:
        frames = request.num_frames
        if not 1 <= frames <= top or (frames - 1) % multiple:
            raise InvalidRequest(f"num_frames must be 1 + a multiple of {multiple}, at most {top}; got {frames}",
                                 param="$.num_frames")
        return frames
    if request.seconds is None:
        return limits.default_frames
    frames = 1 + multiple * max(0, round((request.seconds * fps - 1) / multiple))
    if not 0 < request.seconds or frames > top:
        raise InvalidRequest(f"seconds must be > 0 and give at most {top} frames at {fps} fps", param="$.seconds")
    return frames


class VideoEngine(PipelineHost):
    """Owns one video pipeline and the media store; `start()` loads, `generate()` serves."""

    thread_name = "video-pipeline"

    def check_loaded(self, loaded: LoadedPipeline) -> None:
        if loaded.family.kind != "video":
            raise InvalidRequest(f"{self.config.model} is not a video pipeline", param="$.model")

    async def stop(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def generate(self, request: VideoRequest, is_cancelled: Callable[[], bool] | None = None,
                       deadline: float | None = None) -> AsyncIterator[VideoProgress | VideoOutput | Final]:
        """Validate (InvalidRequest before any work), queue, and stream progress, then the stored MP4."""
        loaded = self.loaded or await asyncio.to_thread(self.load)
        spec = resolve_video(request, loaded.limits, self.config.step_cache)
        yield self._progress(spec, 0)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        stopper = _Stopper(is_cancelled, deadline)
        self.num_images_in_flight += 1
        future = loop.run_in_executor(self._executor, self._run, spec, stopper,
                                      lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        try:
            while not future.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield self._progress(spec, getter.result(), is_running=True)
                else:
                    getter.cancel()
            yield await self._finish(spec, future.result())
        except _Stop as stop:
            if stop.reason == "deadline":
                raise DeadlineExceeded(f"video {spec.request_id} passed its deadline") from None
            self.stats.num_cancelled += 1
            yield Final(request_id=spec.request_id, seq=0, finish_reason="cancelled")
            return
        finally:
            stopper.is_abandoned = True  # a consumer that stops reading (client gone) stops the job
            self.num_images_in_flight -= 1
        yield Final(request_id=spec.request_id, seq=0, usage=Usage(frames=spec.num_frames, forward_passes=future.result()[1]))

    def _progress(self, spec: VideoSpec, step: int, is_running: bool = False) -> VideoProgress:
        return VideoProgress(request_id=spec.request_id, seq=0, step=step, num_steps=spec.steps, num_frames=spec.num_frames,
                             width=spec.width, height=spec.height, fps=spec.fps, is_running=is_running)

    async def _finish(self, spec: VideoSpec, result: tuple[bytes, int]) -> VideoOutput:
        data = result[0]
        key = self.store.make_key(spec.user, spec.request_id, "video.mp4")
        url = await asyncio.to_thread(self.store.put, key, data)
        return VideoOutput(request_id=spec.request_id, seq=0, key=key, url=url, num_bytes=len(data),
                           num_frames=spec.num_frames, width=spec.width, height=spec.height, fps=spec.fps)

    # --- pipeline thread ------------------------------------------------------------------------

    def _run(self, spec: VideoSpec, stopper: _Stopper, on_step: Callable[[int], None]) -> tuple[bytes, int]:
        stopper.check()  # cancelled while queued: no pipeline call at all
        on_step(0)
        loaded, calls_before = self.loaded, self.stats.num_denoiser_calls

        def callback(pipe, step: int, timestep, tensors: dict) -> dict:
            on_step(step + 1)
            stopper.check()
            return tensors

        kwargs = dict(prompt=spec.prompt, negative_prompt=spec.negative_prompt or None, height=spec.height,
                      width=spec.width, num_frames=spec.num_frames, num_inference_steps=spec.steps,
                      guidance_scale=spec.guidance, generator=torch.Generator("cpu").manual_seed(spec.seed),
                      output_type="np", callback_on_step_end=callback, **loaded.call_kwargs)
        for kind, cache in loaded.step_caches.items():
            cache.begin(1, kind == spec.step_cache, num_steps=spec.steps)
        self.stats.num_pipeline_calls += 1
        try:
            with torch.inference_mode():
                frames = loaded.pipe(**kwargs).frames[0]
        except (_Stop, MeshError):
            raise
        except Exception as exc:  # a pipeline bug fails this job, not the worker
            raise EngineError(f"video pipeline failed: {type(exc).__name__}: {exc}") from exc
        finally:
            for cache in loaded.step_caches.values():
                cache.end()
        self.stats.num_images += 1
        return encode_mp4(to_uint8(frames), spec.fps), self.stats.num_denoiser_calls - calls_before


class _Stopper:
    """Checked between steps on the pipeline thread: raises _Stop when the job was cancelled or expired."""

    def __init__(self, is_cancelled: Callable[[], bool] | None, deadline: float | None):
        self.is_cancelled = is_cancelled or (lambda: False)
        self.deadline = deadline
        self.is_abandoned = False

    def check(self) -> None:
        if self.is_abandoned or self.is_cancelled():
            raise _Stop("cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _Stop("deadline")
