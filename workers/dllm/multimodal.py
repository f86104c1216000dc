"""Images in dLLM prompts: the placeholder spec of a checkpoint, and embeddings checked and placed at its placeholders.

Generic over checkpoints: any model with an image placeholder token id (config.json `image_token_id` or
`image_token_index`, as LLaVA-style configs name it, or --image-token-id) takes the embeddings of an encode worker
whose projector outputs the model's hidden size; they replace the placeholders' token embeddings (`inputs_embeds`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from protocol.errors import EngineError, InvalidRequest
from protocol.kv import MmObject
from workers.dllm.config import DllmConfig

log = logging.getLogger("diffmesh.dllm")
PARAM = "$.messages"


@dataclass(frozen=True)
class ImageSpec:
    """How a multimodal checkpoint takes images."""

    token_id: int  # placeholder id, repeated num_tokens times per image in the prompt
    token: str  # its text, which a chat prompt carries once per image before the frontend expands it
    num_tokens: int  # placeholders (= embedding rows) per image
    hidden_size: int  # the model's input embedding size: what the encoder's projector must output
    encoder: str  # served name of the encode model


@dataclass(frozen=True)
class MmSegment:
    """Embeddings for the canvas positions [start, start + len(embeds))."""

    start: int
    embeds: torch.Tensor  # [n, hidden], on the model's device and dtype

    @property
    def end(self) -> int:
        return self.start + self.embeds.shape[0]


def image_spec(model_config, tokenizer, config: DllmConfig, hidden_size: int) -> ImageSpec | None:
    """The checkpoint's image placeholders, or None for a text-only model (no placeholder id or no encoder named)."""
    token_id = config.image_token_id
    for name in ("image_token_id", "image_token_index"):
        if token_id is None:
            token_id = getattr(model_config, name, None)
    if token_id is None:
        return None
    if config.vision_encoder is None:
        log.info("%s has image token %d but no --vision-encoder: serving text only", config.model, token_id)
        return None
    num_tokens = config.num_image_tokens
    for name in ("image_seq_length", "mm_tokens_per_image"):
        num_tokens = num_tokens or getattr(model_config, name, None)
    if not num_tokens:
        raise ValueError(f"{config.model}: no image tokens per image in config.json (image_seq_length); set --image-tokens")
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(token, str) or tokenizer.convert_tokens_to_ids(token) != token_id:
        raise ValueError(f"{config.model}: image token id {token_id} is not a token of its tokenizer")
    return ImageSpec(int(token_id), token, int(num_tokens), hidden_size, config.vision_encoder)


def place_embeddings(spec: ImageSpec | None, prompt: Sequence[int], mm_objects: Sequence[MmObject],
                     embeddings: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype) -> list[MmSegment]:
    """One segment per placeholder range; InvalidRequest if placeholders and images disagree, EngineError on a shape
    that does not fit the model (an encoder whose projector targets another model)."""
    if not mm_objects:
        return []
    if spec is None:
        raise InvalidRequest("this model takes text only", param=PARAM)
    if len(embeddings) != len(mm_objects):
        raise InvalidRequest(f"{len(mm_objects)} images but {len(embeddings)} embeddings", param=PARAM)
    segments: list[MmSegment] = []
    for index, (obj, embedding) in enumerate(zip(mm_objects, embeddings)):
        rows = sum(end - start for start, end in obj.offsets)
        if embedding.ndim != 2 or tuple(embedding.shape) != (rows, spec.hidden_size):
            raise EngineError(f"image {index}: embedding of shape {list(embedding.shape)} does not fit {rows} placeholders "
                              f"of hidden size {spec.hidden_size} (is {spec.encoder} the encoder of this model?)")
        row = 0
        for start, end in obj.offsets:
            _check_placeholders(spec, prompt, index, start, end)
            segments.append(MmSegment(start, embedding[row : row + end - start].to(device, dtype)))
            row += end - start
    segments.sort(key=lambda s: s.start)
    if any(a.end > b.start for a, b in zip(segments, segments[1:])):
        raise InvalidRequest("images' placeholder ranges overlap", param=PARAM)
    return segments


def _check_placeholders(spec: ImageSpec, prompt: Sequence[int], index: int, start: int, end: int) -> None:
    if not 0 <= start < end <= len(prompt):
        raise InvalidRequest(f"image {index}: placeholders [{start}, {end}) lie outside the prompt", param=PARAM)
    if any(int(t) != spec.token_id for t in prompt[start:end]):
        raise InvalidRequest(f"image {index}: prompt positions [{start}, {end}) are not all image placeholders",
                             param=PARAM)


def row_embeds(segments: Sequence[MmSegment], start: int, end: int) -> list[tuple[int, torch.Tensor]]:
    """The parts of `segments` inside the canvas span [start, end), as (offset in the span, embeddings)."""
    out = []
    for segment in segments:
        lo, hi = max(segment.start, start), min(segment.end, end)
        if lo < hi:
            out.append((lo - start, segment.embeds[lo - segment.start : hi - segment.start]))
    return out
