"""The mocker: a simulated engine with a real block cache and Dynamo's timing model; no ML imports.

Public entry: `await workers.mocker.serve(RuntimeConfig(...), args)` with `args` from `add_arguments`'s flags.
"""

from __future__ import annotations

from workers.mocker.worker import add_arguments, build_engine

REQUIRES = ()  # packages this kind needs beyond the base install
__all__ = ["REQUIRES", "add_arguments", "build_engine", "serve"]


async def serve(config, args, *, ready=None, stop=None) -> None:
    """Build the engine the flags name and serve it on the bus until SIGTERM/SIGINT (or `stop`), then drain."""
    from workers.runtime import serve as serve_engine

    await serve_engine(build_engine(args), config, ready=ready, stop=stop)
