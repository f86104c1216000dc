"""Bus adapter of the dLLM engine: model card, request mapping, one Chunk per forward pass, CLI flags."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from protocol.errors import EngineError, InvalidRequest
from protocol.events import HealthCheck, ModelCard
from protocol.kv import tokens_from_bytes, tokens_to_bytes
from protocol.work import Chunk, DiffusionOptions, Final, GenerateRequest, Usage, WorkRequest
from workers.contract import KvEventSink, RequestContext
from shell.config import MODEL_CACHE_DIR, ConfigError, from_env
from shell.images import solid_png_data_url
from workers.dllm.config import DllmConfig
from workers.encode.worker import DEFAULT_MODEL_NAME as TINY_ENCODER
from workers.logprobs import LogprobBuffer

DEFAULT_MODEL_NAME = "tiny-dllm"  # served name of the tiny default model `diffmesh up` builds
DEMO_MODEL_NAME = "demo-dllm"  # served name of the trained demo model (--tiny demo)
TINY_IMAGE_TOKENS = 16  # the tiny default takes images: 16 placeholders, the tiny CLIP encoder's patch count
ENV_PREFIX = "DIFFMESH_DLLM_"


class DllmWorker:
    """WorkerEngine for masked-diffusion LMs (component "dllm"); the engine runs on its own thread."""

    component = "dllm"

    def __init__(self, engine, max_queue: int | None = None):
        self.engine = engine  # workers.dllm.engine.DllmEngine
        self.max_queue = engine.config.max_queue if max_queue is None else max_queue

    def worker_card(self) -> dict:
        has_cache = self.engine.cache.max_blocks > 0
        return {
            "model": self.engine.model_name,
            "capacity": self.engine.config.max_batch,
            "max_queue": self.max_queue,
            "block_size": self.engine.block_size if has_cache else 0,
            "kv_total_blocks": self.engine.cache.max_blocks,
            "publishes_kv_events": has_cache,
        }

    def model_card(self) -> ModelCard:
        tokenizer, name, images = self.engine.tokenizer, self.engine.model_name, self.engine.images
        multimodal = {}
        if images is not None:
            multimodal = dict(input_modalities=["text", "image"], image_token=images.token, image_token_id=images.token_id,
                              num_image_tokens=images.num_tokens, vision_encoder=images.encoder)
        return ModelCard(
            name=name,
            component=self.component,
            kinds=["chat", "completions"],
            block_size=self.engine.block_size,
            context_length=self.engine.limits.context_length,
            chat_template=_chat_template(tokenizer),
            bos_token=tokenizer.bos_token,
            eos_token=tokenizer.eos_token,
            defaults=self._defaults(),
            features=["logprobs", "logit_bias"],
            created=int(time.time()),
            health_check=HealthCheck.chat(name, solid_png_data_url() if images is not None else None),
            **multimodal,
        )

    def _defaults(self) -> dict[str, float | int | str | bool]:
        config = self.engine.config
        defaults: dict[str, float | int | str | bool] = {"block_length": self.engine.block_size, "remasking": "low_confidence"}
        if config.default_steps is not None:
            defaults["steps"] = config.default_steps
        if config.default_threshold is not None:
            defaults["threshold"] = config.default_threshold
        return defaults

    def model_files(self) -> dict[str, bytes]:
        from workers.dllm.model import tokenizer_json  # torch lives behind this import; keep the CLI light

        return {"tokenizer.json": tokenizer_json(self.engine.tokenizer, self.engine.config.model)}

    def load_report(self) -> dict:
        return self.engine.load_report()

    async def start(self, kv_sink: KvEventSink) -> None:
        self.engine.set_kv_sink(kv_sink.publish)
        self.engine.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.engine.stop)

    def kv_dump(self) -> list:
        return self.engine.kv_dump()

    def clear_cache(self) -> None:
        self.engine.clear_cache()

    async def generate(self, request: WorkRequest, ctx: RequestContext) -> AsyncIterator[Chunk | Final]:
        """Stream one Chunk per forward pass that released text; end with one Final (all text if not streaming)."""
        if not isinstance(request, GenerateRequest):
            raise InvalidRequest("the dllm worker serves text generation only", param="$.model")
        prompt = tokens_from_bytes(request.token_ids).tolist()
        k = request.num_generated
        if not 0 <= k <= len(prompt):
            raise InvalidRequest(f"num_generated={k} does not fit a prompt of {len(prompt)} tokens", param="$.num_generated")
        if k and request.sampling.max_tokens <= 0:  # the last attempt had generated everything; only its Final was lost
            yield Final(request_id=request.request_id, seq=0, finish_reason="length", usage=Usage(prompt_tokens=len(prompt)))
            return
        images = await self._images(request, ctx)
        held_text: list[str] = []
        held_ids: list[int] = []  # tokens behind text not yet sent
        logprobs = LogprobBuffer(request.sampling.logprobs or 0) if request.sampling.logprobs is not None else None
        outputs = self.engine.generate_async(
            request.request_id, prompt, request.sampling, continued_options(request), is_cancelled=lambda: _gone(ctx),
            images=images, resume_ids=prompt[len(prompt) - k :] if k else None,
        )
        async for out in outputs:
            held_ids.extend(out.token_ids)
            if logprobs is not None:
                for entry in zip(out.logprobs, out.top_ids, out.top_logprobs):
                    logprobs.add(*entry)
            if out.error is not None:
                raise EngineError(f"{type(out.error).__name__}: {out.error}")
            if out.finished:
                yield Final(
                    request_id=request.request_id,
                    seq=0,
                    text="".join(held_text) + out.text,
                    token_ids=tokens_to_bytes(held_ids),
                    logprobs=logprobs.take() if logprobs is not None else None,
                    finish_reason=out.finish_reason,
                    usage=out.usage,
                )
                return
            if not out.text:
                continue
            if request.stream:
                yield Chunk(
                    request_id=request.request_id,
                    seq=0,
                    text=out.text,
                    token_ids=tokens_to_bytes(held_ids),
                    forward_passes=out.forward_passes,
                    logprobs=logprobs.take() if logprobs is not None else None,
                )
                held_ids = []
            else:
                held_text.append(out.text)

    async def _images(self, request: GenerateRequest, ctx: RequestContext) -> list:
        """(MmObject, embedding tensor) per image, the embeddings read inline or from the Object Store."""
        if not request.mm_objects:
            return []
        if self.engine.images is None:
            raise InvalidRequest("this model takes text only", param="$.messages")
        if len(request.mm_embeddings) != len(request.mm_objects):
            raise InvalidRequest(f"{len(request.mm_objects)} images but {len(request.mm_embeddings)} embeddings",
                                 param="$.messages")
        from workers.tensors import tensor_from_bytes  # torch is loaded by now; keep the CLI import light

        images = []
        for obj, tensor in zip(request.mm_objects, request.mm_embeddings):
            data = await ctx.blobs.unpack(tensor.data, tensor.object_name) if ctx.blobs is not None else tensor.data
            try:
                images.append((obj, tensor_from_bytes(tensor.dtype, tensor.shape, data)))
            except ValueError as exc:
                raise InvalidRequest(f"image embedding: {exc}", param="$.messages") from None
        return images


def continued_options(request: GenerateRequest) -> DiffusionOptions | None:
    """A continuation denoises the rest only: the same steps per token, and no block length that no longer divides it."""
    opts, k = request.diffusion, request.num_generated
    if not k or opts is None:
        return opts
    left = request.sampling.max_tokens
    steps = max(1, -(-opts.steps * left // (left + k))) if opts.steps else opts.steps
    block_length = opts.block_length if opts.block_length and left % opts.block_length == 0 else None
    return msgspec.structs.replace(opts, steps=steps, block_length=block_length)


def _gone(ctx: RequestContext) -> bool:
    return ctx.is_cancelled() or (ctx.deadline is not None and time.monotonic() > ctx.deadline)


def _chat_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: serve the default one
        return template.get("default") or next(iter(template.values()), None)
    return template


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `diffmesh worker dllm`; each also reads DIFFMESH_DLLM_<FIELD> (e.g. DIFFMESH_DLLM_MAX_BATCH)."""
    group = parser.add_argument_group("dLLM model")
    group.add_argument("--model", help="checkpoint directory or hub id (default: --tiny)")
    group.add_argument("--tiny", choices=["random", "demo"], default="random",
                       help="without --model: random = the tiny multimodal model with random weights, built on first "
                            "run (tiny-dllm); demo = the small text model this repo trained and ships (demo-dllm: "
                            "answers templated prompts, see workers/dllm/demo_tasks.py)")
    group.add_argument("--served-model-name", help=f"name clients use (default: the directory name, or {DEFAULT_MODEL_NAME})")
    group.add_argument("--model-cache-dir", default=os.environ.get("DIFFMESH_MODEL_CACHE", MODEL_CACHE_DIR),
                       help="where the tiny default model is built (env DIFFMESH_MODEL_CACHE)")
    group.add_argument("--trust-remote-code", action="store_true", default=None, help="allow the checkpoint's own modeling code (LLaDA)")
    group.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], help="default: bfloat16 on cuda, float32 on cpu")
    group.add_argument("--attention", choices=["auto", "full", "block_causal"],
                       help="denoiser attention: full (LLaDA) or block_causal (LLaDA2, enables the KV caches); default auto")
    group.add_argument("--mask-format", choices=["auto", "4d", "2d"],
                       help="attention masks the model takes: 4d (transformers classes) or 2d padding (remote code); default auto")
    group.add_argument("--mask-id", type=int, help="mask token id (default: config.json mask_token_id or the tokenizer's)")
    group.add_argument("--eos-ids", help="comma-separated ids that end the answer (default: EOS + end-of-turn tokens)")
    group.add_argument("--suppress-ids", help="comma-separated ids never generated (mask and pad always are)")
    images = parser.add_argument_group("dLLM images (a checkpoint with an image placeholder token)")
    images.add_argument("--vision-encoder", help=f"served name of the encode worker model whose embeddings fill the "
                                                 f"placeholders (the tiny default model: {TINY_ENCODER}); unset = text only")
    images.add_argument("--image-token-id", type=int, help="placeholder id (default: config.json image_token_id)")
    images.add_argument("--image-tokens", type=int, dest="num_image_tokens",
                        help="placeholders per image (default: config.json image_seq_length)")
    decoding = parser.add_argument_group("dLLM decoding defaults (per request: nvext.steps, block_length, threshold)")
    decoding.add_argument("--block-size", type=int, help="block length and KV block size (default: config.json or 32)")
    decoding.add_argument("--steps", type=int, help="denoising steps (default: one token per step)")
    decoding.add_argument("--threshold", type=float, help="Fast-dLLM confidence threshold (default: fixed tokens per step)")
    decoding.add_argument("--no-cache", action="store_true", default=None, help="disable the block KV cache by default")
    decoding.add_argument("--max-batch", type=int, help=f"sequences denoised together (default {DllmConfig.max_batch})")
    decoding.add_argument("--max-queue", type=int, help=f"requests waiting beyond --max-batch (default {DllmConfig.max_queue})")
    decoding.add_argument("--cache-blocks", type=int, help=f"prefix cache budget in blocks (default {DllmConfig.max_cache_blocks})")
    decoding.add_argument("--max-forward-passes", type=int, help="cap per request (default: 2 x generated positions + 8)")
    decoding.add_argument("--seed", type=int, help="seeds requests that carry none (default 0)")
    decoding.add_argument("--threads", type=int, default=_env_int(ENV_PREFIX + "THREADS"),
                          help="torch intra-op threads (env DIFFMESH_DLLM_THREADS; default torch's; 1 suits tiny models on shared CPUs)")


