"""A queued image job, the items the pipeline thread hands back to it, and the per-step monitor callback."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from protocol.errors import EngineError, MeshError
from workers.image.request import JobSpec


@dataclass(frozen=True)
class Encoded:
    index: int  # image index within the request, 0..n-1
    partial_index: int | None  # None = the final image
    data: bytes


@dataclass(frozen=True)
class Done:
    num_forwards: int  # denoiser calls of the pipeline call that produced the images


@dataclass(frozen=True)
class Stopped:
    reason: str  # "cancelled" | "deadline"


@dataclass(frozen=True)
class Failed:
    error: MeshError


class Job:
    """One request inside the engine; its queue is fed from the pipeline thread through the event loop."""

    def __init__(self, spec: JobSpec, batch_key: Hashable, loop: asyncio.AbstractEventLoop,
                 is_cancelled: Callable[[], bool] | None = None, deadline: float | None = None):
        self.spec = spec
        self.batch_key = batch_key
        self.num_images = spec.n
        self.queue: asyncio.Queue = asyncio.Queue()
        self.deadline = deadline  # time.monotonic() seconds
        self.is_abandoned = False  # set when the consumer stopped reading
        self.is_finished = False  # a terminal item was emitted
        self._loop = loop
        self._is_cancelled = is_cancelled or (lambda: False)

    def stop_reason(self) -> str | None:
        if self.is_abandoned or self._is_cancelled():
            return "cancelled"
        if self.deadline is not None and time.monotonic() > self.deadline:
            return "deadline"
        return None

    def poll_stop(self) -> bool:
        """True if the job must stop; the first time, it is told why (thread-safe)."""
        if self.is_finished:
            return True
        reason = self.stop_reason()
        if reason is not None:
            self.emit(Stopped(reason))
        return reason is not None

    def emit(self, item) -> None:
        """Hand an item to the consumer from any thread; nothing follows a terminal item."""
        if self.is_finished:
            return
        if isinstance(item, (Done, Stopped, Failed)):
            self.is_finished = True
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def fail(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, MeshError) else EngineError(f"{type(exc).__name__}: {exc}")
        self.emit(Failed(error))


class StepMonitor:
    """`callback_on_step_end` for one batch: stops cancelled jobs, decodes partial images, aborts when all stop."""

    class AllStopped(Exception):
        """Raised out of the pipeline between steps once every job of the batch has stopped."""

    def __init__(self, jobs: list[Job], encode: Callable[..., list[Encoded]]):
        self.encode = encode  # (latents rows, spec) -> encoded images with partial_index None
        self.slices: list[tuple[Job, slice]] = []
        offset = 0
        for job in jobs:
            self.slices.append((job, slice(offset, offset + job.num_images)))
            offset += job.num_images
        self.num_steps_seen = 0

    def __call__(self, pipe, step: int, timestep, tensors: dict) -> dict:
        self.num_steps_seen += 1
        latents = tensors["latents"]
        num_live = 0
        for job, rows in self.slices:
            if job.poll_stop():
                continue
            num_live += 1
            if step in job.spec.partial_steps:
                self._emit_partials(job, latents[rows], job.spec.partial_steps.index(step))
        if num_live == 0:
            raise StepMonitor.AllStopped()
        return tensors

    def _emit_partials(self, job: Job, latents, partial_index: int) -> None:
        for item in self.encode(latents, job.spec):
            job.emit(dataclasses.replace(item, partial_index=partial_index))

    def live_slices(self) -> list[tuple[Job, slice]]:
        return [(job, rows) for job, rows in self.slices if not job.poll_stop()]
