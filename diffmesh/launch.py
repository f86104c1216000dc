"""Process orchestration behind the CLI: `up` (everything on one machine) and each part on its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import shutil
import sys
import tempfile
import time

import workers.dllm
import workers.encode
import workers.image
import workers.mocker
from diffmesh.frontends import child_supervisor, frontend_specs, serve_group, shared_metrics
from protocol.errors import MeshError
from router.service import ServiceConfig
from shell import logs
from shell.bus import BrokerUnreachable, EmbeddedNats, find_nats_server, server_config_text
from shell.config import METRICS_MULTIPROC_ENV, ConfigError, FrontendConfig, NatsConfig, RuntimeConfig, from_env
from shell.flags import frontend_config, restart_policy
from shell.images import solid_png_data_url
from shell.metrics import FrontendMetrics, SupervisorMetrics
from shell.process import (EXIT_BROKER_LOST, EXIT_GAVE_UP, EXIT_OK, StartupError, owned_temp_dir, run,
                           run_until_signal, tune_gc)
from shell.supervise import ChildSpec, RestartPolicy

SECRET_ARGS = {"nats_password", "nats_token", "api_key"}  # never printed (dry runs) or logged
UP_WAIT_S = 300.0  # first run builds the tiny models
CHILD_STOP_GRACE_S = 10.0  # `up` SIGKILLs a worker still running drain timeout + this after its SIGTERM
SHUTDOWN_WATCHDOG_S = 90.0  # a frontend (in-flight HTTP: aiohttp waits up to 60 s) or router is gone this long after SIGTERM
MEDIA_DIR_PREFIX = "diffmesh-media-"  # then up's pid: url responses live as long as `up`
UP_EXIT_GRACE_S = 90.0  # `up` is gone drain timeout + this after a SIGTERM, whatever hangs (frontend, nats)
# one per process (`up`'s workers would collide), or the frontends' own (their shared metrics directory)
NOT_INHERITED = ("DIFFMESH_HEALTH_PORT", "DIFFMESH_WORKER_ID", METRICS_MULTIPROC_ENV)
WORKER_KINDS = {"mocker": workers.mocker, "dllm": workers.dllm, "image": workers.image, "encode": workers.encode}  # each: add_arguments, serve, REQUIRES


def available_kinds() -> dict[str, object]:
    """Worker kinds whose required packages are installed here (a slim frontend image has only the mocker)."""
    return {kind: module for kind, module in WORKER_KINDS.items()
            if all(importlib.util.find_spec(name) is not None for name in module.REQUIRES)}


def frontend(args: argparse.Namespace, config: FrontendConfig) -> int:
    """`diffmesh frontend`: serve HTTP in `--workers` processes until SIGINT/SIGTERM; the exit code."""
    import frontend as component
    from frontend.auth import load_api_keys

    if args.dry_run:
        print(config)
        print(f"api keys: {len(load_api_keys(config))} (never shown)")
        return 0
    tune_gc()
    policy = restart_policy(args)
    with shared_metrics(config.num_processes):
        specs = frontend_specs(config, _log_args(args))
        return run_until_signal(lambda stop: serve_group(lambda s: component.serve(config, stop=s), specs, policy, stop),
                                hard_exit_after_s=SHUTDOWN_WATCHDOG_S)


def _log_args(args: argparse.Namespace) -> list[str]:
    fmt = logs.resolve_format(args.log_format)  # stderr is a pipe to the supervisor: keep what our own stderr gets
    return ["--log-level", args.log_level, "--log-format", fmt]


def worker(args: argparse.Namespace, config: RuntimeConfig, kind) -> int:
    """`diffmesh worker <kind>`: build the engine and serve it until SIGTERM (drain) or SIGINT; the exit code."""
    if args.dry_run:
        print(config)
        print({k: "<redacted>" if k in SECRET_ARGS and v else v for k, v in vars(args).items()})
        return 0
    return run(_serve_worker(kind, config, args))


async def _serve_worker(kind, config: RuntimeConfig, args: argparse.Namespace) -> int:
    """How the worker ended (`shell.process` EXIT_*); a failure before it served is a one-line StartupError."""
    ready = asyncio.get_running_loop().create_future()
    try:
        await kind.serve(config, args, ready=ready)
    except BrokerUnreachable as exc:
        print(f"diffmesh: {exc}", file=sys.stderr)
        return EXIT_BROKER_LOST
    except (MeshError, OSError) as exc:
        if ready.done():
            raise
        raise StartupError(f"worker {args.kind} cannot start: {' '.join(str(exc).split())}") from exc  # one line
    return ready.result().exit_code if ready.done() else EXIT_OK


def router(args: argparse.Namespace, config: ServiceConfig) -> int:
    """`diffmesh router`: the standalone router until SIGINT/SIGTERM."""
    import router as component

    if args.dry_run:
        print(config.router)
        print(f"namespace={config.namespace} nats={config.nats.servers}")
        return 0
    tune_gc()
    run_until_signal(lambda stop: component.serve(config, stop), hard_exit_after_s=SHUTDOWN_WATCHDOG_S)
    return 0


def nats_server(args: argparse.Namespace) -> int:
    store = args.store_dir or tempfile.mkdtemp(prefix="diffmesh-nats-")
    conf = os.path.join(store, "nats.conf")
    text = server_config_text(args.port, 8222, store, args.host)
    if args.dry_run:
        print(text)
        return 0
    with open(conf, "w") as handle:
        handle.write(text)
    os.execv(find_nats_server(), [find_nats_server(), "-c", conf])


def _worker_commands(args: argparse.Namespace, nats_url: str) -> list[list[str]]:
    base = [sys.executable, "-m", "diffmesh.cli", *_log_args(args), "worker"]
    common = ["--nats-url", nats_url, "--namespace", args.namespace or "dm"]
    if args.drain_timeout is not None:
        common += ["--drain-timeout", str(args.drain_timeout)]
    kinds = available_kinds()
    commands = [base + ["mocker", *common, "--speedup-ratio", str(args.mocker_speedup)] for _ in range(args.mocker)]
    encoders = args.encode if args.encode is not None else (1 if args.dllm else 0)  # the dLLM's images need one
    demo = ["--tiny", "demo"]
    for kind, count, extra in (("encode", encoders, []), ("dllm", args.dllm, []),
                               ("dllm", getattr(args, "demo_dllm", 0), demo), ("image", args.image, []),
                               ("image", getattr(args, "video", 0), ["--tiny-family", "wan"])):
        if count and kind not in kinds:
            print(f"diffmesh up: no {kind} worker in this install (pip install 'diffmesh[ml]'); skipping it", file=sys.stderr)
            continue
        commands += [base + [kind, *common, *extra] for _ in range(count)]
    return commands


def _worker_specs(commands: list[list[str]], env: dict[str, str]) -> list[ChildSpec]:
    """One supervised child per command, named by kind and index: mocker-0, dllm-0, ..."""
    seen: dict[str, int] = {}
    specs = []
    for command in commands:
        kind = command[command.index("worker") + 1]
        specs.append(ChildSpec(f"{kind}-{seen.get(kind, 0)}", command, env))
        seen[kind] = seen.get(kind, 0) + 1
    return specs


def up(args: argparse.Namespace) -> int:
    """Embedded NATS, N supervised workers as child processes, the frontend in this process; Ctrl-C stops all."""
    policy = restart_policy(args)
    drain_s = from_env(RuntimeConfig, drain_timeout_s=args.drain_timeout).drain_timeout_s
    if args.dry_run:
        for command in _worker_commands(args, "nats://127.0.0.1:4222"):
            print(" ".join(command))
        return 0
    if args.router_url:
        raise ConfigError("--router-url: `up` embeds the router in its frontend; start `diffmesh router` and "
                          "`diffmesh frontend --router-url nats` separately for a standalone one")
    server = EmbeddedNats(port=args.nats_port).start()
    try:
        with contextlib.ExitStack() as scratch:  # url responses live as long as `up`, unless --media-dir keeps them
            media_dir = args.media_dir
            if not media_dir:
                media_dir = owned_temp_dir(MEDIA_DIR_PREFIX)
                scratch.callback(shutil.rmtree, media_dir, True)
            config = frontend_config(args, nats=NatsConfig(url=server.url), media_dir=media_dir)
            if not config.workers:  # the workers and nats-server run on these cores too: half of them for HTTP
                config = dataclasses.replace(config, workers=max(1, len(os.sched_getaffinity(0)) // 2))
            commands = _worker_commands(args, server.url)
            host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
            env = _worker_env(media_dir, f"http://{host}:{config.port}/v1/files", len(commands))
            specs = _worker_specs(commands, env)
            tune_gc()
            scratch.enter_context(shared_metrics(config.num_processes))
            frontends = frontend_specs(config, _log_args(args))
            return run_until_signal(lambda stop: _serve_up(config, server, specs, frontends, policy, drain_s, stop),
                                    hard_exit_after_s=drain_s + UP_EXIT_GRACE_S)
    finally:
        server.stop()


async def _serve_up(config: FrontendConfig, server: EmbeddedNats, specs: list[ChildSpec], frontends: list[ChildSpec],
                    policy: RestartPolicy, drain_s: float, stop: asyncio.Event) -> int:
    """The frontend first (a port in use fails before any worker starts), then the supervised workers and extra
    frontend processes; on stop the workers drain while the frontends still relay their last replies."""
    import frontend as component

    metrics = FrontendMetrics()
    supervisor = child_supervisor(specs + frontends, policy, SupervisorMetrics(metrics.registry))
    frontend_stop, listening = asyncio.Event(), asyncio.Event()
    http = asyncio.create_task(component.serve(config, ready=listening, stop=frontend_stop, metrics=metrics))
    await asyncio.wait([http, asyncio.ensure_future(listening.wait())], return_when=asyncio.FIRST_COMPLETED)
    if http.done():
        http.result()  # raises why it could not listen
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}"
    print(f"diffmesh is starting: HTTP {url}  NATS {server.url}  ({len(specs)} workers, "
          f"{len(frontends) + 1} frontend processes)", flush=True)
    announce = asyncio.create_task(_announce_ready(url, len(specs), stop))
    try:
        failure = await supervisor.run(stop, stop_timeout_s=drain_s + CHILD_STOP_GRACE_S)
    finally:
        announce.cancel()
        frontend_stop.set()
        await asyncio.gather(http, announce, return_exceptions=True)
    if failure is not None:
        print(f"diffmesh up: giving up: {failure.reason}", file=sys.stderr, flush=True)
        return EXIT_GAVE_UP
    return EXIT_OK


async def _announce_ready(url: str, expected: int, stop: asyncio.Event) -> None:
    models = await _wait_models(url, expected, stop)
    if models:
        print(f"ready: models {', '.join(m['id'] for m in models)}\n\n{_examples(url, models)}\n"
              f"  OpenAI base_url: {url}/v1   metrics: {url}/metrics   Ctrl-C stops everything", flush=True)


def _examples(url: str, models: list[dict]) -> str:
    """A ready-to-paste curl per kind of model that came up."""
    lines = []
    chats = [m["id"] for m in models if "chat" in m["kinds"]]
    chat = next((name for name in chats if name != "mocker"), chats[0] if chats else None)
    image = next((m["id"] for m in models if "images" in m["kinds"]), None)
    vision = next((m["id"] for m in models if "image" in m.get("input_modalities", []) and "chat" in m["kinds"]), None)
    demo = next((m["id"] for m in models if m["id"] == "demo-dllm"), None)
    video = next((m["id"] for m in models if "videos" in m["kinds"]), None)
    if chat:
        lines.append(f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
                     f"    -d '{{\"model\": \"{chat}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n")
    if demo:
        lines.append(f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
                     f"    -d '{{\"model\": \"{demo}\", \"messages\": [{{\"role\": \"user\", \"content\": "
                     f"\"i have a pink dog. what color is my dog?\"}}]}}'\n")
    if vision:
        part = f'{{"type": "image_url", "image_url": {{"url": "{solid_png_data_url((200, 40, 40), 4)}"}}}}'
        lines.append(f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
                     f"    -d '{{\"model\": \"{vision}\", \"messages\": [{{\"role\": \"user\", \"content\": "
                     f"[{{\"type\": \"text\", \"text\": \"What colour?\"}}, {part}]}}]}}'\n")
    if image:
        lines.append(f"  curl {url}/v1/images/generations -H 'Content-Type: application/json' \\\n"
                     f"    -d '{{\"model\": \"{image}\", \"prompt\": \"a red circle on blue\", \"response_format\": \"url\"}}'\n")
    if video:
        lines.append(f"  curl {url}/v1/videos -F model={video} -F prompt='a red ball' -F num_frames=9\n")
    return "\n".join(lines)


async def _wait_models(url: str, expected: int, stop: asyncio.Event) -> list[dict]:
    """The client-facing models, once `expected` workers are live (/health counts encode workers too)."""
    import aiohttp

    deadline = time.monotonic() + UP_WAIT_S
    async with aiohttp.ClientSession() as session:
        while not stop.is_set() and time.monotonic() < deadline:
            async with session.get(f"{url}/health") as response:
                live = (await response.json())["models"]
            if sum(len(workers) for workers in live.values()) >= expected:
                async with session.get(f"{url}/v1/models") as response:
                    return (await response.json())["data"]
            await asyncio.sleep(0.2)
    return []


def _worker_env(media_dir: str, files_url: str, num_workers: int) -> dict[str, str]:
    """Image workers write url responses where the frontend serves them; workers split this machine's cores."""
    env = {**{k: v for k, v in os.environ.items() if k not in NOT_INHERITED}, "DIFFMESH_MEDIA_DIR": media_dir}
    env.setdefault("DIFFMESH_PUBLIC_BASE_URL", files_url)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(num_workers, 1))))
    return env
