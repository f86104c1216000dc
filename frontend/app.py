"""The aiohttp application: routes, health, models, metrics, auth, and startup of the bus-side objects."""

from __future__ import annotations

import asyncio
import logging
import os

import nats
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from frontend import images, models, text, videos
from frontend.auth import auth_middleware
from frontend.limits import Admission, admission_middleware
from frontend.bus import Requester
from frontend.errors import error_response
from frontend.openapi import build_openapi
from frontend.registry import ModelRegistry
from frontend.state import STATE, AppState, new_request_id
from protocol.errors import MeshError, NotFound
from router.service import build_router_service
from shell.blobs import BlobStore
from shell.bus import close_bus, connect
from shell.config import FrontendConfig
from shell.images import ImageLoader
from shell.logs import request_id_from_headers, request_id_var
from shell.metrics import FLUSH_INTERVAL_S, FrontendMetrics
from shell.process import cannot_listen

log = logging.getLogger("diffmesh.frontend")
NC: web.AppKey[nats.NATS] = web.AppKey("diffmesh_nc", nats.NATS)
ADMISSION: web.AppKey[Admission] = web.AppKey("diffmesh_admission", Admission)


@web.middleware
async def errors_middleware(request: web.Request, handler):
    """Every failure becomes an OpenAI error envelope; nothing escapes as a bare 500 page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            return error_response(NotFound(f"no route {request.method} {request.path}"))
        if exc.status == 405:
            return web.json_response({"error": {"message": f"method {request.method} not allowed on {request.path}",
                                                 "type": "invalid_request_error", "param": None, "code": "method_not_allowed"}},
                                     status=405)
        raise
    except MeshError as exc:
        return error_response(exc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("unhandled error on %s", request.path)
        return error_response(MeshError(f"internal error: {type(exc).__name__}"))


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    """Adopt `x-request-id` / `traceparent` (or make an id), log with it, echo it back."""
    request_id = _safe_id(request_id_from_headers(request.headers)) or new_request_id("req")
    request_id_var.set(request_id)
    response = await handler(request)
    if not response.prepared:
        response.headers["x-request-id"] = request_id
        if STATE in request.app:  # which of the frontend processes sharing the port answered
            response.headers["x-diffmesh-frontend"] = request.app[STATE].requester.requester_id
    return response


def _safe_id(value: str | None) -> str | None:
    """Ids become NATS subject tokens: keep them short and plain."""
    if value and len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value):
        return value
    return None


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


async def health(request: web.Request) -> web.Response:
    state, nc, admission = request.app[STATE], request.app[NC], request.app[ADMISSION]
    models = state.registry.live_models()
    body = {"status": "healthy" if nc.is_connected else "unhealthy", "nats": nc.is_connected,
            "models": {name: [w.worker_id for w in ws] for name, ws in models.items()},
            "in_flight": state.requester.num_in_flight, "admitted": admission.num_inflight,
            "admitted_peak": admission.peak, "max_inflight": admission.max_inflight, "turned_away": admission.num_rejected,
            "frontend": state.requester.requester_id, "pid": os.getpid()}
    return web.json_response(body, status=200 if nc.is_connected else 503)


async def ready(request: web.Request) -> web.Response:
    state, nc = request.app[STATE], request.app[NC]
    is_ready = nc.is_connected and bool(state.registry.live_models())
    return web.json_response({"ready": is_ready}, status=200 if is_ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _flush_metrics(metrics: FrontendMetrics) -> None:
    """Coalesced metric updates reach prometheus_client (and the other frontend processes' scrapes) every second."""
    while True:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        metrics.flush()


def _count_rejected(request: web.Request, response: web.Response) -> None:
    endpoint = request.path.removeprefix("/v1/").replace("/", "_")
    request.app[STATE].metrics.model("unknown").request_done(endpoint, "unary", str(response.status))


async def openapi(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(build_openapi(limits=state.config.limits, models=list(state.registry.live_models())))


def build_app(config: FrontendConfig, exported: FrontendMetrics | None = None) -> web.Application:
    """The app; `exported` lets a launcher put its own metrics (e.g. process restarts) on this /metrics."""
    admission = Admission(config.max_inflight)
    app = web.Application(middlewares=[request_id_middleware, errors_middleware, auth_middleware(config),
                                       admission_middleware(admission, _count_rejected)],
                          client_max_size=config.max_body_bytes)
    app[ADMISSION] = admission
    app.router.add_post("/v1/chat/completions", text.chat_completions)
    app.router.add_post("/v1/completions", text.completions)
    app.router.add_post("/v1/images/generations", images.generations)
    app.router.add_post("/v1/images/edits", images.edits)
    app.router.add_post("/v1/videos", videos.create)
    app.router.add_get("/v1/videos", videos.list_videos)
    app.router.add_get("/v1/videos/{video_id}", videos.retrieve)
    app.router.add_delete("/v1/videos/{video_id}", videos.delete)
    app.router.add_get("/v1/videos/{video_id}/content", videos.content)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model:.+}", models.retrieve_model)
    app.router.add_get("/health", health)
    app.router.add_get("/live", live)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    if config.media_dir:
        app.router.add_static("/v1/files/", config.media_dir, follow_symlinks=False)
    app.cleanup_ctx.append(_bus_context(config, exported))
    return app


def _bus_context(config: FrontendConfig, exported: FrontendMetrics | None):
    async def context(app: web.Application):
        nc = await connect(config.nats, name="diffmesh-frontend")
        router_service = build_router_service(nc, config.namespace, config.router_mode, config.router_url)
        requester = Requester(nc, config.namespace, stall_s=config.stall_timeout_s)
        registry = ModelRegistry(nc, config.namespace, router_service.router.live_workers)
        router_service.on_worker_lost(requester.fail_worker)
        await requester.start()
        await router_service.start()
        media = ImageLoader(config.media)
        jobs = videos.VideoJobs(nc, config.namespace, config.media_dir)
        metrics = exported or FrontendMetrics()
        metrics.router.attach(router_service.router)
        flusher = asyncio.create_task(_flush_metrics(metrics))
        app[NC] = nc
        app[STATE] = AppState(config, requester, router_service, registry, metrics, media,
                              BlobStore(nc, config.namespace, config.max_inline_bytes), jobs)
        yield
        flusher.cancel()
        await router_service.stop()
        await requester.stop()
        await media.close()
        await close_bus(nc)

    return context


async def run_frontend(config: FrontendConfig, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                       metrics: FrontendMetrics | None = None) -> None:
    """Serve until `stop` is set (or forever). A port that cannot be bound is a StartupError (one line)."""
    runner = web.AppRunner(build_app(config, metrics), handler_cancellation=True, access_log=None)
    await runner.setup()  # connects and subscribes (the bus context)
    if config.join_warmup_s:
        await asyncio.sleep(config.join_warmup_s)  # hear every worker before the kernel sends us connections
    site = web.TCPSite(runner, config.host, config.port, reuse_port=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise cannot_listen("--port", config.host, config.port, exc) from exc
    log.info("frontend listening on http://%s:%d", config.host, config.port)
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop else asyncio.Event().wait())
    finally:
        await runner.cleanup()
