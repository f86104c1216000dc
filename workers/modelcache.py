"""Tiny default models are built once into the model cache: in a staging directory, then renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

BUILT_MARKER = ".diffmesh-built"  # written last: a directory without it is incomplete


def ensure_built(cache_dir: str | os.PathLike, name: str, build: Callable[[Path], None]) -> Path:
    """`cache_dir/name`, running `build(staging_dir)` first if it is not there yet (idempotent, atomic, race-safe)."""
    target = Path(cache_dir) / name
    if (target / BUILT_MARKER).exists():
        return target
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        build(staging)
        (staging / BUILT_MARKER).write_text(name + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / BUILT_MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
