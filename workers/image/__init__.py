"""Diffusers worker: pipelines behind /v1/images/generations, /v1/images/edits and /v1/videos (torch in engine.py, video.py).

Public entry: `await workers.image.serve(RuntimeConfig(...), args)` with `args` from `add_arguments`'s flags.
"""

from __future__ import annotations

from workers.image.worker import add_arguments, build_engine

REQUIRES = ("torch", "transformers", "diffusers")  # packages this kind needs beyond the base install
__all__ = ["REQUIRES", "add_arguments", "build_engine", "serve"]


async def serve(config, args, *, ready=None, stop=None) -> None:
    """Build the engine the flags name and serve it on the bus until SIGTERM/SIGINT (or `stop`), then drain."""
    from workers.runtime import serve as serve_engine

    await serve_engine(build_engine(args), config, ready=ready, stop=stop)
