"""Event plane: KV cache events, load reports, heartbeats with worker cards, model cards."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class StoredBlock(msgspec.Struct, frozen=True, array_like=True):
    block_hash: int  # u64, the worker's sequence hash of the block (per-worker key)
    tokens_hash: int  # u64, local hash of the block's tokens (+ media), see protocol.kv


class KvStored(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="stored"):
    parent_hash: int | None  # block_hash of the block before blocks[0]; None = starts at the root
    blocks: list[StoredBlock]


class KvRemoved(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="removed"):
    block_hashes: list[int]


class KvCleared(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="cleared"):
    pass


KvEventData = KvStored | KvRemoved | KvCleared


class KvEvent(msgspec.Struct, frozen=True, kw_only=True):
    event_id: int  # per worker, starts at 1 and increases by exactly 1
    data: KvEventData


class EventMsg(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    pass


class KvEventBatch(EventMsg, kw_only=True, tag="kv_events"):
    worker_id: str
    events: list[KvEvent]


class LoadReport(EventMsg, kw_only=True, tag="load"):
    worker_id: str
    active_requests: int = 0
    waiting_requests: int = 0
    active_prefill_tokens: int = 0
    active_decode_blocks: int = 0
    kv_used_blocks: int = 0
    kv_total_blocks: int = 0


class WorkerCard(msgspec.Struct, frozen=True, kw_only=True):
    """Who a worker is and what it can take; carried by every heartbeat."""

    worker_id: str
    namespace: str
    component: str  # mocker | dllm | image | encode
    model: str  # served model name
    capacity: int  # requests it runs at once
    max_queue: int = 0  # requests it accepts beyond capacity before refusing
    block_size: int = 0  # KV block size in tokens; 0 = no token cache
    kv_total_blocks: int = 0
    publishes_kv_events: bool = False  # False: routed in approximate mode
    kinds: list[str] = []  # endpoints it serves (images, videos, ...); [] = its component's default
    host: str = ""
    pid: int = 0
    started_at: float = 0.0  # unix seconds


class Heartbeat(EventMsg, kw_only=True, tag="heartbeat"):
    card: WorkerCard
    load: LoadReport
    last_kv_event_id: int = 0
    interval_s: float = 1.0  # the next heartbeat is due within this
    draining: bool = False  # finishing in-flight work after SIGTERM: route nothing new, but it is still alive


class Goodbye(EventMsg, kw_only=True, tag="goodbye"):
    """The worker has drained and is leaving; anything still in flight there is lost."""

    worker_id: str


Event = KvEventBatch | LoadReport | Heartbeat | Goodbye

ModelKind = Literal["chat", "completions", "images", "videos", "embeddings"]

# Optional request features a model may list in `ModelCard.features`; the frontend answers a request that uses a
# feature its model does not list with a 400 naming the field (frontend/capabilities.py holds the field table).
KNOWN_FEATURES = (
    "logprobs",  # per-token log-probabilities (chat logprobs/top_logprobs, completions logprobs, best_of)
    "logit_bias",  # SamplingOptions.logit_bias is added to the logits before sampling
    "prompt_logprobs",  # log-probabilities of prompt tokens (completions echo + logprobs)
    "penalties", "json_object", "json_schema", "tools", "suffix", "reasoning",  # no diffmesh worker has these yet
)


class HealthCheck(msgspec.Struct, frozen=True, kw_only=True):
    """A small request that exercises a model end to end: what a canary or load-balancer probe POSTs."""

    path: str  # e.g. /v1/chat/completions
    body: dict[str, Any]  # the JSON body

    @classmethod
    def chat(cls, model: str, image_url: str | None = None) -> HealthCheck:
        """A one-token chat; with `image_url`, the message carries that image too (multimodal models)."""
        content: str | list = "ping"
        if image_url is not None:
            content = [{"type": "text", "text": "ping"}, {"type": "image_url", "image_url": {"url": image_url}}]
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 1}
        return cls(path="/v1/chat/completions", body=body)

    @classmethod
    def images(cls, model: str, size: str) -> HealthCheck:
        """One image at the model's default size with a single denoising step."""
        body = {"model": model, "prompt": "health check", "n": 1, "size": size, "nvext": {"num_inference_steps": 1}}
        return cls(path="/v1/images/generations", body=body)


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    """What a frontend needs to serve a model without its files (stored in the JetStream KV bucket)."""

    name: str
    component: str
    kinds: list[ModelKind]
    input_modalities: list[str] = msgspec.field(default_factory=lambda: ["text"])
    output_modalities: list[str] = msgspec.field(default_factory=lambda: ["text"])
    block_size: int = 0
    context_length: int = 0
    tokenizer_object: str | None = None  # object name in the files bucket (tokenizer.json)
    tokenizer_sha256: str | None = None
    chat_template: str | None = None  # jinja2 source
    bos_token: str | None = None
    eos_token: str | None = None
    defaults: dict[str, float | int | str | bool] = {}  # per-model request defaults (steps, size, ...)
    features: list[str] = []  # optional request features it implements (KNOWN_FEATURES); unknown names are kept
    created: int = 0  # unix seconds
    image_token: str | None = None  # multimodal LMs: the placeholder text the prompt carries once per image
    image_token_id: int | None = None  # ... its token id, repeated num_image_tokens times per image
    num_image_tokens: int = 0  # placeholder tokens (= embedding rows) per image
    vision_encoder: str | None = None  # served name of the encode model whose embeddings this model takes
    health_check: HealthCheck | None = None


event_encoder = msgspec.msgpack.Encoder()
event_decoder = msgspec.msgpack.Decoder(Event)
card_decoder = msgspec.msgpack.Decoder(ModelCard)
