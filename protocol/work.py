"""Request plane: work requests a frontend sends to a worker, and the replies streamed back.

Every reply stream carries `seq` 0, 1, 2, ... and ends with exactly one terminal message (Final or Error).
Token ids travel as int32 little-endian bytes (see protocol.kv.tokens_from_bytes), never as int lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec
import numpy as np

from protocol.kv import TOKEN_DTYPE, MmObject

LOGPROB_DTYPE = np.dtype("<f4")  # log-probabilities on the bus: float32 little-endian bytes


class BusMsg(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """Base of request-plane messages. Unknown fields are accepted so old and new processes share a bus."""


class SamplingOptions(msgspec.Struct, frozen=True, kw_only=True):
    max_tokens: int  # completion tokens to generate at most
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = []  # stop strings; the matched string is not returned
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and its k most likely alternatives
    logit_bias: dict[int, float] = {}  # token id -> added to its logit before sampling (feature "logit_bias")


class DiffusionOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Per-request knobs of a masked-diffusion LM; None means the worker's default."""

    steps: int | None = None  # total denoising steps over the generation (LLaDA `steps`)
    block_length: int | None = None  # semi-autoregressive block size in tokens
    threshold: float | None = None  # Fast-dLLM confidence threshold; None = fixed tokens per step
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    cfg_scale: float = 0.0
    use_cache: bool | None = None  # block KV cache on/off


class TensorData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A tensor on the bus: dtype, shape and C-order bytes, inline or (over the payload limit) in the Object Store."""

    dtype: str  # float32 | float16 | bfloat16
    shape: list[int]
    data: bytes = b""  # inline bytes; empty when object_name is set
    object_name: str | None = None  # object in the {ns}_blobs bucket (the requester deletes it when done)


class GenerateRequest(BusMsg, kw_only=True, tag="generate"):
    """Text generation (chat and completions are both token-in, text-out on the bus)."""

    request_id: str
    model: str
    token_ids: bytes  # prompt, int32 LE, after templating
    sampling: SamplingOptions
    diffusion: DiffusionOptions | None = None
    mm_objects: list[MmObject] = []
    mm_embeddings: list[TensorData] = []  # one per mm_objects entry: [placeholder tokens, hidden] from an encode worker
    stream: bool = True  # False: the worker may send only the Final message
    deadline_s: float | None = None  # seconds the requester will wait in all
    # Continuation after a migration: the last `num_generated` ids of token_ids are output another worker generated
    # and the client already has; generate what follows them (sampling.max_tokens is what is left, may be 0). The
    # worker's Usage counts its own work (those ids as prompt); the frontend adds them back for the client.
    num_generated: int = 0


class ImageRequest(BusMsg, kw_only=True, tag="image"):
    """Text-to-image generation or an edit (`images` set), already validated against the OpenAI schema."""

    request_id: str
    model: str
    prompt: str
    n: int = 1
    width: int | None = None  # None = the model's default size
    height: int | None = None
    num_inference_steps: int | None = None
    quality: str = "auto"
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = None  # 0-100, jpeg/webp only
    background: Literal["transparent", "opaque", "auto"] = "auto"
    response_format: Literal["b64_json", "url"] = "b64_json"
    user: str | None = None
    stream: bool = False
    partial_images: int = 0
    step_cache: bool | str | None = None  # None = the worker's default; a name picks deepcache/first_block/teacache
    images: list[bytes] = []  # edits: encoded input images (checked by the frontend's upload limits)
    mask: bytes | None = None  # edits: PNG whose fully transparent pixels mark where to repaint
    strength: float | None = None  # edits: fraction of the steps the input is re-noised by; None = 0.8 (or 1 with a mask)
    deadline_s: float | None = None


class VideoRequest(BusMsg, kw_only=True, tag="video"):
    """Text-to-video generation (POST /v1/videos), validated against the schema by the frontend."""

    request_id: str
    model: str
    prompt: str
    width: int | None = None  # None = the model's default size
    height: int | None = None
    num_frames: int | None = None  # None: from `seconds` x fps, else the model's default
    seconds: float | None = None
    fps: int | None = None  # None = the model's default frame rate
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    step_cache: bool | str | None = None
    user: str | None = None
    deadline_s: float | None = None




class EncodeRequest(BusMsg, kw_only=True, tag="encode"):
    """One image to embed (requests are routed per image, by mm_hash); the worker batches across callers."""

    request_id: str
    model: str  # the encode worker's served name
    mm_hash: int  # protocol.kv.image_mm_hash of the decoded pixels: the embedding cache key
    image: bytes = b""  # the encoded image (JPEG/PNG/WEBP) inline, or
    image_object: str | None = None  # ... its object in the {ns}_blobs bucket
    deadline_s: float | None = None


WorkRequest = GenerateRequest | ImageRequest | VideoRequest | EncodeRequest


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    forward_passes: int = 0  # model forwards spent on this request (NFE)
    images: int = 0
    frames: int = 0  # video frames produced


class TokenLogprobs(msgspec.Struct, frozen=True, kw_only=True):
    """Log-probabilities of the tokens a Chunk or Final carries, aligned with its `token_ids`."""

    logprobs: bytes = b""  # float32 LE, one per token: the log-probability of the token that was produced
    num_top: int = 0  # alternatives per token
    top_ids: bytes = b""  # int32 LE, num_top per token, most likely first
    top_logprobs: bytes = b""  # float32 LE, aligned with top_ids


def pack_logprobs(logprobs: Sequence[float], top_ids: Sequence[Sequence[int]] = (),
                  top_logprobs: Sequence[Sequence[float]] = (), num_top: int = 0) -> TokenLogprobs:
    """`top_ids`/`top_logprobs` hold `num_top` entries per token (ignored when num_top is 0)."""
    if not num_top:
        return TokenLogprobs(logprobs=np.asarray(logprobs, dtype=LOGPROB_DTYPE).tobytes())
    return TokenLogprobs(logprobs=np.asarray(logprobs, dtype=LOGPROB_DTYPE).tobytes(), num_top=num_top,
                         top_ids=np.asarray(top_ids, dtype=TOKEN_DTYPE).tobytes(),
                         top_logprobs=np.asarray(top_logprobs, dtype=LOGPROB_DTYPE).tobytes())


def unpack_logprobs(packed: TokenLogprobs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logprobs [n], top_ids [n, num_top], top_logprobs [n, num_top])."""
    logprobs = np.frombuffer(packed.logprobs, dtype=LOGPROB_DTYPE)
    shape = (len(logprobs), packed.num_top)
    top_ids = np.frombuffer(packed.top_ids, dtype=TOKEN_DTYPE).reshape(shape)
    return logprobs, top_ids, np.frombuffer(packed.top_logprobs, dtype=LOGPROB_DTYPE).reshape(shape)


