"""dLLM engine: admits requests, runs one batched forward per step for all active sequences, streams commits.

Torch only, no bus. One thread drives `step()` (the engine thread, or the caller in tests and benchmarks);
`submit()` is thread-safe and `on_output` is called from the stepping thread after every forward pass.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from protocol.errors import InvalidRequest
from protocol.kv import MmObject
from protocol.work import DiffusionOptions, SamplingOptions
from workers.dllm.batch import Row, build_batch, plan_batches, row_logits, row_new_kv
from workers.dllm.cache import EventSink, PrefixCache
from workers.dllm.config import DllmConfig, ModelLimits, resolve_params
from workers.dllm.model import Denoiser, SpecialIds, load_model
from workers.dllm.multimodal import ImageSpec, place_embeddings
from workers.dllm.prefix import attach_prefix, store_final_blocks
from workers.dllm.sampling import classifier_free_guidance
from workers.dllm.sequence import Sequence, StepOutput, StepTrace

OutputCallback = Callable[[StepOutput], None]
Observer = Callable[[StepTrace], None]
Images = list[tuple[MmObject, torch.Tensor]] | tuple  # (image, its embedding) per image of a prompt


@dataclass
class _Slot:
    seq: Sequence
    on_output: OutputCallback
    is_cancelled: Callable[[], bool]
    observer: Observer | None


class DllmEngine:
    """Masked-diffusion generation with block KV cache, cross-request prefix cache, batching and streaming."""

    def __init__(self, denoiser: Denoiser, tokenizer, special: SpecialIds, config: DllmConfig, block_size: int,
                 images: ImageSpec | None = None):
        self.denoiser = denoiser
        self.images = images  # None: text only
        self.tokenizer = tokenizer
        self.special = special
        self.config = config
        self.block_size = block_size  # tokens per block: attention grid and prefix-cache block
        self.limits = ModelLimits(
            attention=denoiser.attention,
            block_size=block_size,
            context_length=denoiser.context_length,
            default_steps=config.default_steps,
            default_threshold=config.default_threshold,
            default_use_cache=config.default_use_cache,
            can_cache=denoiser.supports_cache,
        )
        self.cache = PrefixCache(config.max_cache_blocks if denoiser.supports_cache else 0)
        self.vocab_size = int(denoiser.model.config.vocab_size)
        self.num_prompt_tokens_computed = 0  # prompt positions run through the model, all requests
        self._waiting: deque[_Slot] = deque()
        self._active: list[_Slot] = []
        self._cond = threading.Condition()
        self._step_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._seeds = itertools.count(config.seed)

    @classmethod
    def from_pretrained(cls, config: DllmConfig) -> DllmEngine:
        """Load tokenizer and denoiser from a local directory or hub id."""
        denoiser, tokenizer, special, block_size, images = load_model(config)
        return cls(denoiser, tokenizer, special, config, block_size, images)

    @property
    def model_name(self) -> str:
        return self.config.served_model_name or Path(self.config.model.rstrip("/")).name

    @property
    def attention(self) -> str:
        return self.denoiser.attention

    def set_kv_sink(self, sink: EventSink | None) -> None:
        self.cache.set_sink(sink)

    # --- requests ------------------------------------------------------------------------------------

    def submit(
        self,
        request_id: str,
        prompt_ids: list[int],
        sampling: SamplingOptions,
        diffusion: DiffusionOptions | None = None,
        *,
        on_output: OutputCallback,
        is_cancelled: Callable[[], bool] | None = None,
        observer: Observer | None = None,
        images: Images = (),
        resume_ids: list[int] | None = None,
    ) -> None:
        """Queue a request; raises InvalidRequest (with its param path) before anything runs.

        `resume_ids`: the end of `prompt_ids` is output another worker streamed already (a migrated request)."""
        seq = self.new_sequence(request_id, prompt_ids, sampling, diffusion, images)
        if resume_ids:
            seq.stream.resume(resume_ids)
        slot = _Slot(seq, on_output, is_cancelled or (lambda: False), observer)
        with self._cond:
            self._waiting.append(slot)
            self._cond.notify_all()

    def new_sequence(
        self, request_id: str, prompt_ids: list[int], sampling: SamplingOptions, diffusion: DiffusionOptions | None,
        images: Images = (),
    ) -> Sequence:
        """`images`: (MmObject, [placeholders, hidden] embedding) per image of the prompt."""
        prompt_ids = [int(t) for t in prompt_ids]
        if any(t < 0 or t >= self.vocab_size for t in prompt_ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {self.vocab_size})", param="$.prompt")
        if any(t < 0 or t >= self.vocab_size for t in sampling.logit_bias):
            raise InvalidRequest(f"logit_bias token ids must be in [0, {self.vocab_size})", param="$.logit_bias")
        mm_objects = [obj for obj, _ in images]
        segments = place_embeddings(self.images, prompt_ids, mm_objects, [emb for _, emb in images],
                                    self.denoiser.device, self.denoiser.dtype) if images else []
        params = resolve_params(sampling, diffusion, len(prompt_ids), self.limits)
        seed = params.seed if params.seed is not None else next(self._seeds)
        generator = torch.Generator(device=self.denoiser.device).manual_seed(seed)
        return Sequence(
            request_id,
            prompt_ids,
            params,
            attention=self.attention,
            special=self.special,
            decode=self._decode,
            generator=generator,
            max_forward_passes=self.config.max_forward_passes,
            mm_objects=mm_objects,
            mm_segments=segments,
        )

    def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        sampling: SamplingOptions,
        diffusion: DiffusionOptions | None = None,
        *,
        is_cancelled: Callable[[], bool] | None = None,
        observer: Observer | None = None,
        images: Images = (),
    ) -> Iterator[StepOutput]:
        """Blocking stream of outputs; steps the engine inline when no engine thread runs."""
        outputs: queue.SimpleQueue[StepOutput] = queue.SimpleQueue()
        closed = threading.Event()
        self.submit(
            request_id, prompt_ids, sampling, diffusion, on_output=outputs.put,
            is_cancelled=_either(closed, is_cancelled), observer=observer, images=images,
        )  # fmt: skip
        try:
            while True:
                if self._thread is None:
                    while outputs.empty():
                        self.step()
                out = outputs.get()
                yield out
                if out.finished:
                    return
        finally:
            closed.set()

    async def generate_async(
        self,
        request_id: str,
        prompt_ids: list[int],
        sampling: SamplingOptions,
        diffusion: DiffusionOptions | None = None,
        *,
        is_cancelled: Callable[[], bool] | None = None,
        images: Images = (),
        resume_ids: list[int] | None = None,
    ) -> AsyncIterator[StepOutput]:
        """Async stream of outputs from the engine thread (started on first use)."""
        self.start()
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[StepOutput] = asyncio.Queue()
        closed = threading.Event()
        self.submit(
            request_id, prompt_ids, sampling, diffusion,
            on_output=lambda out: loop.call_soon_threadsafe(outputs.put_nowait, out),
            is_cancelled=_either(closed, is_cancelled), images=images, resume_ids=resume_ids,
        )  # fmt: skip
        try:
            while True:
                out = await outputs.get()
                yield out
                if out.finished:
                    return
        finally:
            closed.set()
            self._wake()

    # --- engine thread -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run `step()` on a background thread until `stop()`."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="dllm-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the engine thread; requests still queued or running end as cancelled."""
        with self._cond:
            thread, self._stopping = self._thread, True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread = None
            slots, self._waiting, self._active = [*self._waiting, *self._active], deque(), []
        for slot in slots:
            self._finish(slot, "cancelled")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._active or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    return
            self.step()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- one step ------------------------------------------------------------------------------------

    def step(self) -> int:
        """Admit, drop cancelled, run one batched forward pass for every active sequence; return how many ran."""
        with self._step_lock:
            self._drop_cancelled()
            self._admit()
            active = list(self._active)
            if not active:
                return 0
            logits = self._forward_all(active)
            for slot in active:
                if slot.seq.finish_reason is None and id(slot) in logits:
                    self._advance(slot, logits[id(slot)])
            self._active = [s for s in self._active if s.seq.finish_reason is None]
            return len(active)

    def _drop_cancelled(self) -> None:
        with self._cond:
            slots = [*self._waiting, *self._active]
        for slot in slots:
            if _cancelled(slot):
                self._finish(slot, "cancelled")
        with self._cond:
            self._waiting = deque(s for s in self._waiting if s.seq.finish_reason is None)
        self._active = [s for s in self._active if s.seq.finish_reason is None]

    def _admit(self) -> None:
        with self._cond:
            while self._waiting and len(self._active) < self.config.max_batch:
                slot = self._waiting.popleft()
                attach_prefix(self.cache, slot.seq, self.block_size)
                self._active.append(slot)

    def _forward_all(self, active: list[_Slot]) -> dict[int, list[torch.Tensor]]:
        """Batched forwards; returns each request's block logits (two rows with CFG: cond, uncond)."""
        rows, owners = self._build_rows(active)
        results: dict[int, list[torch.Tensor]] = {}  # id(slot) -> block logits
        for group in plan_batches(rows, 2 * self.config.max_batch, self.config.max_padding_ratio):
            group_rows = [rows[i] for i in group]
            try:
                batch = build_batch(group_rows, self.special.pad_id or 0, self.denoiser.device)
                out, kv = self.denoiser.forward(batch.input_ids, batch.position_ids, batch.attention_mask, batch.past,
                                                batch.num_logits, batch.keep_kv, batch.embeds)
            except Exception as exc:  # fail these requests, keep the engine alive
                for i in group:
                    self._finish(owners[i], "error", error=exc)
                continue
            for j, i in enumerate(group):
                seq = owners[i].seq
                results.setdefault(id(owners[i]), []).append(row_logits(out, group_rows, j))
                if group_rows[j].keep_kv:
                    past_len = 0 if batch.past is None else batch.past[0][0].shape[2]
                    old_len = seq.kv_len
                    seq.absorb_kv(row_new_kv(kv, group_rows, j, past_len, batch.input_ids.shape[1]), group_rows[j].keep_kv)
                    store_final_blocks(self.cache, seq, old_len, self.block_size)
        return results

    def _build_rows(self, active: list[_Slot]) -> tuple[list[Row], list[_Slot]]:
        rows: list[Row] = []
        owners: list[_Slot] = []
        for slot in active:
            seq_rows = slot.seq.rows()
            self.num_prompt_tokens_computed += slot.seq.last_prompt_tokens_computed
            rows.extend(seq_rows)
            owners.extend([slot] * len(seq_rows))
        return rows, owners

    def _advance(self, slot: _Slot, logits: list[torch.Tensor]) -> None:
        seq = slot.seq
        start, end = seq.block
        block_logits = logits[0][: end - start]
        if seq.params.cfg_scale > 0:
            block_logits = classifier_free_guidance(block_logits, logits[1][: end - start], seq.params.cfg_scale)
        seq.forward_passes += 1
        trace = seq.apply_logits(block_logits)
        if slot.observer is not None:
            slot.observer(trace)
        slot.on_output(seq.collect())

    def _finish(self, slot: _Slot, reason: str, error: BaseException | None = None) -> None:
        if slot.seq.finish_reason is not None:
            return
        slot.seq.finish_reason = reason
        out = slot.seq.output()
        out.error = error
        slot.on_output(out)

    # --- prefix cache --------------------------------------------------------------------------------

    def clear_cache(self) -> None:
        self.cache.clear()

    def kv_dump(self):
        return self.cache.dump()

    # --- reporting -----------------------------------------------------------------------------------

    def load_report(self) -> dict:
        """LoadReport fields: prompt tokens still to prefill, KV blocks held by running requests, cache use."""
        with self._cond:
            slots = [*self._waiting, *self._active]
        prefill = sum(max(0, s.seq.prompt_len - max(s.seq.kv_len, s.seq.cached_tokens)) for s in slots if s.seq.forward_passes == 0)
        decode_blocks = sum(-(-len(s.seq.tokens) // self.block_size) for s in slots if s.seq.forward_passes > 0)
        return {
            "active_prefill_tokens": prefill,
            "active_decode_blocks": decode_blocks,
            "kv_used_blocks": self.cache.num_blocks,
            "kv_total_blocks": self.cache.max_blocks,
        }

    @property
    def num_active(self) -> int:
        return len(self._active)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _either(flag: threading.Event, is_cancelled: Callable[[], bool] | None) -> Callable[[], bool]:
    if is_cancelled is None:
        return flag.is_set
    return lambda: flag.is_set() or is_cancelled()


def _cancelled(slot: _Slot) -> bool:
    try:
        return bool(slot.is_cancelled())
    except Exception:  # a broken callback must not stop the engine; treat the request as gone
        return True
