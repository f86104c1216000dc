"""Batch formation: same key together in arrival order, image budget, stopped jobs dropped, failures reported."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from workers.batcher import Batcher


class FakeJob:
    def __init__(self, name: str, key="a", num_images: int = 1, is_stopped: bool = False):
        self.name, self.batch_key, self.num_images, self.is_stopped = name, key, num_images, is_stopped
        self.error = None

    def poll_stop(self) -> bool:
        return self.is_stopped

    def fail(self, exc: BaseException) -> None:
        self.error = exc


@pytest.fixture(scope="module")
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def _batcher(executor, calls: list, max_images: int = 4) -> Batcher:
    return Batcher(lambda batch: calls.append([job.name for job in batch]), executor, max_images)


async def test_jobs_queued_in_one_tick_share_a_call_by_key(executor):
    calls: list = []
    batcher = _batcher(executor, calls)
    for job in [FakeJob("a1"), FakeJob("b1", key="b"), FakeJob("a2"), FakeJob("a3"), FakeJob("b2", key="b")]:
        batcher.submit(job)
    await batcher.wait_idle()
    assert calls == [["a1", "a2", "a3"], ["b1", "b2"]]
    assert batcher.batch_sizes == [3, 2]


async def test_image_budget_caps_a_batch_but_never_blocks_a_large_job(executor):
    calls: list = []
    batcher = _batcher(executor, calls, max_images=4)
    for job in [FakeJob("big", num_images=6), FakeJob("x", num_images=3), FakeJob("y", num_images=2), FakeJob("z")]:
        batcher.submit(job)
    await batcher.wait_idle()
    assert calls == [["big"], ["x"], ["y", "z"]]


async def test_stopped_jobs_are_dropped_before_running(executor):
    calls: list = []
    batcher = _batcher(executor, calls)
    batcher.submit(FakeJob("gone", is_stopped=True))
    batcher.submit(FakeJob("kept"))
    await batcher.wait_idle()
    assert calls == [["kept"]]


async def test_a_failing_call_fails_its_jobs_and_the_batcher_continues(executor):
    def run(batch):
        if batch[0].name == "bad":
            raise RuntimeError("boom")

    batcher = Batcher(run, executor, max_images=1)
    bad, good = FakeJob("bad"), FakeJob("good")
    batcher.submit(bad)
    batcher.submit(good)
    await batcher.wait_idle()
    assert isinstance(bad.error, RuntimeError) and good.error is None


async def test_batch_runs_off_the_event_loop_thread(executor):
    threads: list = []
    batcher = Batcher(lambda batch: threads.append(threading.get_ident()), executor, max_images=2)
    batcher.submit(FakeJob("a"))
    await batcher.wait_idle()
    assert threads and threads[0] != threading.get_ident()
