"""Frozen per-process configs. CLI flags and DIFFMESH_* env vars map onto them; bad values raise naming the source."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag or variable and its value."""


@dataclass(frozen=True)
class NatsConfig:
    url: str = "nats://127.0.0.1:4222"  # comma-separated for a cluster
    user: str | None = None
    password: str | None = field(default=None, repr=False)  # secrets stay out of reprs, dry runs and logs
    token: str | None = field(default=None, repr=False)
    creds_file: str | None = None  # JWT + nkey .creds file (decentralized auth)
    nkey_seed: str | None = None  # file holding a user nkey seed (SU...)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    randomize: bool = True  # False: try the servers in the order given (a preferred local node first)
    connect_timeout_s: float = 5.0
    max_reconnect_attempts: int = -1  # -1 = forever
    reconnect_wait_s: float = 0.5

    @property
    def servers(self) -> list[str]:
        return [part.strip() for part in self.url.split(",") if part.strip()]


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


def _is_host_or_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(entry))


@dataclass(frozen=True)
class MediaConfig:
    """Image inputs (chat `image_url` parts): what may be fetched and decoded. SSRF-safe by default.

    http(s) URLs that resolve to loopback, private, link-local (cloud metadata) or other non-global addresses are
    refused, also after a redirect, unless `allowed_hosts` names the URL's host name or an address/network it
    resolves to (`localhost`, `127.0.0.1`, `10.0.0.0/8`).
    """

    allowed_hosts: tuple[str, ...] = ()  # env DIFFMESH_MEDIA_ALLOWED_HOSTS="127.0.0.1,localhost"
    max_bytes: int = 16 * 1024 * 1024  # encoded image bytes (download or decoded data: URL)
    max_pixels: int = 32 * 1024 * 1024  # width x height, checked from the header before decoding
    timeout_s: float = 10.0  # a whole fetch, redirects included
    max_redirects: int = 3
    cache_bytes: int = 256 * 1024 * 1024  # LRU of decoded RGB images, by content hash
    allow_http: bool = True  # False: https and data: URLs only
    resolver: object = None  # aiohttp AbstractResolver class for host names (None = aiohttp's default); not from env

    def __post_init__(self) -> None:
        if isinstance(self.allowed_hosts, str):  # env vars arrive as "a,b,c"
            object.__setattr__(self, "allowed_hosts", tuple(h.strip() for h in self.allowed_hosts.split(",") if h.strip()))
        for name in ("max_bytes", "max_pixels", "cache_bytes"):
            if getattr(self, name) < (0 if name == "cache_bytes" else 1):
                raise ConfigError(f"media {name}={getattr(self, name)} must be >= 1")
        if not self.timeout_s > 0 or self.max_redirects < 0:
            raise ConfigError(f"media timeout_s={self.timeout_s} must be > 0 and max_redirects={self.max_redirects} >= 0")
        bad = [h for h in self.allowed_hosts if not _is_host_or_network(h)]
        if bad:
            raise ConfigError(f"media allowed_hosts={','.join(bad)!r}: use host names, IP addresses or CIDR networks")
        if self.resolver is not None and not callable(self.resolver):
            raise ConfigError(f"media resolver={self.resolver!r} must be an aiohttp resolver class")


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for; more is a 400 naming the field. Env DIFFMESH_LIMIT_<NAME>, flag --limit-<name>."""

    max_messages: int = 256  # chat messages per request
    max_images: int = 8  # image parts over all messages of a chat request
    max_tokens: int = 32768  # completion tokens per request (the model's context bounds it too)
    max_steps: int = 1024  # dLLM denoising steps (nvext.steps)
    max_image_steps: int = 200  # image num_inference_steps
    max_image_side: int = 4096  # image width or height in pixels

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ConfigError(f"limit {f.name}={getattr(self, f.name)} must be >= 1")


@dataclass(frozen=True)
class FrontendConfig:
    nats: NatsConfig = field(default_factory=NatsConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    namespace: str = "dm"
    host: str = "0.0.0.0"
    port: int = 8000
    router_mode: str = "kv"  # kv | round_robin | random | least_loaded
    router_url: str | None = None  # None = embedded router; "nats" = the standalone `diffmesh router` service
    max_body_bytes: int = 16 * 1024 * 1024
    max_inflight: int = 1024  # requests one frontend serves at once; more get 503 + Retry-After at once
    limits: RequestLimits = field(default_factory=RequestLimits, metadata={"env": "LIMIT"})  # DIFFMESH_LIMIT_*
    request_timeout_s: float = 600.0
    video_timeout_s: float = 3600.0  # a video job (POST /v1/videos) may run this long on its worker
    migration_limit: int = 3  # re-sends of one request to other workers (worker lost, stalled, full); 0 = none
    stall_timeout_s: float = 15.0  # a reply stream quiet this long lost its worker (workers keep alive every 2 s)
    api_key: str | None = field(default=None, repr=False)  # when set, requests need `Authorization: Bearer <key>`
    api_key_file: str | None = None  # more keys, one per line (rotation: list old and new)
    public_paths: str = "/health,/live,/ready,/metrics,/openapi.json,/v1/files/"  # need no key; '/'-ended = prefix
    media_dir: str | None = None  # local store served at /v1/files/ (url image responses)
    public_base_url: str | None = None
    max_inline_bytes: int | None = None  # media/embedding bytes carried in a bus message; larger go through the Object Store
    workers: int = 0  # HTTP processes sharing the port (SO_REUSEPORT); 0 = one per usable core
    # Seconds this process follows the bus before it listens: a process joining others on the port hears every
    # worker's heartbeat (1 s) and fetches their KV dumps first, so it never answers "no such model" for a live one.
    join_warmup_s: float = 0.0

    def __post_init__(self) -> None:
        modes = ("kv", "round_robin", "random", "least_loaded")
        if self.router_mode not in modes:
            raise ConfigError(f"router_mode={self.router_mode!r} is not one of {', '.join(modes)}")
        if self.router_url not in (None, "nats"):
            raise ConfigError(f"router_url={self.router_url!r}: use 'nats' (standalone router) or leave it unset")
        for name in ("port", "max_body_bytes", "max_inflight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.migration_limit < 0 or self.stall_timeout_s < 0:
            raise ConfigError(f"migration_limit={self.migration_limit} and stall_timeout_s={self.stall_timeout_s} "
                              "must be >= 0")
        for name in ("request_timeout_s", "video_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        if self.join_warmup_s < 0:
            raise ConfigError(f"join_warmup_s={self.join_warmup_s} must be >= 0")
        if self.workers < 0:
            raise ConfigError(f"workers={self.workers} must be >= 0 (0 = one per core)")

    @property
    def num_processes(self) -> int:
        """HTTP processes to run: `workers`, or the cores this process may use."""
        return self.workers or len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class RuntimeConfig:
    """A worker process: bus, identity, heartbeats, drain (the engine has its own config)."""

    nats: NatsConfig = field(default_factory=NatsConfig)
    namespace: str = "dm"
    worker_id: str | None = None  # None = "<component>-<random hex>"
    heartbeat_s: float = 1.0
    load_interval_s: float = 0.25  # load reports at most this often, when load changed
    drain_timeout_s: float = field(default=30.0, metadata={"env": "DRAIN_TIMEOUT"})  # SIGTERM: in-flight work gets this long
    nats_give_up_after_s: float | None = field(default=None, metadata={"env": "NATS_GIVE_UP_AFTER"})  # None = retry forever
    health_host: str = "0.0.0.0"
    health_port: int | None = None  # None = no HTTP health endpoint
    js_replicas: int = 0  # replica count of the registry buckets; 0 = 3 on a NATS cluster of 3 or more, else 1
    keepalive_s: float = 2.0  # a request's stream that said nothing this long gets an Ack (0 = never)
    max_inline_bytes: int | None = None  # reply bytes (embeddings) inline in a message; None = server max_payload - 64 KiB

    def __post_init__(self) -> None:
        if not self.drain_timeout_s >= 0:
            raise ConfigError(f"drain_timeout_s={self.drain_timeout_s} (--drain-timeout, DIFFMESH_DRAIN_TIMEOUT) must be >= 0")
        if self.nats_give_up_after_s is not None and not self.nats_give_up_after_s > 0:
            raise ConfigError(f"nats_give_up_after_s={self.nats_give_up_after_s} (--nats-give-up-after, "
                              "DIFFMESH_NATS_GIVE_UP_AFTER) must be > 0")
        if self.health_port is not None and not 0 <= self.health_port < 65536:
            raise ConfigError(f"health_port={self.health_port} (--health-port, DIFFMESH_HEALTH_PORT) is not a port")


ENV_PREFIX = "DIFFMESH_"
# prometheus_client's multiprocess directory: set (before it is imported) when several frontends share a port
METRICS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MODEL_CACHE_DIR = "~/.cache/diffmesh/models"  # where workers build their tiny default models (env DIFFMESH_MODEL_CACHE)


def _coerce(name: str, raw: str, kind: type) -> object:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc


def _field_kind(f: dataclasses.Field) -> type:
    text = str(f.type).replace(" ", "")
    for kind in (bool, int, float):
        if text.startswith(kind.__name__):
            return kind
    return str


def from_env(cls, env: dict[str, str] | None = None, prefix: str = ENV_PREFIX, **overrides):
    """Build config `cls` from defaults, then DIFFMESH_<FIELD> env vars, then explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            continue
        key = prefix + f.metadata.get("env", f.name.upper())
        if key in env and env[key] != "":  # an empty variable means "unset" (compose cannot unset one)
            values[f.name] = _coerce(key, env[key], _field_kind(f))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def media_from_env(env: dict[str, str] | None = None, **overrides) -> MediaConfig:
    """MediaConfig from DIFFMESH_MEDIA_* variables (DIFFMESH_MEDIA_ALLOWED_HOSTS, DIFFMESH_MEDIA_MAX_BYTES, ...) and flags."""
    env = os.environ if env is None else env
    env = {k: v for k, v in env.items() if k != ENV_PREFIX + "MEDIA_RESOLVER"}  # a class, never a string
    return from_env(MediaConfig, env, prefix=ENV_PREFIX + "MEDIA_", **overrides)


def to_env(config, prefix: str = ENV_PREFIX) -> dict[str, str]:
    """The DIFFMESH_* variables that make `from_env` (and nats_/media_from_env) build `config` again: None as "",
    which reads as unset; tuples comma-separated; objects that are not numbers or strings (a resolver class) left out."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = prefix + f.metadata.get("env", f.name.upper())
        if dataclasses.is_dataclass(value):
            env.update(to_env(value, key + "_"))
        elif isinstance(value, bool):
            env[key] = "1" if value else "0"
        elif isinstance(value, tuple):
            env[key] = ",".join(map(str, value))
        elif value is None or isinstance(value, (int, float, str)):
            env[key] = "" if value is None else str(value)
    return env


def nats_from_env(env: dict[str, str] | None = None, **overrides) -> NatsConfig:
    """NatsConfig from DIFFMESH_NATS_* variables (DIFFMESH_NATS_URL, DIFFMESH_NATS_USER, ...) and flags."""
    return from_env(NatsConfig, env, prefix=ENV_PREFIX + "NATS_", **overrides)
