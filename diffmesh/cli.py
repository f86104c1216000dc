"""`diffmesh` command line: up, frontend, worker <kind>, nats."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from diffmesh import logs
from diffmesh.config import ConfigError, FrontendConfig, from_env, nats_from_env

WORKER_KINDS = {  # kind -> module with add_arguments(parser) and build_engine(args); ML imports only in build_engine
    "mocker": "workers.mocker.worker",
    "dllm": "workers.dllm.worker",
    "image": "workers.image.worker",
}


ML_PACKAGES = {"torch", "transformers", "diffusers", "accelerate", "safetensors"}


def available_kinds() -> dict[str, object]:
    """Worker kinds whose module imports here (a slim frontend image has only the mocker)."""
    kinds = {}
    for kind, name in WORKER_KINDS.items():
        if importlib.util.find_spec(name) is None:
            continue
        try:
            kinds[kind] = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # the ML extra is not installed; any other error is a bug and raises
            if exc.name not in ML_PACKAGES:
                raise
    return kinds


def _add_nats_flags(parser: argparse.ArgumentParser) -> None:
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


def _nats_config(args: argparse.Namespace):
    return nats_from_env(url=args.nats_url, user=args.nats_user, password=args.nats_password, token=args.nats_token,
                         creds_file=args.nats_creds, tls_ca=args.nats_tls_ca, tls_cert=args.nats_tls_cert,
                         tls_key=args.nats_tls_key)


def _add_frontend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="HTTP bind address (env DIFFMESH_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="HTTP port (env DIFFMESH_PORT, default 8000)")
    parser.add_argument("--router-mode", choices=["kv", "round_robin", "random", "least_loaded"],
                        help="worker choice (env DIFFMESH_ROUTER_MODE, default kv)")
    parser.add_argument("--router-url", choices=["nats"],
                        help="use the standalone `diffmesh router` service instead of the embedded router (env DIFFMESH_ROUTER_URL)")
    parser.add_argument("--api-key", help="require `Authorization: Bearer KEY` (env DIFFMESH_API_KEY)")
    parser.add_argument("--media-dir", help="local image store served at /v1/files/ (env DIFFMESH_MEDIA_DIR)")
    parser.add_argument("--request-timeout", type=float, dest="request_timeout_s", help="seconds per request")
    parser.add_argument("--max-body-bytes", type=int)


def frontend_config(args: argparse.Namespace) -> FrontendConfig:
    return from_env(FrontendConfig, nats=_nats_config(args), namespace=args.namespace, host=args.host, port=args.port,
                    router_mode=args.router_mode, router_url=args.router_url, api_key=args.api_key, media_dir=args.media_dir,
                    request_timeout_s=args.request_timeout_s, max_body_bytes=args.max_body_bytes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmesh", description="Distributed inference mesh for diffusion workloads")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=["auto", "json", "text"], default="auto",
                        help="JSON lines with request ids (auto: text on a terminal, JSON otherwise)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="embedded NATS + frontend + one worker of each kind, on this machine")
    _add_frontend_flags(up)
    up.add_argument("--nats-port", type=int, default=4222, help="embedded NATS port (a free one if taken)")
    up.add_argument("--mocker", type=int, default=1, help="mocker workers to start")
    up.add_argument("--dllm", type=int, default=1, help="dLLM workers to start (tiny default model built on first run)")
    up.add_argument("--image", type=int, default=1, help="image workers to start (tiny default pipeline built on first run)")
    up.add_argument("--mocker-speedup", type=float, default=1.0, help="mocker speedup ratio ('inf' = no simulated time)")
    up.add_argument("--namespace")
    up.add_argument("--dry-run", action="store_true", help="print what would start and exit")

    frontend = sub.add_parser("frontend", help="the OpenAI-compatible HTTP frontend (embedded KV router)")
    _add_frontend_flags(frontend)
    _add_nats_flags(frontend)
    frontend.add_argument("--dry-run", action="store_true", help="validate the configuration and exit")

    worker = sub.add_parser("worker", help="serve one engine on the mesh")
    kinds = worker.add_subparsers(dest="kind", required=True)
    for kind, module in available_kinds().items():
        kind_parser = kinds.add_parser(kind, help=f"{kind} worker")
        _add_nats_flags(kind_parser)
        kind_parser.add_argument("--worker-id", help="stable worker id (default: random)")
        kind_parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds")
        kind_parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds in-flight requests get on SIGTERM")
        kind_parser.add_argument("--dry-run", action="store_true", help="build the engine's configuration and exit")
        module.add_arguments(kind_parser)

    nats_cmd = sub.add_parser("nats", help="run a standalone nats-server with the mesh's settings (JetStream, 8 MB payloads)")
    nats_cmd.add_argument("--port", type=int, default=4222)
    nats_cmd.add_argument("--host", default="0.0.0.0")
    nats_cmd.add_argument("--store-dir", help="JetStream directory (default: a temporary one)")
    nats_cmd.add_argument("--dry-run", action="store_true")
    _add_optional(sub, "router", "router.cli", "add_router_arguments",
                  "standalone KV router: request/reply service for frontends started with --router-url nats")
    _add_optional(sub, "replay", "router.cli", "add_replay_arguments",
                  "replay a Mooncake trace against simulated workers in virtual time")
    return parser


def _add_optional(sub, name: str, module: str, function: str, help_text: str) -> None:
    """Subcommands whose module may not be installed in a slim image."""
    try:
        add = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):
        return
    add(sub.add_parser(name, help=help_text))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"diffmesh: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from diffmesh import launch

    if args.command == "up":
        return launch.up(args)
    if args.command == "frontend":
        return launch.frontend(args, frontend_config(args))
    if args.command == "worker":
        return launch.worker(args, _nats_config(args), importlib.import_module(WORKER_KINDS[args.kind]))
    if args.command == "nats":
        return launch.nats_server(args)
    if args.command == "router":
        return importlib.import_module("router.cli").run_router(args)
    if args.command == "replay":
        return importlib.import_module("router.cli").run_replay(args)
    raise ConfigError(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
