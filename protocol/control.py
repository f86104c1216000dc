"""Control plane: messages sent to one worker on `{ns}.control.{worker_id}`."""

from __future__ import annotations

import msgspec

from protocol.events import KvEvent


class ControlMsg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class Cancel(ControlMsg, kw_only=True, tag="cancel"):
    """Stop generating for this request (client went away); the worker ends it with finish_reason=cancelled."""

    request_id: str


class ClearCache(ControlMsg, kw_only=True, tag="clear_cache"):
    pass


class DumpKv(ControlMsg, kw_only=True, tag="dump_kv"):
    """Ask for the worker's whole cache as stored events (router recovery after an event-id gap)."""


class KvDump(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to DumpKv: the cache as stored events, valid as of `last_event_id`."""

    worker_id: str
    last_event_id: int
    events: list[KvEvent] = []


class ControlAck(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool = True
    detail: str = ""


Control = Cancel | ClearCache | DumpKv

control_encoder = msgspec.msgpack.Encoder()
control_decoder = msgspec.msgpack.Decoder(Control)
dump_decoder = msgspec.msgpack.Decoder(KvDump)
ack_decoder = msgspec.msgpack.Decoder(ControlAck)
