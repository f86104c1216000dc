"""A small HTTP health endpoint for processes without an HTTP server of their own (workers: `--health-port`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from shell.process import cannot_listen

log = logging.getLogger("shell.health")


async def start_health_server(host: str, port: int, check: Callable[[], dict]) -> web.AppRunner:
    """Serve `GET /health` (200 when `check()["healthy"]`, else 503, with `check()` as the JSON body) and
    `GET /live` (200 while the process runs). Returns the runner; `await runner.cleanup()` stops it."""

    async def health(request: web.Request) -> web.Response:
        body = check()
        return web.json_response(body, status=200 if body.get("healthy") else 503)

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/live", live)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise cannot_listen("--health-port", host, port, exc) from exc
    log.info("health endpoint on http://%s:%d/health", host, port)
    return runner
