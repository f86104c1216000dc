"""GET /v1/models and /v1/models/{model}: live models with their modalities, context length, defaults and a probe.

Encode workers serve language models, not clients: their models are not listed (GET /health shows them).
"""

from __future__ import annotations

from aiohttp import web

from frontend.state import STATE
from protocol.errors import MeshError, ModelNotFound
from protocol.events import ModelCard, WorkerCard
from protocol.openai import DiffusionDefaults, ModelInfo, ModelList, json_encoder

COMPONENT_KINDS = {"image": ["images"], "encode": ["embeddings"]}  # for a model whose card is not readable yet


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = [await _info(state, name, workers) for name, workers in sorted(_client_models(state).items())]
    return web.Response(body=json_encoder.encode(ModelList(data=data)), content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["model"]
    workers = _client_models(state).get(name)
    if not workers:
        raise ModelNotFound(f"model {name!r} is not served here", param="model")
    return web.Response(body=json_encoder.encode(await _info(state, name, workers)), content_type="application/json")


def _client_models(state) -> dict[str, list[WorkerCard]]:
    return {name: workers for name, workers in state.registry.live_models().items() if workers[0].component != "encode"}


async def _info(state, name: str, workers: list[WorkerCard]) -> ModelInfo:
    created = int(min(w.started_at for w in workers))
    try:
        card = (await state.registry.get(name)).card
    except MeshError:  # live but its card is not in the registry yet: what the heartbeats tell
        kinds = workers[0].kinds or COMPONENT_KINDS.get(workers[0].component, ["chat", "completions"])
        return ModelInfo(id=name, created=created, kinds=kinds, workers=len(workers), component=workers[0].component)
    return model_info(card, created, len(workers))


def model_info(card: ModelCard, created: int, num_workers: int) -> ModelInfo:
    return ModelInfo(id=card.name, created=created, kinds=list(card.kinds), workers=num_workers, component=card.component,
                     input_modalities=list(card.input_modalities), output_modalities=list(card.output_modalities),
                     context_length=card.context_length or None, features=list(card.features),
                     diffusion=_diffusion_defaults(card), defaults=dict(card.defaults), health_check=card.health_check)


def _diffusion_defaults(card: ModelCard) -> DiffusionDefaults | None:
    """Diffusion LMs (cards with a default block length) show their decoding defaults."""
    d = card.defaults
    if "block_length" not in d or "chat" not in card.kinds and "completions" not in card.kinds:
        return None
    return DiffusionDefaults(steps=_int(d.get("steps")), block_length=_int(d.get("block_length")),
                             threshold=float(d["threshold"]) if "threshold" in d else None,
                             remasking=str(d.get("remasking", "low_confidence")))


def _int(value) -> int | None:
    return None if value is None else int(value)
