"""Text-to-video on a tiny Wan pipeline: MP4 bytes, frames and size, determinism, cancellation, the /v1/videos API."""

from __future__ import annotations

import io
import itertools

import av
import openai
import pytest
import pytest_asyncio

from protocol.errors import InvalidRequest
from protocol.work import Final, VideoOutput, VideoProgress, VideoRequest
from shell.bus import wait_for
from workers.image.engine import EngineConfig
from workers.image.storage import StorageConfig
from workers.image.tiny import ensure_tiny_image
from workers.image.video import VideoEngine
from workers.image.worker import ImageWorker

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # openai marks videos.* deprecated
_ids = itertools.count()


def video_request(**fields) -> VideoRequest:
    defaults = dict(request_id=f"vid-{next(_ids)}", model="tiny-wan", prompt="a red ball", seed=5, num_inference_steps=3)
    return VideoRequest(**{**defaults, **fields})


def mp4_frames(data: bytes) -> list:
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="session")
def wan_dir(image_models):
    return ensure_tiny_image(image_models, "wan")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def wan_engine(wan_dir, media_dir):
    engine = VideoEngine(EngineConfig(model=str(wan_dir), served_name="tiny-wan", max_steps=40,
                                      storage=StorageConfig(url=str(media_dir))))
    await engine.start()
    yield engine
    await engine.stop()


async def run(engine, request, **kwargs) -> list:
    return [out async for out in engine.generate(request, **kwargs)]


async def test_video_is_an_mp4_with_the_asked_frames_and_size_and_progress_per_step(wan_engine, media_dir):
    outputs = await run(wan_engine, video_request(num_frames=5, width=48, height=32, num_inference_steps=3))
    progress = [o for o in outputs if isinstance(o, VideoProgress)]
    assert [(p.is_running, p.step) for p in progress] == [(False, 0), (True, 0), (True, 1), (True, 2), (True, 3)]
    video = next(o for o in outputs if isinstance(o, VideoOutput))
    frames = mp4_frames((media_dir / video.key).read_bytes())
    assert len(frames) == 5 and frames[0].shape == (32, 48, 3) and video.fps == 8
    assert isinstance(outputs[-1], Final) and outputs[-1].usage.frames == 5
    assert outputs[-1].usage.forward_passes == 6  # 3 steps x (cond + uncond)


async def test_same_seed_gives_the_same_bytes(wan_engine, media_dir):
    keys = []
    for _ in range(2):
        outputs = await run(wan_engine, video_request(seed=9))
        keys.append(next(o.key for o in outputs if isinstance(o, VideoOutput)))
    first, second = ((media_dir / key).read_bytes() for key in keys)
    assert keys[0] != keys[1] and first == second


async def test_seconds_become_frames_on_the_model_grid(wan_engine):
    progress = (await run(wan_engine, video_request(seconds=1.0, fps=8, num_inference_steps=1)))[0]
    assert progress.num_frames == 9  # 1 s x 8 fps, snapped to 1 + 4k


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (dict(num_frames=6), "$.num_frames"),
        (dict(num_frames=9, seconds=1.0), "$.num_frames"),
        (dict(num_frames=401), "$.num_frames"),
        (dict(fps=0), "$.fps"),
        (dict(width=40, height=32), "$.size"),
        (dict(num_inference_steps=41), "$.nvext.num_inference_steps"),
        (dict(step_cache="deepcache"), "$.nvext.step_cache"),
    ],
)
async def test_bad_video_fields_are_rejected_before_any_work(wan_engine, fields, param):
    calls = wan_engine.stats.num_denoiser_calls
    with pytest.raises(InvalidRequest) as info:
        await run(wan_engine, video_request(**fields))
    assert info.value.param == param and wan_engine.stats.num_denoiser_calls == calls


async def test_cancel_stops_between_steps(wan_engine):
    calls = wan_engine.stats.num_denoiser_calls
    seen: list[int] = []

    def is_cancelled() -> bool:
        return len(seen) >= 2  # after the second step's progress

    outputs = []
    async for out in wan_engine.generate(video_request(num_inference_steps=20), is_cancelled=is_cancelled):
        outputs.append(out)
        if isinstance(out, VideoProgress) and out.is_running and out.step > 0:
            seen.append(out.step)
    assert outputs[-1].finish_reason == "cancelled" and not any(isinstance(o, VideoOutput) for o in outputs)
    assert wan_engine.stats.num_denoiser_calls - calls <= 2 * 3  # stopped after at most 3 of 20 steps


