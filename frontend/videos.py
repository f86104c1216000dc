"""POST /v1/videos, GET /v1/videos[/{id}[/content]], DELETE /v1/videos/{id}: OpenAI's video jobs on a video worker.

POST validates, dispatches to a worker and answers once the worker accepted the job (status `queued`). The accepting
frontend then follows the job's reply stream in a background task and writes its record (status, progress, where the
MP4 is) to the JetStream KV bucket `{ns}_videos`, so any frontend answers GET and DELETE. DELETE on a running job
cancels it on its worker (it stops between steps) and removes the record; the record's owner notices the change
through the KV revision and stops writing. A frontend that dies leaves its running jobs' records at their last state.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from pathlib import Path

import msgspec
from aiohttp import web
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

from frontend.errors import error_response, from_validation
from frontend.images import pick_model
from frontend.state import STATE, AppState, Dispatched, dispatch, read_body, release
from frontend.uploads import convert_form, read_form
from protocol import subjects
from protocol.errors import InvalidRequest, MeshError, NotFound
from protocol.openai import json_encoder
from protocol.openai_videos import (
    Video, VideoCreateRequest, VideoDeleted, VideoError, VideoList, VideoRecord, video_decoder, video_record_decoder,
)
from protocol.routing import RouteRequest
from protocol.work import Final, VideoOutput, VideoProgress, VideoRequest

log = logging.getLogger("diffmesh.videos")
RECORD_TTL_S = 24 * 3600  # records (and the right to fetch content) outlive the job by a day
CONTENT_TTL_S = 3600  # expires_at = completed_at + this (OpenAI's download links last an hour)
POLL_AFTER_MS = "200"  # openai-poll-after-ms: the client's poll() waits this long between retrieves
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class VideoJobs:
    """Video job records in JetStream KV, and the tasks following the jobs this frontend accepted."""

    def __init__(self, nc, namespace: str, media_dir: str | None):
        self.nc, self.ns = nc, namespace
        self.media_dir = Path(media_dir).expanduser().resolve() if media_dir else None  # the workers' local store
        self.tasks: set[asyncio.Task] = set()
        self.following: dict[str, Dispatched] = {}  # video id -> the job this frontend follows
        self._kv = None

    async def kv(self):
        if self._kv is None:
            js = self.nc.jetstream()
            try:
                self._kv = await js.key_value(subjects.videos_bucket(self.ns))
            except BucketNotFoundError:
                self._kv = await js.create_key_value(bucket=subjects.videos_bucket(self.ns), history=1, ttl=RECORD_TTL_S)
        return self._kv

    async def put(self, record: VideoRecord, last: int | None = None) -> int:
        kv, data = await self.kv(), json_encoder.encode(record)
        return await kv.put(record.video.id, data) if last is None else await kv.update(record.video.id, data, last=last)

    async def get(self, video_id: str) -> VideoRecord:
        try:
            entry = await (await self.kv()).get(subjects.check_token(video_id, "video id"))
        except (KeyNotFoundError, KeyDeletedError, ValueError):
            entry = None
        if entry is None or not entry.value:
            raise NotFound(f"no video {video_id!r}", param="$.video_id")
        return video_record_decoder.decode(entry.value)

    async def delete(self, video_id: str) -> None:
        await (await self.kv()).delete(video_id)

    async def all(self) -> list[VideoRecord]:
        kv = await self.kv()
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        records = []
        for key in keys:
            try:
                records.append(await self.get(key))
            except NotFound:
                continue
        return records

    def follow(self, state: AppState, dispatched: Dispatched, record: VideoRecord, revision: int) -> None:
        self.following[record.video.id] = dispatched
        task = asyncio.create_task(self._follow(state, dispatched, record, revision))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _follow(self, state: AppState, d: Dispatched, record: VideoRecord, revision: int) -> None:
        try:
            while True:
                reply = await d.stream.next()  # raises the MeshError that ends the job; migrates if its worker is lost
                record = _advance(msgspec.structs.replace(record, worker_id=d.decision.worker_id, bus_id=d.bus_id), reply)
                revision = await self.put(record, last=revision)
                if isinstance(reply, Final):
                    return
        except MeshError as exc:
            failed = _with(record, status="failed", error=VideoError(code=exc.code, message=exc.message, param=exc.param))
            await _quietly(self.put(failed, last=revision))
        except KeyWrongLastSequenceError:  # deleted (or taken over) elsewhere: stop writing, and stop the job
            pass
        finally:
            self.following.pop(record.video.id, None)
            release(state, d)

    def local_file(self, key: str | None) -> Path | None:
        """The stored MP4 under this frontend's media directory, if it is there (keys are checked, no traversal)."""
        if self.media_dir is None or not key or not all(_SEGMENT.match(p) and ".." not in p for p in key.split("/")):
            return None
        path = self.media_dir.joinpath(*key.split("/"))
        return path if path.is_file() else None

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _with(record: VideoRecord, **video) -> VideoRecord:
    return msgspec.structs.replace(record, video=msgspec.structs.replace(record.video, **video))


