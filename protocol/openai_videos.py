"""OpenAI Videos API schema (POST /v1/videos form fields, the Video object, delete and list) plus diffmesh's fields."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from protocol.openai import PositiveInt, Req, Resp, Seed
from protocol.openai_images import StepCacheChoice


class VideoNvExt(Req, kw_only=True):
    num_inference_steps: PositiveInt | None = None
    guidance_scale: Annotated[float, Meta(ge=0.0, le=100.0)] | None = None
    negative_prompt: str | None = None
    step_cache: StepCacheChoice | None = None
    worker_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class VideoCreateRequest(Req, kw_only=True):
    """POST /v1/videos (multipart as the openai client sends it, or JSON); num_frames, fps, seed are diffmesh's."""

    prompt: Annotated[str, Meta(min_length=1, max_length=32000)]
    model: str | None = None
    seconds: Annotated[str, Meta(pattern=r"^[0-9]{1,3}(\.[0-9]{1,3})?$")] | None = None  # OpenAI sends "4", "8"
    size: Annotated[str, Meta(pattern=r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$")] | None = None
    num_frames: PositiveInt | None = None
    fps: Annotated[int, Meta(ge=1, le=120)] | None = None
    seed: Seed | None = None
    user: str | None = None
    nvext: VideoNvExt | None = None


class VideoError(Resp, kw_only=True):
    code: str
    message: str
    param: str | None = None


class Video(Resp, kw_only=True):
    """OpenAI's Video object, plus num_frames and fps."""

    id: str
    object: str = "video"
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = 0  # percent
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    error: VideoError | None = None
    model: str
    prompt: str | None = None
    seconds: str
    size: str
    remixed_from_video_id: str | None = None
    num_frames: int = 0
    fps: int = 0


class VideoRecord(msgspec.Struct, kw_only=True):
    """A video job as frontends share it in the `{ns}_videos` JetStream KV bucket (the owner writes it)."""

    video: Video
    worker_id: str = ""
    bus_id: str = ""  # request id on the bus, for Cancel
    key: str | None = None  # the MP4 in the worker's media store
    url: str | None = None


class VideoDeleted(Resp, kw_only=True):
    id: str
    object: str = "video.deleted"
    deleted: bool = True


class VideoList(Resp, kw_only=True):
    object: str = "list"
    data: list[Video] = []
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


video_decoder = msgspec.json.Decoder(VideoCreateRequest)
video_record_decoder = msgspec.json.Decoder(VideoRecord)