# --- /v1/videos through the official client ------------------------------------------------------------------------


@pytest.fixture
async def video_mesh(mesh, wan_dir, media_dir):
    """A frontend and one tiny-wan worker (its own engine: the worker stops it when the mesh closes)."""
    await mesh.start_frontend(media_dir=str(media_dir))
    engine = VideoEngine(EngineConfig(model=str(wan_dir), served_name="tiny-wan", max_steps=40,
                                      storage=StorageConfig(url=str(media_dir))))
    await mesh.add_worker(ImageWorker(engine))
    await mesh.wait_models("tiny-wan", 1)
    client = openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="unused", max_retries=0)
    yield client, engine
    await client.close()


async def test_openai_videos_create_poll_and_download_an_mp4(video_mesh):
    client, _ = video_mesh
    extra = {"num_frames": 5, "seed": 3, "nvext": {"num_inference_steps": 3}}
    video = await client.videos.create(model="tiny-wan", prompt="a red ball", size="48x32", extra_body=extra)
    assert video.status in ("queued", "in_progress") and video.size == "48x32" and video.id.startswith("video_")
    done = await client.videos.poll(video.id)
    assert done.status == "completed" and done.progress == 100 and done.seconds == "0.625"  # 5 frames at 8 fps
    data = (await client.videos.download_content(done.id)).content
    frames = mp4_frames(data)
    assert len(frames) == 5 and frames[0].shape == (32, 48, 3)
    again = await client.videos.poll((await client.videos.create(model="tiny-wan", prompt="a red ball", size="48x32",
                                                                 extra_body=extra)).id)
    assert (await client.videos.download_content(again.id)).content == data  # same seed, same bytes
    listed = [v.id async for v in client.videos.list()]
    assert {video.id, again.id} <= set(listed)


async def test_openai_videos_delete_cancels_a_running_job_between_steps(video_mesh):
    client, wan_engine = video_mesh
    calls = wan_engine.stats.num_denoiser_calls
    video = await client.videos.create(model="tiny-wan", prompt="a slow ball",
                                       extra_body={"nvext": {"num_inference_steps": 40}})

    async def running():
        return (await client.videos.retrieve(video.id)).progress >= 5

    await wait_for(running, 60.0, 0.05)
    deleted = await client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    await wait_for(lambda: wan_engine.num_images_in_flight == 0, 60.0, 0.05)
    assert wan_engine.stats.num_denoiser_calls - calls < 2 * 40  # it stopped early
    assert wan_engine.stats.num_cancelled >= 1
    with pytest.raises(openai.NotFoundError):
        await client.videos.retrieve(video.id)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (dict(size="40x32"), "$.size"),
        (dict(size="big"), "$.size"),
        (dict(seconds="soon"), "$.seconds"),
        (dict(extra_body={"num_frames": 6}), "$.num_frames"),
        (dict(extra_body={"fps": 0}), "$.fps"),
        (dict(input_reference=("a.png", b"\x89PNG", "image/png")), "$.input_reference"),
    ],
)
async def test_openai_bad_video_requests_are_400s_naming_the_field(video_mesh, kwargs, param):
    client, _ = video_mesh
    with pytest.raises(openai.BadRequestError) as info:
        await client.videos.create(model="tiny-wan", prompt="x", **kwargs)
    assert info.value.status_code == 400 and info.value.body["param"] == param


async def test_content_before_completion_and_unknown_ids(video_mesh):
    client, _ = video_mesh
    with pytest.raises(openai.NotFoundError):
        await client.videos.retrieve("video_nope")
    video = await client.videos.create(model="tiny-wan", prompt="x", extra_body={"nvext": {"num_inference_steps": 30}})
    with pytest.raises(openai.BadRequestError):
        await client.videos.download_content(video.id)
    await client.videos.delete(video.id)


async def test_a_video_model_refuses_image_requests_and_lists_as_videos(video_mesh):
    client, _ = video_mesh
    with pytest.raises(openai.NotFoundError) as info:  # a model of another kind is not an image model here
        await client.images.generate(model="tiny-wan", prompt="x")
    assert "does not generate images" in info.value.body["message"]
    models = {m.id: m for m in (await client.models.list()).data}
    assert models["tiny-wan"].model_extra["kinds"] == ["videos"]
