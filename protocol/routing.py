"""Router plane: queries to a standalone router, its decisions, and predicted-load sync between replicas."""

from __future__ import annotations

from typing import Literal

import msgspec

from protocol.kv import MmObject


class RouteRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    request_id: str
    model: str
    token_ids: bytes = b""  # int32 LE routing tokens (prompt ids, or prompt bytes for tokenizer-less models)
    mm_objects: list[MmObject] = []
    worker_id: str | None = None  # direct routing hint
    mode: str | None = None  # per-request override of the router mode
    exclude: list[str] = []  # workers that already failed this request (migration)


class RouteDecision(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type", tag="decision"):
    worker_id: str
    component: str
    overlap_blocks: int = 0  # request prefix blocks the worker already holds
    num_blocks: int = 0  # full blocks in the request
    cost: float = 0.0
    mode: str = "kv"
    hash_s: float = 0.0  # decision latency split
    match_s: float = 0.0
    score_s: float = 0.0


class RouteError(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="error"):
    code: str
    message: str
    retry_after: float | None = None
    param: str | None = None  # JSON path of the offending request field (InvalidRequest)


class SyncEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One router replica tells the others about load it added or removed (fire-and-forget)."""

    router_id: str
    request_id: str
    kind: Literal["add", "prefill_done", "free"]
    worker_id: str = ""
    prefill_tokens: int = 0
    blocks: list[int] = []  # router prefix keys of the request's blocks (router.keys), for "add"


class SyncBatch(msgspec.Struct, frozen=True, kw_only=True):
    """What a replica publishes on the sync subject: its events of the last flush interval, in order."""

    router_id: str
    events: list[SyncEvent]


routing_encoder = msgspec.msgpack.Encoder()
route_request_decoder = msgspec.msgpack.Decoder(RouteRequest)
route_reply_decoder = msgspec.msgpack.Decoder(RouteDecision | RouteError)
sync_decoder = msgspec.msgpack.Decoder(SyncBatch)
