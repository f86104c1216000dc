"""Chat images: load them (shell.images), embed each on the encode worker most likely to hold it, attach the result.

Each image is its own encode request, routed in the router's approximate mode on a one-image key: the image's
placeholder count of routing tokens, all inside its mm_hash's range, so the same image goes back to the encode
worker that cached its embedding while that worker is not much busier than the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from frontend.preprocess import ImagePart
from frontend.registry import ModelEntry
from frontend.state import AppState, dispatch, first_error, raise_if_error, release
from protocol.errors import EngineError, WorkerLost
from protocol.kv import MmObject, tokens_to_bytes
from protocol.routing import RouteRequest
from protocol.work import EmbeddingOutput, EncodeRequest, Final, GenerateRequest, TensorData
from shell.images import LoadedImage


async def embed_images(state: AppState, entry: ModelEntry, images: Sequence[ImagePart], offsets: Sequence[tuple[int, int]],
                       request_id: str, prompt_bytes: int) -> tuple[list[MmObject], list[TensorData]]:
    """The images' mm_objects and embeddings (inline, or blobs when a message with `prompt_bytes` would be too big)."""
    loaded = await first_error([load_image(state, part.url, part.param) for part in images])
    card = entry.card
    embeddings = await first_error([encode_image(state, card.vision_encoder, image, card.num_image_tokens,
                                                 f"{request_id}-i{index}") for index, image in enumerate(loaded)])
    embeddings = await fit_payload(state, embeddings, state.blobs.inline_limit - prompt_bytes)
    return [MmObject(mm_hash=image.mm_hash, offsets=[span]) for image, span in zip(loaded, offsets)], embeddings


async def load_image(state: AppState, url: str, param: str) -> LoadedImage:
    hits = state.media.cache.num_hits
    image = await state.media.load(url, param)
    state.metrics.image_loads.labels(image.source, "cached" if state.media.cache.num_hits > hits else "decoded").inc()
    return image


async def encode_image(state: AppState, encoder: str, image: LoadedImage, num_tokens: int, request_id: str) -> TensorData:
    """The image's [num_tokens, hidden] embedding from an encode worker (migrating like any request)."""
    data, name = await state.blobs.pack(image.data)
    work = EncodeRequest(request_id=request_id, model=encoder, mm_hash=image.mm_hash, image=data, image_object=name)
    route = RouteRequest(request_id=request_id, model=encoder, token_ids=tokens_to_bytes(np.zeros(num_tokens)),
                         mm_objects=[MmObject(mm_hash=image.mm_hash, offsets=[(0, num_tokens)])])
    try:
        output = await _collect_embedding(state, route, work, encoder)
    finally:
        if name is not None:
            await state.blobs.delete(name)
    state.metrics.embeddings.labels(encoder, "hit" if output.cached else "miss").inc()
    if output.embedding.shape[:1] != [num_tokens]:
        raise EngineError(f"encoder {encoder} returned {output.embedding.shape[:1]} rows per image; the model expects "
                          f"{num_tokens} (a language model and encoder that do not belong together)")
    return output.embedding


async def _collect_embedding(state: AppState, route: RouteRequest, work: EncodeRequest, encoder: str) -> EmbeddingOutput:
    dispatched = await dispatch(state, route, work, encoder)
    output = None
    try:
        reply = dispatched.first
        while not isinstance(reply, Final):
            if isinstance(reply, EmbeddingOutput):
                output = reply
            reply = raise_if_error(await dispatched.stream.next())
    finally:
        release(state, dispatched)  # tells the worker to stop if it is still at it (the client went away)
    if output is None:
        raise WorkerLost(f"encode worker {dispatched.decision.worker_id} finished without an embedding")
    return output


async def fit_payload(state: AppState, embeddings: list[TensorData], budget: int) -> list[TensorData]:
    """Move the largest inline embeddings into blobs until the inline ones fit in `budget` bytes."""
    total = sum(len(e.data) for e in embeddings)
    fitted = list(embeddings)
    for index in sorted(range(len(fitted)), key=lambda i: -len(fitted[i].data)):
        if total <= budget:
            break
        total -= len(fitted[index].data)
        fitted[index] = msgspec.structs.replace(fitted[index], data=b"", object_name=await state.blobs.put(fitted[index].data))
    return fitted


async def delete_blobs(state: AppState, work: GenerateRequest) -> None:
    """The request is over: drop the embeddings it carried through the Object Store."""
    for embedding in work.mm_embeddings:
        if embedding.object_name is not None:
            await state.blobs.delete(embedding.object_name)
