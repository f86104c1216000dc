"""OpenAI-compatible HTTP frontend: aiohttp app, preprocessing, bus client, model registry, media store.

Public entry: `await frontend.serve(FrontendConfig(...), ready=..., stop=...)`.
"""

from __future__ import annotations


async def serve(config, ready=None, stop=None, metrics=None) -> None:
    """Serve HTTP until `stop` is set (or forever); `ready` is set once the port listens. `metrics`: a
    shell.metrics.FrontendMetrics to export (its registry may carry the launcher's metrics too)."""
    from frontend.app import run_frontend

    await run_frontend(config, ready=ready, stop=stop, metrics=metrics)