def build_engine(args: argparse.Namespace) -> DllmWorker:
    """Load the model named by the flags (building the tiny default on first run) and wrap it for the bus."""
    model = args.model or os.environ.get(ENV_PREFIX + "MODEL")
    if model and model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
        raise ConfigError(f"--model {model!r} (or {ENV_PREFIX}MODEL): no such directory")  # before torch loads
    import torch

    from workers.dllm.engine import DllmEngine

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return DllmWorker(DllmEngine.from_pretrained(config_from_args(args)))


def config_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> DllmConfig:
    """Defaults, then DIFFMESH_DLLM_* env vars, then flags; no --model means the tiny default model."""
    env = os.environ if env is None else env
    model, name = args.model or env.get(ENV_PREFIX + "MODEL"), args.served_model_name
    vision_encoder = getattr(args, "vision_encoder", None)
    if model is None:
        from workers.dllm.tiny import DEMO_MODEL_DIR, TinySpec, ensure_tiny_dllm

        if getattr(args, "tiny", "random") == "demo":  # text only: its <image> token waits for a trained projector
            model, name = str(DEMO_MODEL_DIR), name or DEMO_MODEL_NAME
        else:
            model = str(ensure_tiny_dllm(Path(args.model_cache_dir).expanduser(), TinySpec(image_tokens=TINY_IMAGE_TOKENS)))
            name = name or DEFAULT_MODEL_NAME
            vision_encoder = vision_encoder or env.get(ENV_PREFIX + "VISION_ENCODER") or TINY_ENCODER
    device = args.device or env.get(ENV_PREFIX + "DEVICE") or _default_device()
    return from_env(
        DllmConfig, env, prefix=ENV_PREFIX, model=model, served_model_name=name, trust_remote_code=args.trust_remote_code,
        device=device, dtype=args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"),
        attention=args.attention, mask_format=args.mask_format, block_size=args.block_size, default_steps=args.steps, default_threshold=args.threshold,
        default_use_cache=None if args.no_cache is None else not args.no_cache, mask_id=args.mask_id,
        eos_ids=args.eos_ids, suppress_ids=args.suppress_ids, max_batch=args.max_batch, max_queue=args.max_queue,
        max_cache_blocks=args.cache_blocks, max_forward_passes=args.max_forward_passes, seed=args.seed,
        vision_encoder=vision_encoder, image_token_id=getattr(args, "image_token_id", None),
        num_image_tokens=getattr(args, "num_image_tokens", None),
    )  # fmt: skip


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
