"""Vision encode worker: CLIP/SigLIP vision tower + projector (engine.py has torch), embedding cache, bus adapter.

Public entry: `await workers.encode.serve(RuntimeConfig(...), args)` with `args` from `add_arguments`'s flags.
"""

from __future__ import annotations

from workers.encode.worker import add_arguments, build_engine

REQUIRES = ("torch", "transformers")  # packages this kind needs beyond the base install
__all__ = ["REQUIRES", "add_arguments", "build_engine", "serve"]


async def serve(config, args, *, ready=None, stop=None) -> None:
    """Build the engine the flags name and serve it on the bus until SIGTERM/SIGINT (or `stop`), then drain."""
    from workers.runtime import serve as serve_engine

    await serve_engine(build_engine(args), config, ready=ready, stop=stop)
