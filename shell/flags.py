"""CLI flag helpers, defined once: NATS connection, frontend and worker-runtime flags, and the configs they build.

Each component adds its own flags (`router.cli`, `workers.<kind>.add_arguments`); these are the shared ones.
"""

from __future__ import annotations

import argparse
import dataclasses

from shell.config import (
    ENV_PREFIX, FrontendConfig, NatsConfig, RequestLimits, RuntimeConfig, from_env, media_from_env, nats_from_env,
)
from shell.supervise import RestartPolicy


def add_nats_flags(parser: argparse.ArgumentParser) -> None:
    """--nats-* connection flags and --namespace; `nats_config(args)` reads them back."""
    group = parser.add_argument_group("NATS (env DIFFMESH_NATS_URL, DIFFMESH_NATS_USER, ...)")
    group.add_argument("--nats-url", help="nats://host:port[,nats://...] (default nats://127.0.0.1:4222)")
    group.add_argument("--nats-user")
    group.add_argument("--nats-password")
    group.add_argument("--nats-token")
    group.add_argument("--nats-creds", help="NATS .creds file")
    group.add_argument("--nats-nkey", help="file with a user nkey seed")
    group.add_argument("--nats-tls-ca")
    group.add_argument("--nats-tls-cert")
    group.add_argument("--nats-tls-key")
    parser.add_argument("--namespace", help="subject namespace (env DIFFMESH_NAMESPACE, default dm)")


def nats_config(args: argparse.Namespace) -> NatsConfig:
    """NatsConfig from DIFFMESH_NATS_* variables, then the flags `add_nats_flags` defined."""
    return nats_from_env(url=args.nats_url, user=args.nats_user, password=args.nats_password, token=args.nats_token,
                         creds_file=args.nats_creds, nkey_seed=args.nats_nkey, tls_ca=args.nats_tls_ca, tls_cert=args.nats_tls_cert,
                         tls_key=args.nats_tls_key)


