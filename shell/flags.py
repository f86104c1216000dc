"""CLI flag helpers, defined once: NATS connection, frontend and worker-runtime flags, and the configs they build.

Each component adds its own flags (`router.cli`, `workers.<kind>.add_arguments`); these are the shared ones.
"""

from __future__ import annotations

import argparse

from shell.config import (
    FrontendConfig,
    NatsConfig,
    RuntimeConfig,
    from_env,
    nats_from_env,
)


def add_nats_flags(parser: argparse.ArgumentParser) -> None:
    """--nats-* connection flags and --namespace; `nats_config(args)` reads them back."""
    group = parser.add_argument_group("NATS (env DIFFMESH_NATS_URL, DIFFMESH_NATS_USER, ...)")
    group.add_argument("--nats-url", help="nats://host:port[,nats://...] (default nats://127.0.0.1:4222)")
    group.add_argument("--nats-user")
    group.add_argument("--nats-password")
    group.add_argument("--nats-token")
    group.add_argument("--nats-creds", help="NATS .creds file")
    group.add_argument("--nats-tls-ca")
    group.add_argument("--nats-tls-cert")
    group.add_argument("--nats-tls-key")
    parser.add_argument("--namespace", help="subject namespace (env DIFFMESH_NAMESPACE, default dm)")


def nats_config(args: argparse.Namespace) -> NatsConfig:
    """NatsConfig from DIFFMESH_NATS_* variables, then the flags `add_nats_flags` defined."""
    return nats_from_env(url=args.nats_url, user=args.nats_user, password=args.nats_password, token=args.nats_token,
                         creds_file=args.nats_creds, tls_ca=args.nats_tls_ca, tls_cert=args.nats_tls_cert,
                         tls_key=args.nats_tls_key)


def add_frontend_flags(parser: argparse.ArgumentParser) -> None:
    """HTTP and routing flags of `diffmesh frontend` and `diffmesh up`; `frontend_config(args)` reads them back."""
    parser.add_argument("--host", help="HTTP bind address (env DIFFMESH_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="HTTP port (env DIFFMESH_PORT, default 8000)")
    parser.add_argument("--router-mode", choices=["kv", "round_robin", "random", "least_loaded"],
                        help="worker choice (env DIFFMESH_ROUTER_MODE, default kv)")
    parser.add_argument("--router-url", choices=["nats"],
                        help="use the standalone `diffmesh router` service instead of the embedded router (env DIFFMESH_ROUTER_URL)")
    parser.add_argument("--api-key", help="require `Authorization: Bearer KEY` (env DIFFMESH_API_KEY)")
    parser.add_argument("--media-dir", help="local image store served at /v1/files/ (env DIFFMESH_MEDIA_DIR)")
    parser.add_argument("--request-timeout", type=float, dest="request_timeout_s", help="seconds per request")
    parser.add_argument("--video-timeout", type=float, dest="video_timeout_s", help="seconds a video job may run (3600)")
    parser.add_argument("--max-body-bytes", type=int)


def frontend_config(args: argparse.Namespace, **overrides) -> FrontendConfig:
    """FrontendConfig from DIFFMESH_* variables, then the flags, then `overrides` (what `up` fixes itself)."""
    values = dict(nats=nats_config(args) if hasattr(args, "nats_url") else None, namespace=args.namespace,
                  host=args.host, port=args.port, router_mode=args.router_mode, router_url=args.router_url,
                  api_key=args.api_key, media_dir=args.media_dir, request_timeout_s=args.request_timeout_s,
                  video_timeout_s=args.video_timeout_s,
                  max_body_bytes=args.max_body_bytes)
    return from_env(FrontendConfig, **{**values, **overrides})


def add_worker_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every `diffmesh worker <kind>` takes; `runtime_config(args)` reads them back."""
    add_nats_flags(parser)
    parser.add_argument("--worker-id", help="stable worker id (default: random)")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
    parser.add_argument("--dry-run", action="store_true", help="build the engine's configuration and exit")


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    """RuntimeConfig from DIFFMESH_* variables, then the flags `add_worker_flags` defined."""
    return from_env(RuntimeConfig, nats=nats_config(args), namespace=args.namespace, worker_id=args.worker_id,
                    heartbeat_s=args.heartbeat, drain_timeout_s=args.drain_timeout)
