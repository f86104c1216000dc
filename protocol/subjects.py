"""Every NATS subject the mesh uses, built in one place. Tokens must not contain '.', '*', '>' or spaces."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_token(value: str, what: str = "subject token") -> str:
    """Return `value` if it is a single valid subject token, else raise ValueError naming it."""
    if not _TOKEN.match(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '_' or '-'")
    return value


def generate_direct(ns: str, component: str, worker_id: str) -> str:
    return f"{ns}.{component}.generate.{worker_id}"


def generate_any(ns: str, component: str) -> str:
    """Queue-group subject: any worker of the component takes it."""
    return f"{ns}.{component}.generate"


def queue_group(component: str) -> str:
    return f"{component}-workers"


def control(ns: str, worker_id: str) -> str:
    return f"{ns}.control.{worker_id}"


def kv_events(ns: str, worker_id: str) -> str:
    return f"{ns}.events.kv.{worker_id}"


def kv_events_all(ns: str) -> str:
    return f"{ns}.events.kv.*"


def load_events(ns: str, worker_id: str) -> str:
    return f"{ns}.events.load.{worker_id}"


def load_events_all(ns: str) -> str:
    return f"{ns}.events.load.*"


def heartbeat(ns: str, worker_id: str) -> str:
    return f"{ns}.heartbeat.{worker_id}"


def heartbeat_all(ns: str) -> str:
    return f"{ns}.heartbeat.*"


def router_sync(ns: str) -> str:
    """Predicted-load updates shared between router replicas."""
    return f"{ns}.router.sync"


def router_service(ns: str) -> str:
    """Request/reply subject of a standalone router."""
    return f"{ns}.router.route"


def reply_inbox(requester_id: str) -> str:
    """Wildcard a requester subscribes once; replies end with the request id."""
    return f"_INBOX.{requester_id}.>"


def reply_subject(requester_id: str, request_id: str) -> str:
    return f"_INBOX.{requester_id}.{request_id}"


def models_bucket(ns: str) -> str:
    """JetStream KV bucket of model cards (bucket names allow no dots)."""
    return f"{ns}_models"


def files_bucket(ns: str) -> str:
    """JetStream Object Store bucket of tokenizer files and other model assets."""
    return f"{ns}_model_files"


def videos_bucket(ns: str) -> str:
    """JetStream KV bucket of video jobs (status, progress, where the MP4 is), shared by every frontend."""
    return f"{ns}_videos"


def blobs_bucket(ns: str) -> str:
    """JetStream Object Store bucket of per-request media and embeddings too large for one message (with a TTL)."""
    return f"{ns}_blobs"