def add_frontend_flags(parser: argparse.ArgumentParser) -> None:
    """HTTP and routing flags of `diffmesh frontend` and `diffmesh up`; `frontend_config(args)` reads them back."""
    parser.add_argument("--host", help="HTTP bind address (env DIFFMESH_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="HTTP port (env DIFFMESH_PORT, default 8000)")
    parser.add_argument("--router-mode", choices=["kv", "round_robin", "random", "least_loaded"],
                        help="worker choice (env DIFFMESH_ROUTER_MODE, default kv)")
    parser.add_argument("--router-url", choices=["nats"],
                        help="use the standalone `diffmesh router` service instead of the embedded router (env DIFFMESH_ROUTER_URL)")
    parser.add_argument("--api-key", help="require `Authorization: Bearer KEY` (env DIFFMESH_API_KEY; prefer the file: "
                                          "flags show in `ps`)")
    parser.add_argument("--api-key-file", help="file of accepted API keys, one per line (env DIFFMESH_API_KEY_FILE)")
    parser.add_argument("--public-paths", help="comma-separated paths that need no key; a trailing '/' makes a prefix "
                                               "(env DIFFMESH_PUBLIC_PATHS; default /health,/live,/ready,/metrics,"
                                               "/openapi.json,/v1/files/; '' or ',' protects them all)")
    parser.add_argument("--media-dir", help="local image store served at /v1/files/ (env DIFFMESH_MEDIA_DIR)")
    parser.add_argument("--request-timeout", type=float, dest="request_timeout_s", help="seconds per request")
    parser.add_argument("--video-timeout", type=float, dest="video_timeout_s", help="seconds a video job may run (3600)")
    parser.add_argument("--migration-limit", type=int,
                        help="re-sends of a request to another worker when its worker is lost, mid-stream included "
                             "(env DIFFMESH_MIGRATION_LIMIT, default 3; 0 = off)")
    parser.add_argument("--stall-timeout", type=float, dest="stall_timeout_s",
                        help="seconds a reply stream may stay quiet before its worker counts as lost (default 15; 0 = off)")
    parser.add_argument("--max-body-bytes", type=int)
    parser.add_argument("--workers", type=int, help="HTTP frontend processes sharing the port, each with its own NATS "
                        "connection and synced router (env DIFFMESH_WORKERS; default one per core, half of them for up)")
    parser.add_argument("--max-inflight", type=int,
                        help="requests served at once; more get 503 + Retry-After (env DIFFMESH_MAX_INFLIGHT, default 1024)")
    limits = parser.add_argument_group("request limits (a request over one is a 400 naming the field; env DIFFMESH_LIMIT_*)")
    for f in dataclasses.fields(RequestLimits):
        limits.add_argument(f"--limit-{f.name.replace('_', '-')}", type=int, dest=f"limit_{f.name}",
                            help=f"default {f.default}")
    media = parser.add_argument_group("chat image inputs (env DIFFMESH_MEDIA_*)")
    media.add_argument("--media-allowed-hosts", help="comma-separated host names, IPs or CIDR networks that image URLs may "
                                                    "reach although not public (default: none; loopback, private and "
                                                    "link-local addresses are refused)")
    media.add_argument("--media-max-bytes", type=int, help="largest image, encoded (default 16 MiB)")
    media.add_argument("--media-max-pixels", type=int, help="largest width x height (default 32 Mi pixels)")
    media.add_argument("--media-timeout", type=float, dest="media_timeout_s", help="seconds per image download (default 10)")


def limits_config(args: argparse.Namespace) -> RequestLimits:
    """RequestLimits from DIFFMESH_LIMIT_* variables, then the --limit-* flags."""
    flags = {f.name: getattr(args, f"limit_{f.name}", None) for f in dataclasses.fields(RequestLimits)}
    return from_env(RequestLimits, prefix="DIFFMESH_LIMIT_", **flags)


def frontend_config(args: argparse.Namespace, **overrides) -> FrontendConfig:
    """FrontendConfig from DIFFMESH_* variables, then the flags, then `overrides` (what `up` fixes itself)."""
    values = dict(nats=nats_config(args) if hasattr(args, "nats_url") else None, namespace=args.namespace,
                  host=args.host, port=args.port, router_mode=args.router_mode, router_url=args.router_url,
                  api_key=args.api_key, api_key_file=args.api_key_file, public_paths=args.public_paths,
                  media_dir=args.media_dir, request_timeout_s=args.request_timeout_s,
                  migration_limit=args.migration_limit, stall_timeout_s=args.stall_timeout_s,
                  max_body_bytes=args.max_body_bytes, video_timeout_s=args.video_timeout_s, max_inflight=args.max_inflight,
                  limits=limits_config(args), workers=args.workers,
                  media=media_from_env(allowed_hosts=args.media_allowed_hosts, max_bytes=args.media_max_bytes,
                                       max_pixels=args.media_max_pixels, timeout_s=args.media_timeout_s))
    return from_env(FrontendConfig, **{**values, **overrides})


def add_worker_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every `diffmesh worker <kind>` takes; `runtime_config(args)` reads them back."""
    add_nats_flags(parser)
    parser.add_argument("--worker-id", help="stable worker id (default: random)")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds")
    add_drain_flag(parser)
    parser.add_argument("--nats-give-up-after", type=float, dest="nats_give_up_after",
                        help="exit (code 3) when NATS stays unreachable this many seconds (env "
                             "DIFFMESH_NATS_GIVE_UP_AFTER; default: retry forever)")
    parser.add_argument("--health-port", type=int,
                        help="serve GET /health (503 while NATS is unreachable or draining) and /live on this port "
                             "(env DIFFMESH_HEALTH_PORT; default: none)")
    parser.add_argument("--health-host", help="bind address of --health-port (env DIFFMESH_HEALTH_HOST, default 0.0.0.0)")
    parser.add_argument("--keepalive", type=float, dest="keepalive_s",
                        help="seconds a quiet request's stream waits before an Ack keeps it alive (env DIFFMESH_KEEPALIVE_S, "
                             "default 2; frontends count a stream quiet for --stall-timeout as lost)")
    parser.add_argument("--dry-run", action="store_true", help="build the engine's configuration and exit")


def add_drain_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--drain-timeout", type=float,
                        help="seconds in-flight requests get on SIGTERM before they are cut (env DIFFMESH_DRAIN_TIMEOUT, "
                             "default 30); a second SIGTERM/SIGINT exits at once")


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    """RuntimeConfig from DIFFMESH_* variables, then the flags `add_worker_flags` defined."""
    return from_env(RuntimeConfig, nats=nats_config(args), namespace=args.namespace, worker_id=args.worker_id,
                    heartbeat_s=args.heartbeat, drain_timeout_s=args.drain_timeout,
                    nats_give_up_after_s=args.nats_give_up_after, health_port=args.health_port,
                    health_host=args.health_host, keepalive_s=args.keepalive_s)


def add_restart_flags(parser: argparse.ArgumentParser) -> None:
    """How a supervisor restarts crashed children (`diffmesh up`); `restart_policy(args)` reads them back."""
    group = parser.add_argument_group("restarts of crashed children (env DIFFMESH_RESTART_*)")
    group.add_argument("--restart-backoff", type=float, help="seconds before the first restart, doubled per crash (default 1)")
    group.add_argument("--restart-max-backoff", type=float, help="cap of the restart delay in seconds (default 30)")
    group.add_argument("--max-crashes", type=int, help="give up (exit 5) after this many crashes of one child ... (default 5)")
    group.add_argument("--crash-window", type=float, help="... within this many seconds (default 60)")


def restart_policy(args: argparse.Namespace) -> RestartPolicy:
    """RestartPolicy from DIFFMESH_RESTART_* variables (DIFFMESH_RESTART_MAX_CRASHES, ...), then the flags."""
    return from_env(RestartPolicy, prefix=ENV_PREFIX + "RESTART_", backoff_s=args.restart_backoff,
                    max_backoff_s=args.restart_max_backoff, max_crashes=args.max_crashes, window_s=args.crash_window)
