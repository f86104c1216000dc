"""`diffmesh` command line: up, frontend, worker <kind>, router, replay, nats. The top of the import graph."""

from __future__ import annotations

import argparse
import sys

import router.cli
from diffmesh import launch
from diffmesh.launch import available_kinds
from shell import logs
from shell.config import ConfigError
from shell.flags import (
    add_drain_flag, add_frontend_flags, add_nats_flags, add_restart_flags, add_worker_flags, frontend_config, runtime_config,
)
from shell.process import EXIT_STARTUP, StartupError, watch_parent_from_env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmesh", description="Distributed inference mesh for diffusion workloads")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=["auto", "json", "text"], default="auto",
                        help="JSON lines with request ids (auto: text on a terminal, JSON otherwise)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="embedded NATS + frontend + one worker of each kind, on this machine")
    add_frontend_flags(up)
    up.add_argument("--nats-port", type=int, default=4222, help="embedded NATS port (a free one if taken)")
    up.add_argument("--mocker", type=int, default=1, help="mocker workers to start")
    up.add_argument("--dllm", type=int, default=1, help="dLLM workers to start (tiny default model built on first run)")
    up.add_argument("--image", type=int, default=1, help="image workers to start (the trained demo shapes model, tiny-sd)")
    up.add_argument("--encode", type=int, help="vision encode workers to start (default: 1 when a dLLM worker starts; "
                                               "the tiny dLLM takes images through it)")
    up.add_argument("--demo-dllm", type=int, default=1,
                    help="dLLM workers on the trained demo model (demo-dllm: answers templated prompts), beside tiny-dllm")
    up.add_argument("--video", type=int, default=0,
                    help="video workers to start (a tiny random Wan2.1 pipeline, tiny-wan, built on first run)")
    up.add_argument("--mocker-speedup", type=float, default=1.0, help="mocker speedup ratio ('inf' = no simulated time)")
    up.add_argument("--namespace")
    add_drain_flag(up)
    add_restart_flags(up)
    up.add_argument("--dry-run", action="store_true", help="print what would start and exit")

    frontend = sub.add_parser("frontend", help="the OpenAI-compatible HTTP frontend (embedded KV router)")
    add_frontend_flags(frontend)
    add_nats_flags(frontend)
    add_restart_flags(frontend)  # of its --workers processes beyond the first
    frontend.add_argument("--dry-run", action="store_true", help="validate the configuration and exit")

    worker = sub.add_parser("worker", help="serve one engine on the mesh")
    kinds = worker.add_subparsers(dest="kind", required=True)
    for kind, module in available_kinds().items():
        kind_parser = kinds.add_parser(kind, help=f"{kind} worker")
        add_worker_flags(kind_parser)
        module.add_arguments(kind_parser)

    nats_cmd = sub.add_parser("nats", help="run a standalone nats-server with the mesh's settings (JetStream, 8 MB payloads)")
    nats_cmd.add_argument("--port", type=int, default=4222)
    nats_cmd.add_argument("--host", default="0.0.0.0")
    nats_cmd.add_argument("--store-dir", help="JetStream directory (default: a temporary one)")
    nats_cmd.add_argument("--dry-run", action="store_true")
    router.cli.add_router_arguments(sub.add_parser(
        "router", help="standalone KV router: request/reply service for frontends started with --router-url nats"))
    router.cli.add_replay_arguments(sub.add_parser(
        "replay", help="replay a Mooncake trace against simulated workers in virtual time"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    watch_parent_from_env()  # started by `up` (or another launcher): exit with it (the fallback to PR_SET_PDEATHSIG)
    try:
        return _dispatch(args)
    except (ConfigError, StartupError) as exc:
        print(f"diffmesh: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        return launch.up(args)
    if args.command == "frontend":
        return launch.frontend(args, frontend_config(args))
    if args.command == "worker":
        return launch.worker(args, runtime_config(args), available_kinds()[args.kind])
    if args.command == "nats":
        return launch.nats_server(args)
    if args.command == "router":
        return launch.router(args, router.cli.service_config(args))
    if args.command == "replay":
        return router.cli.run_replay(args)
    raise ConfigError(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
