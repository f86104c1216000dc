"""Bus adapter of the mocker: registers as a real worker, streams simulated tokens, publishes KV events."""

from __future__ import annotations

import argparse
import asyncio
import math
import time

from protocol.errors import InvalidRequest
from protocol.events import HealthCheck, ModelCard
from protocol.kv import sequence_block_hashes, tokens_from_bytes, tokens_to_bytes
from protocol.work import Chunk, Final, GenerateRequest, Usage
from workers.mocker.engine import MockerConfig, MockerScheduler, MockSequence, simulated_seconds, token_seed
from workers.mocker.tokenizer import BOS, CHAT_TEMPLATE, EOS, build_tokenizer, word_token_ids
from workers.runtime import KvEventSink, RequestContext
from workers.logprobs import LogprobBuffer
from workers.textstream import TextStream

_END = object()
_CANCEL = object()
ZERO_TIME_TICK_S = 0.001  # with no simulated time, the engine loop yields to the event loop this often


class MockerEngine:
    """WorkerEngine for the mocker; simulated time runs in one asyncio task."""

    component = "mocker"

    def __init__(self, model: str = "mocker", config: MockerConfig = MockerConfig(), default_max_tokens: int = 64,
                 max_queue: int | None = None):
        self.model = model
        self.max_queue = 4 * config.max_num_seqs if max_queue is None else max_queue  # requests waiting beyond capacity
        self.config = config
        self.default_max_tokens = default_max_tokens
        self.tokenizer = build_tokenizer()
        self.scheduler: MockerScheduler | None = None
        self._queues: dict[str, asyncio.Queue] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def worker_card(self) -> dict:
        c = self.config
        return {"model": self.model, "capacity": c.max_num_seqs, "max_queue": self.max_queue, "block_size": c.block_size,
                "kv_total_blocks": c.num_blocks, "publishes_kv_events": True}

    def model_card(self) -> ModelCard:
        return ModelCard(name=self.model, component=self.component, kinds=["chat", "completions"], block_size=self.config.block_size,
                         context_length=self.config.context_length, chat_template=CHAT_TEMPLATE, bos_token=BOS, eos_token=EOS,
                         defaults={"max_tokens": self.default_max_tokens}, features=["logprobs"], created=int(time.time()),
                         health_check=HealthCheck.chat(self.model))

    def model_files(self) -> dict[str, bytes]:
        return {"tokenizer.json": self.tokenizer.to_str().encode()}

    def load_report(self) -> dict:
        s = self.scheduler
        if s is None:
            return {}
        return {"active_prefill_tokens": s.active_prefill_tokens(), "active_decode_blocks": s.cache.num_referenced,
                "kv_used_blocks": s.cache.num_cached, "kv_total_blocks": s.config.num_blocks}

    async def start(self, kv_sink: KvEventSink) -> None:
        self.scheduler = MockerScheduler(self.config, word_token_ids(), on_event=kv_sink.publish)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def kv_dump(self) -> list:
        return self.scheduler.cache.dump()

    def clear_cache(self) -> None:
        self.scheduler.cache.clear()

    async def _run(self) -> None:
        """Step the scheduler; sleep the simulated time. With no simulated time, yield to the loop every ~1 ms."""
        zero_time = math.isinf(self.config.speedup_ratio)
        while True:
            await self._wake.wait()
            budget_end = time.perf_counter() + ZERO_TIME_TICK_S
            while True:
                result = self.scheduler.step()
                if result is None:
                    self._wake.clear()
                    break
                if not zero_time:
                    await asyncio.sleep(simulated_seconds(result.duration_ms, self.config.speedup_ratio))
                self._deliver(result)
                if not zero_time or time.perf_counter() > budget_end:
                    break
            await asyncio.sleep(0)

    def _deliver(self, result) -> None:
        for request_id, token in result.tokens:
            self._put(request_id, token)
        for request_id in result.finished:
            self._put(request_id, _END)

    def _put(self, request_id: str, item) -> None:
        queue = self._queues.get(request_id)
        if queue is not None:
            queue.put_nowait(item)

    def _sequence(self, request: GenerateRequest) -> MockSequence:
        if not isinstance(request, GenerateRequest):
            raise InvalidRequest("the mocker serves text generation only", param="$.model")
        if len(request.token_ids) % 4:
            raise InvalidRequest("token_ids must be int32 little-endian bytes", param="$.token_ids")
        prompt = tokens_from_bytes(request.token_ids)
        max_tokens = request.sampling.max_tokens
        if len(prompt) + max_tokens > self.config.context_length:
            raise InvalidRequest(f"prompt ({len(prompt)}) + max_tokens ({max_tokens}) exceeds the context length "
                                 f"{self.config.context_length}", param="$.max_tokens")
        k = request.num_generated
        if not 0 <= k <= len(prompt):
            raise InvalidRequest(f"num_generated={k} does not fit a prompt of {len(prompt)} tokens", param="$.num_generated")
        # a continuation draws the tokens a clean run draws: seeded by the original prompt, counted from k
        seed = token_seed(request.token_ids[: 4 * (len(prompt) - k)], request.sampling.seed)
        local, chained = sequence_block_hashes(prompt, self.config.block_size, request.mm_objects)
        return MockSequence(request.request_id, len(prompt), chained, local, max_tokens, seed,
                            temperature=request.sampling.temperature, top_p=request.sampling.top_p, first_index=k,
                            prompt_tokens=prompt)

    async def generate(self, request: GenerateRequest, ctx: RequestContext):
        seq = self._sequence(request)
        stream = TextStream(self.tokenizer.decode, request.sampling.stop)
        stream.resume(tokens_from_bytes(request.token_ids[len(request.token_ids) - 4 * request.num_generated:]).tolist())
        logprobs = _Logprobs(self.scheduler.distribution, seq.token_seed, request.sampling.logprobs, seq.first_index)
        if stream.stopped or seq.max_tokens <= 0:  # the last attempt had finished; only its Final was lost
            yield self._final(request, seq, stream, logprobs, "stop" if stream.stopped else "length", [])
            return
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request.request_id] = queue
        ctx.on_cancel(lambda: queue.put_nowait(_CANCEL))
        self.scheduler.add(seq)
        self._wake.set()
        finish_reason = "length"
        held: list[str] = []  # non-streaming requests get everything in the Final
        try:
            while finish_reason == "length":
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                ids = [i for i in items if isinstance(i, int)]
                # streams get one piece per token (one SSE event each); a whole answer is decoded in one go
                pieces = [p for p in (stream.push([i]) for i in ids) if p] if request.stream else [stream.push(ids)]
                logprobs.add(ids)
                if _CANCEL in items:
                    finish_reason = "cancelled"
                elif stream.stopped:
                    finish_reason = "stop"
                if pieces and request.stream:
                    yield Chunk(request_id=request.request_id, seq=0, text="".join(pieces), token_ids=tokens_to_bytes(logprobs.ids),
                                pieces=pieces if len(pieces) > 1 else [], logprobs=logprobs.take())
                    logprobs.ids = []
                elif pieces:
                    held.extend(pieces)
                if _END in items:
                    break
        finally:
            self._queues.pop(request.request_id, None)
            self.scheduler.cancel(request.request_id)
        yield self._final(request, seq, stream, logprobs, finish_reason, held)

    @staticmethod
    def _final(request: GenerateRequest, seq: MockSequence, stream: TextStream, logprobs: _Logprobs, finish_reason: str,
               held: list[str]) -> Final:
        usage = Usage(prompt_tokens=seq.prompt_len, completion_tokens=len(stream.ids) - request.num_generated,
                      cached_tokens=seq.cached_tokens)  # a continuation counts its own tokens only
        return Final(request_id=request.request_id, seq=0, text="".join(held) + stream.flush(), finish_reason=finish_reason,
                     token_ids=tokens_to_bytes(logprobs.ids), logprobs=logprobs.take(), usage=usage)