def _advance(record: VideoRecord, reply) -> VideoRecord:
    """The record after one reply from the worker."""
    match reply:
        case VideoProgress(is_running=is_running, step=step, num_steps=num_steps):
            progress = min(99, round(100 * step / max(num_steps, 1)))
            return _with(record, status="in_progress" if is_running else "queued", progress=progress)
        case VideoOutput(key=key, url=url):
            return msgspec.structs.replace(record, key=key, url=url)
        case Final(finish_reason="cancelled"):
            return _with(record, status="failed", error=VideoError(code="cancelled", message="the job was cancelled"))
        case Final():
            now = int(time.time())
            return _with(record, status="completed", progress=100, completed_at=now, expires_at=now + CONTENT_TTL_S)
    return record


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception:  # the record is best effort once the job is gone
        log.debug("could not update a video record", exc_info=True)


# --- handlers -------------------------------------------------------------------------------------------------------


async def create(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = "unknown"
    try:
        req = await _parse(request, state)
        entry = await state.registry.get(pick_model(state, req.model, "videos"))
        model = entry.card.name  # a metric label only once the model is known
        if "videos" not in entry.card.kinds:
            raise InvalidRequest(f"model {model!r} does not generate videos", param="$.model")
        work = build_video_request(req, model, f"video_{uuid.uuid4().hex}")
        record, _ = await _start(state, req, work)
    except MeshError as exc:
        response = error_response(exc)
        state.metrics.model(model).request_done("videos", "unary", str(response.status))
        return response
    state.metrics.model(model).request_done("videos", "unary", "200")
    return _video_response(record.video, True)


async def _parse(request: web.Request, state: AppState) -> VideoCreateRequest:
    if request.content_type == "application/json":
        try:
            return video_decoder.decode(await read_body(request, state.config.max_body_bytes))
        except msgspec.DecodeError as exc:
            raise from_validation(exc) from None
    form = await read_form(request, state.config.max_body_bytes)
    if "input_reference" in form.files or "input_reference" in form.fields:
        raise InvalidRequest("this mesh's video models are text-to-video; input_reference is not taken",
                             param="$.input_reference")
    return convert_form(form.fields, VideoCreateRequest)


def build_video_request(req: VideoCreateRequest, model: str, video_id: str) -> VideoRequest:
    width = height = None
    if req.size:
        width, height = (int(v) for v in req.size.split("x"))
    ext = req.nvext
    return VideoRequest(request_id=video_id, model=model, prompt=req.prompt, width=width, height=height,
                        num_frames=req.num_frames, seconds=float(req.seconds) if req.seconds else None, fps=req.fps,
                        num_inference_steps=ext.num_inference_steps if ext else None,
                        guidance_scale=ext.guidance_scale if ext else None,
                        negative_prompt=ext.negative_prompt if ext else None, seed=req.seed,
                        step_cache=ext.step_cache if ext else None, user=req.user)


async def _start(state: AppState, req: VideoCreateRequest, work: VideoRequest) -> tuple[VideoRecord, int]:
    """Dispatch; the worker's first reply (its resolved size and frames) becomes the `queued` record."""
    route = RouteRequest(request_id=work.request_id, model=work.model, token_ids=b"",
                         worker_id=req.nvext.worker_id if req.nvext else None)
    d = await dispatch(state, route, work, work.model, state.config.video_timeout_s)
    try:
        first = d.first
        if not isinstance(first, VideoProgress):
            raise MeshError(f"unexpected first reply {type(first).__name__} from a video worker")
        video = Video(id=work.request_id, status="queued", created_at=int(time.time()), model=work.model,
                      prompt=work.prompt, seconds=f"{first.num_frames / first.fps:g}", size=f"{first.width}x{first.height}",
                      num_frames=first.num_frames, fps=first.fps)
        record = _advance(VideoRecord(video=video, worker_id=d.decision.worker_id, bus_id=d.bus_id), first)
        revision = await state.videos.put(record)
    except BaseException:
        abandon_job(state, d)
        raise
    state.videos.follow(state, d, record, revision)
    return record, revision


def abandon_job(state: AppState, d: Dispatched) -> None:
    release(state, d)  # tells the worker to stop


async def retrieve(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        record = await state.videos.get(request.match_info["video_id"])
    except MeshError as exc:
        return error_response(exc)
    return _video_response(record.video, record.video.status in ("queued", "in_progress"))


def _video_response(video: Video, is_pending: bool) -> web.Response:
    headers = {"openai-poll-after-ms": POLL_AFTER_MS} if is_pending else None
    return web.Response(body=json_encoder.encode(video), content_type="application/json", headers=headers)


async def content(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        variant = request.query.get("variant", "video")
        if variant != "video":
            raise InvalidRequest(f"variant {variant!r} is not generated here; only video", param="$.variant")
        record = await state.videos.get(request.match_info["video_id"])
        if record.video.status != "completed" or not record.key:
            raise InvalidRequest(f"video {record.video.id} is {record.video.status}; content exists once completed",
                                 param="$.video_id")
    except MeshError as exc:
        return error_response(exc)
    path = state.videos.local_file(record.key)
    if path is None:
        raise web.HTTPFound(record.url)  # the worker's store is not ours: its public URL
    return web.FileResponse(path, headers={"Content-Type": "video/mp4"})


async def delete(request: web.Request) -> web.Response:
    """Cancel the job if it still runs (it stops between steps), then remove its record and its MP4."""
    state = request.app[STATE]
    try:
        record = await state.videos.get(request.match_info["video_id"])
    except MeshError as exc:
        return error_response(exc)
    await state.videos.delete(record.video.id)
    followed = state.videos.following.get(record.video.id)
    if followed is not None:  # ours: closing the stream cancels the job on its worker
        release(state, followed)
    elif record.video.status in ("queued", "in_progress"):  # another frontend's: tell the worker; that frontend
        await state.requester.cancel(record.worker_id, record.bus_id)  # stops following at its next (failed) write
    path = state.videos.local_file(record.key)
    if path is not None:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    return web.Response(body=json_encoder.encode(VideoDeleted(id=record.video.id)), content_type="application/json")


async def list_videos(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        limit = int(request.query.get("limit", "20"))
        order = request.query.get("order", "desc")
        if not 1 <= limit <= 100 or order not in ("asc", "desc"):
            raise ValueError
    except ValueError:
        return error_response(InvalidRequest("limit must be 1..100 and order asc or desc", param="$.limit"))
    videos = sorted((r.video for r in await state.videos.all()), key=lambda v: (v.created_at, v.id), reverse=order == "desc")
    after = request.query.get("after")
    if after:
        ids = [v.id for v in videos]
        videos = videos[ids.index(after) + 1:] if after in ids else []
    page = videos[:limit]
    body = VideoList(data=page, first_id=page[0].id if page else None, last_id=page[-1].id if page else None,
                     has_more=len(videos) > limit)
    return web.Response(body=json_encoder.encode(body), content_type="application/json")
