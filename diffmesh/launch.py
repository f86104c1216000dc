"""Process orchestration behind the CLI: `up` (everything on one machine) and each part on its own."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time

import workers.dllm
import workers.image
import workers.mocker
from router.service import ServiceConfig
from shell.bus import EmbeddedNats, find_nats_server, server_config_text
from shell.config import ConfigError, FrontendConfig, NatsConfig, RuntimeConfig
from shell.flags import frontend_config
from shell.process import run, run_until_signal, tune_gc

UP_WAIT_S = 300.0  # first run builds the tiny models
WORKER_KINDS = {"mocker": workers.mocker, "dllm": workers.dllm, "image": workers.image}  # each: add_arguments, serve, REQUIRES


def available_kinds() -> dict[str, object]:
    """Worker kinds whose required packages are installed here (a slim frontend image has only the mocker)."""
    return {kind: module for kind, module in WORKER_KINDS.items()
            if all(importlib.util.find_spec(name) is not None for name in module.REQUIRES)}


def frontend(args: argparse.Namespace, config: FrontendConfig) -> int:
    """`diffmesh frontend`: serve HTTP until SIGINT/SIGTERM."""
    import frontend as component

    if args.dry_run:
        print(config)
        return 0
    tune_gc()
    run_until_signal(lambda stop: component.serve(config, stop=stop))
    return 0


def worker(args: argparse.Namespace, config: RuntimeConfig, kind) -> int:
    """`diffmesh worker <kind>`: build the engine and serve it until SIGTERM (drain) or SIGINT."""
    if args.dry_run:
        print(config)
        print(vars(args))
        return 0
    run(kind.serve(config, args))
    return 0


def router(args: argparse.Namespace, config: ServiceConfig) -> int:
    """`diffmesh router`: the standalone router until SIGINT/SIGTERM."""
    import router as component

    if args.dry_run:
        print(config.router)
        print(f"namespace={config.namespace} nats={config.nats.servers}")
        return 0
    tune_gc()
    run_until_signal(lambda stop: component.serve(config, stop))
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
    base = [sys.executable, "-m", "diffmesh.cli", "--log-level", args.log_level, "--log-format", args.log_format, "worker"]
    common = ["--nats-url", nats_url, "--namespace", args.namespace or "dm"]
    kinds = available_kinds()
    commands = [base + ["mocker", *common, "--speedup-ratio", str(args.mocker_speedup)] for _ in range(args.mocker)]
    video = getattr(args, "video", 0)
    for kind, count, extra in (("dllm", args.dllm, []), ("image", args.image, []),
                               ("image", video, ["--tiny-family", "wan"])):
        if count and kind not in kinds:
            print(f"diffmesh up: no {kind} worker in this install (pip install 'diffmesh[ml]'); skipping it", file=sys.stderr)
            continue
        commands += [base + [kind, *common, *extra] for _ in range(count)]
    return commands


def up(args: argparse.Namespace) -> int:
    """Embedded NATS, N workers as child processes, the frontend in this process; Ctrl-C stops all."""
    if args.dry_run:
        for command in _worker_commands(args, "nats://127.0.0.1:4222"):
            print(" ".join(command))
        return 0
    if args.router_url:
        raise ConfigError("--router-url: `up` embeds the router in its frontend; start `diffmesh router` and "
                          "`diffmesh frontend --router-url nats` separately for a standalone one")
    server = EmbeddedNats(port=args.nats_port).start()
    media_dir = args.media_dir or tempfile.mkdtemp(prefix="diffmesh-media-")
    config = frontend_config(args, nats=NatsConfig(url=server.url), media_dir=media_dir)
    commands = _worker_commands(args, server.url)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    files_url = f"http://{host}:{config.port}/v1/files"
    children = [subprocess.Popen(command, env=_worker_env(media_dir, files_url, len(commands)), start_new_session=True)
                for command in commands]
    tune_gc()
    try:
        run_until_signal(lambda stop: _serve_up(config, server, children, stop))
    finally:
        _stop_children(children)
        server.stop()
    return 0


async def _serve_up(config: FrontendConfig, server: EmbeddedNats, children, stop: asyncio.Event) -> None:
    import frontend as component

    ready = asyncio.Event()
    task = asyncio.create_task(component.serve(config, ready=ready, stop=stop))
    await ready.wait()
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}"
    print(f"diffmesh is starting: HTTP {url}  NATS {server.url}  ({len(children)} workers)", flush=True)
    models = await _wait_models(url, len(children), stop)
    if models:
        print(f"ready: models {', '.join(m['id'] for m in models)}\n\n{_examples(url, models)}\n"
              f"  OpenAI base_url: {url}/v1   metrics: {url}/metrics   Ctrl-C stops everything", flush=True)
    await task


def _examples(url: str, models: list[dict]) -> str:
    """A ready-to-paste curl per kind of model that came up."""
    lines = []
    chats = [m["id"] for m in models if "chat" in m["kinds"]]
    chat = next((name for name in chats if name != "mocker"), chats[0] if chats else None)
    image = next((m["id"] for m in models if "images" in m["kinds"]), None)
    video = next((m["id"] for m in models if "videos" in m["kinds"]), None)
    if chat:
        lines.append(f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
                     f"    -d '{{\"model\": \"{chat}\", \"messages\": [{{\"role\": \"user\", \"content\": "
                     f"\"i have a pink dog. what color is my dog?\"}}]}}'\n")
    if image:
        lines.append(f"  curl {url}/v1/images/generations -H 'Content-Type: application/json' \\\n"
                     f"    -d '{{\"model\": \"{image}\", \"prompt\": \"a red circle on blue\", \"response_format\": \"url\"}}'\n")
    if video:
        lines.append(f"  curl {url}/v1/videos -F model={video} -F prompt='a red ball' -F num_frames=9\n")
    return "\n".join(lines)


async def _wait_models(url: str, expected: int, stop: asyncio.Event) -> list[dict]:
    import aiohttp

    deadline = time.monotonic() + UP_WAIT_S
    async with aiohttp.ClientSession() as session:
        while not stop.is_set() and time.monotonic() < deadline:
            async with session.get(f"{url}/v1/models") as response:
                data = (await response.json())["data"]
            if sum(m["workers"] for m in data) >= expected:
                return data
            await asyncio.sleep(0.2)
    return []


def _worker_env(media_dir: str, files_url: str, num_workers: int) -> dict[str, str]:
    """Image workers write url responses where the frontend serves them; workers split this machine's cores."""
    env = {**os.environ, "DIFFMESH_MEDIA_DIR": media_dir}
    env.setdefault("DIFFMESH_PUBLIC_BASE_URL", files_url)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(num_workers, 1))))
    return env


def _stop_children(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
