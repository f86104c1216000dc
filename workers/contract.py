"""What a worker kind implements (WorkerEngine) and what the runtime hands it (RequestContext, KvEventSink)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Protocol

from protocol.events import KvEventData, ModelCard
from protocol.work import Chunk, Final, ImageOutput, WorkRequest


class RequestContext:
    """Per-request handle shared with the engine; cancellation is visible from any thread."""

    def __init__(self, request_id: str, worker_id: str, deadline: float | None, blobs=None):
        self.request_id = request_id
        self.worker_id = worker_id
        self.deadline = deadline  # time.monotonic() seconds
        self.blobs = blobs  # shell.blobs.BlobStore: payloads too large for one message (None outside a runtime)
        self._flag = threading.Event()
        self._event = asyncio.Event()
        self._callbacks: list = []

    def is_cancelled(self) -> bool:
        return self._flag.is_set()

    def cancel(self) -> None:
        """Called on the event loop thread (control message, drain)."""
        if self._flag.is_set():
            return
        self._flag.set()
        self._event.set()
        for callback in self._callbacks:
            callback()

    def on_cancel(self, callback) -> None:
        """Run `callback()` on the loop thread when the request is cancelled."""
        self._callbacks.append(callback)

    async def wait_cancelled(self) -> None:
        await self._event.wait()


class KvEventSink:
    """Thread-safe: engines publish KV event data; the runtime numbers and batches them."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._pending: list[KvEventData] = []
        self._lock = threading.Lock()
        self._wake = asyncio.Event()

    def publish(self, data: KvEventData) -> None:
        with self._lock:
            self._pending.append(data)
        if threading.current_thread() is threading.main_thread():
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def take(self) -> list[KvEventData]:
        with self._lock:
            taken, self._pending = self._pending, []
        return taken


class WorkerEngine(Protocol):
    component: str

    def worker_card(self) -> dict: ...
    def model_card(self) -> ModelCard: ...
    def model_files(self) -> dict[str, bytes]: ...
    def load_report(self) -> dict: ...
    async def start(self, kv_sink: KvEventSink) -> None: ...
    async def stop(self) -> None: ...
    def generate(self, request: WorkRequest, ctx: RequestContext) -> AsyncIterator[Chunk | ImageOutput | Final]: ...
    def kv_dump(self) -> list: ...
    def clear_cache(self) -> None: ...