class Ack(BusMsg, kw_only=True, tag="ack"):
    """The worker accepted the request; `queued` tells whether it waits for a slot."""

    request_id: str
    seq: int = 0
    worker_id: str
    queued: bool = False


class Chunk(BusMsg, kw_only=True, tag="chunk"):
    """Newly committed output: text delta and its token ids."""

    request_id: str
    seq: int
    text: str = ""
    token_ids: bytes = b""  # int32 LE, the tokens behind `text` (may run ahead of text at a cut UTF-8 char)
    forward_passes: int = 0  # cumulative, so a client can see progress per forward
    pieces: list[str] = []  # optional split of `text` into stream events (tokens coalesced into one bus message)
    logprobs: TokenLogprobs | None = None  # when the request asked for them, aligned with token_ids


class ImageOutput(BusMsg, kw_only=True, tag="image_output"):
    """One finished image, or a partial one when `partial_index` is set. One per message (payload limit)."""

    request_id: str
    seq: int
    index: int  # 0..n-1
    data: bytes = b""  # encoded image bytes when no url
    url: str | None = None
    output_format: str = "png"
    width: int = 0
    height: int = 0
    partial_index: int | None = None


class VideoProgress(BusMsg, kw_only=True, tag="video_progress"):
    """A video job's state: sent on acceptance (queued), when it starts, and after every denoising step."""

    request_id: str
    seq: int
    is_running: bool = False  # False: accepted, waiting for the pipeline
    step: int = 0  # denoising steps done
    num_steps: int = 0
    num_frames: int = 0  # what the job will produce (after defaults)
    width: int = 0
    height: int = 0
    fps: int = 0


class VideoOutput(BusMsg, kw_only=True, tag="video_output"):
    """The finished MP4, stored in the worker's media store under `key` (public `url`)."""

    request_id: str
    seq: int
    key: str
    url: str
    num_bytes: int
    num_frames: int
    width: int
    height: int
    fps: int
    content_type: str = "video/mp4"


class EmbeddingOutput(BusMsg, kw_only=True, tag="embedding"):
    """An image's embedding ([tokens, hidden], projected to the language model's hidden size)."""

    request_id: str
    seq: int
    mm_hash: int
    embedding: TensorData
    cached: bool = False  # served from the worker's embedding cache (no forward pass)


class Final(BusMsg, kw_only=True, tag="final"):
    """Terminal success message; `text` holds what was not yet sent in chunks."""

    request_id: str
    seq: int
    text: str = ""
    token_ids: bytes = b""
    logprobs: TokenLogprobs | None = None  # when the request asked for them, aligned with token_ids
    finish_reason: Literal["stop", "length", "cancelled", "error"] | None = "stop"
    usage: Usage = msgspec.field(default_factory=Usage)
    worker_id: str = ""


class Error(BusMsg, kw_only=True, tag="error"):
    """Terminal failure message; `code` is a protocol.errors code."""

    request_id: str
    seq: int
    code: str
    message: str
    param: str | None = None
    retry_after: float | None = None


Reply = Ack | Chunk | ImageOutput | VideoProgress | VideoOutput | EmbeddingOutput | Final | Error

work_encoder = msgspec.msgpack.Encoder()
work_decoder = msgspec.msgpack.Decoder(WorkRequest)
reply_decoder = msgspec.msgpack.Decoder(Reply)


def is_terminal(reply: Reply) -> bool:
    return isinstance(reply, (Final, Error))
