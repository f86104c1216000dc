"""KV-aware router: pure index/policy/tracker cores and the one NATS shell (service.py).

Public entry: `await router.serve(ServiceConfig(...), stop)` runs the standalone router (`diffmesh router`).
"""

from __future__ import annotations


async def serve(config, stop, ready=None) -> None:
    """Serve routing decisions on `{ns}.router.route` until `stop` is set (see `router.service.serve`)."""
    from router.service import serve as serve_service

    await serve_service(config, stop, ready)
