"""Groups compatible queued jobs into one model call and runs calls one at a time on a worker thread.

Shared by the image worker (pipeline calls) and the encode worker (vision-tower forwards), whose jobs come from
different requests: whatever queued while a call ran goes into the next one.
Pure asyncio, no torch: the engine supplies `run_batch`, which executes on the given executor, never on the loop.
A batch is the oldest queued job plus the later ones with the same batch key, in arrival order, up to
`max_images` images (a single job with more images than that still runs, alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Protocol, TypeVar


class BatchJob(Protocol):
    batch_key: Hashable
    num_images: int

    def poll_stop(self) -> bool:
        """True if the job was cancelled or expired (and has been told so); it is then dropped."""

    def fail(self, exc: BaseException) -> None: ...


J = TypeVar("J", bound=BatchJob)


class Batcher:
    def __init__(self, run_batch: Callable[[list[J]], None], executor: Executor, max_images: int, wait_s: float = 0.0):
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.run_batch = run_batch
        self.executor = executor
        self.max_images = max_images
        self.wait_s = wait_s  # how long an idle batcher waits for companions before the first call
        self.pending: list[J] = []
        self.num_batches = 0
        self.num_submitted = 0  # jobs ever submitted
        self.batch_sizes: list[int] = []  # images per pipeline call, in order (for tests and benchmarks)
        self._runner: asyncio.Task | None = None

    @property
    def num_waiting_images(self) -> int:
        return sum(job.num_images for job in self.pending)

    def submit(self, job: J) -> None:
        """Queue a job; starts the runner if idle (it picks up everything queued in the same loop tick)."""
        self.pending.append(job)
        self.num_submitted += 1
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def wait_idle(self) -> None:
        """Return once nothing is queued or running (the current pipeline call has finished)."""
        while self._runner is not None and not self._runner.done():
            await asyncio.shield(self._runner)

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.wait_s > 0:
            await asyncio.sleep(self.wait_s)
        while self.pending:
            batch = self.take_batch()
            if not batch:
                continue
            self.num_batches += 1
            self.batch_sizes.append(sum(job.num_images for job in batch))
            try:
                await loop.run_in_executor(self.executor, self.run_batch, batch)
            except Exception as exc:  # run_batch reports per job; this is the last resort, never a hang
                for job in batch:
                    job.fail(exc)

    def take_batch(self) -> list[J]:
        """Remove and return the next batch (stopped jobs are dropped on the way)."""
        self.pending = [job for job in self.pending if not job.poll_stop()]
        if not self.pending:
            return []
        key = self.pending[0].batch_key
        batch, num_images = [], 0
        for job in self.pending:
            if job.batch_key != key:
                continue
            if batch and num_images + job.num_images > self.max_images:
                break
            batch.append(job)
            num_images += job.num_images
        taken = {id(job) for job in batch}
        self.pending = [job for job in self.pending if id(job) not in taken]
        return batch
