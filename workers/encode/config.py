"""Encode engine configuration: one frozen dataclass per process (pure, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from shell.config import ConfigError

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EncodeConfig:
    """What the encode worker needs to load a vision tower + projector and serve it."""

    model: str  # directory (or hub id) of a CLIP / SigLIP vision tower, with an optional diffmesh projector
    served_name: str | None = None  # None = the directory's name
    device: str = "cpu"
    dtype: str = "float32"  # compute dtype; embeddings travel in it
    max_batch: int = 8  # images per vision forward, across requests
    batch_wait_s: float = 0.0  # how long an idle worker waits for companions before a forward
    max_queue: int = 64  # requests waiting beyond capacity before the worker refuses
    cache_bytes: int = 256 * 1024 * 1024  # embedding cache budget (0 = no cache)
    feature_layer: int | None = None  # hidden-state layer fed to the projector; None = the projector config's (-1)
    num_threads: int | None = None  # torch intra-op threads

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"invalid encode setting dtype={self.dtype!r}: use one of {', '.join(DTYPES)}")
        for name, low in (("max_batch", 1), ("max_queue", 0), ("cache_bytes", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"invalid encode setting {name}={getattr(self, name)}: must be >= {low}")
        if self.batch_wait_s < 0:
            raise ConfigError(f"invalid encode setting batch_wait_s={self.batch_wait_s}: must be >= 0")