class _Logprobs:
    """Token ids not yet sent and, when the request asked, their logprobs under the mocker's distribution."""

    def __init__(self, distribution, token_seed: int, num_top: int | None, first_index: int = 0):
        self.distribution, self.token_seed, self.num_top = distribution, token_seed, num_top
        self.ids: list[int] = []
        self.index = first_index  # position of the next generated token (a continuation starts after the delivered)
        self.buffer = LogprobBuffer(num_top or 0)

    def add(self, ids: list[int]) -> None:
        self.ids.extend(ids)
        if self.num_top is not None:
            for token in ids:
                self.buffer.add(*self.distribution.logprobs(self.token_seed, self.index, token, self.num_top))
                self.index += 1

    def take(self):
        return self.buffer.take() if self.num_top is not None else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-name", default="mocker", help="served model name")
    parser.add_argument("--block-size", type=int, default=MockerConfig.block_size)
    parser.add_argument("--num-blocks", type=int, default=MockerConfig.num_blocks)
    parser.add_argument("--max-num-seqs", type=int, default=MockerConfig.max_num_seqs)
    parser.add_argument("--max-batched-tokens", type=int, default=MockerConfig.max_batched_tokens)
    parser.add_argument("--chunked-prefill", action=argparse.BooleanOptionalAction, default=MockerConfig.chunked_prefill,
                        help="split long prompts over steps of --max-batched-tokens, decodes first (vLLM)")
    parser.add_argument("--speedup-ratio", type=float, default=MockerConfig.speedup_ratio,
                        help="divides simulated time; 'inf' = no simulated time")
    parser.add_argument("--context-length", type=int, default=MockerConfig.context_length)
    parser.add_argument("--default-max-tokens", type=int, default=64)
    parser.add_argument("--max-queue", type=int, help="requests accepted beyond --max-num-seqs (default 4x)")


def build_engine(args: argparse.Namespace) -> MockerEngine:
    config = MockerConfig(block_size=args.block_size, num_blocks=args.num_blocks, max_num_seqs=args.max_num_seqs,
                          max_batched_tokens=args.max_batched_tokens, speedup_ratio=args.speedup_ratio,
                          context_length=args.context_length, chunked_prefill=args.chunked_prefill)
    return MockerEngine(args.model_name, config, args.default_max_tokens, args.max_queue)
