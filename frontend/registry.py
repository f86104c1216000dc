"""Models the frontend can serve: live workers (from the router) joined with cards from the JetStream registry."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import nats

from frontend.preprocess import Preprocessor, build_template_env
from protocol.errors import ModelNotFound, WorkerUnavailable
from protocol.events import ModelCard, WorkerCard
from shell.registry import fetch_card, fetch_file


@dataclass(frozen=True)
class ModelEntry:
    card: ModelCard
    preprocessor: Preprocessor
    workers: tuple[WorkerCard, ...]


class ModelRegistry:
    """Caches one Preprocessor per model card; a model is served while at least one worker for it is live."""

    def __init__(self, nc: nats.NATS, namespace: str, live_workers):
        self.nc = nc
        self.ns = namespace
        self._live_workers = live_workers  # callable(model | None) -> list[WorkerCard]
        self._entries: dict[str, tuple[ModelCard, Preprocessor]] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._env = build_template_env()

    def live_models(self) -> dict[str, list[WorkerCard]]:
        models: dict[str, list[WorkerCard]] = {}
        for card in self._live_workers(None):
            models.setdefault(card.model, []).append(card)
        return models

    async def get(self, model: str) -> ModelEntry:
        """The model's card and preprocessor; ModelNotFound unless a live worker serves it."""
        workers = tuple(self._live_workers(model))
        if not workers:
            live = ", ".join(sorted(self.live_models())) or "none"
            raise ModelNotFound(f"model {model!r} is not served here (live models: {live})", param="$.model")
        cached = self._entries.get(model)
        if cached is None:
            cached = await self._load_once(model)
        return ModelEntry(cached[0], cached[1], workers)

    async def _load_once(self, model: str) -> tuple[ModelCard, Preprocessor]:
        pending = self._loading.get(model)
        if pending is None:
            pending = self._loading[model] = asyncio.ensure_future(self._load(model))
            pending.add_done_callback(lambda _: self._loading.pop(model, None))
        return await asyncio.shield(pending)

    async def _load(self, model: str) -> tuple[ModelCard, Preprocessor]:
        try:
            card = await fetch_card(self.nc, self.ns, model)
            if card is None:
                raise ModelNotFound(f"model {model!r} has live workers but no card in the registry yet", param="$.model")
            tokenizer = await fetch_file(self.nc, self.ns, card.tokenizer_object) if card.tokenizer_object else None
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise WorkerUnavailable(f"the model registry did not answer ({type(exc).__name__}); retry",
                                    retry_after=1.0) from None
        entry = (card, Preprocessor(card, tokenizer, self._env))
        self._entries[model] = entry
        return entry

    def forget(self, model: str) -> None:
        """Drop a cached card (e.g. its workers re-registered with a new tokenizer)."""
        self._entries.pop(model, None)
