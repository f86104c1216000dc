"""A chat or completions request as bus requests: one GenerateRequest per choice (n per prompt, or best_of).

Choice j of prompt p has index p * n + j, as OpenAI orders them, and seed `seed + j` (so choice 0 equals the
n=1 answer); with no seed and several choices per prompt, a random base seed keeps the samples independent.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass

import msgspec
import numpy as np

from frontend.capabilities import logit_bias_ids
from frontend.preprocess import ImagePart
from frontend.registry import ModelEntry
from frontend.limits import check_prompt
from protocol.errors import InvalidRequest
from protocol.openai import MAX_CHOICES, ChatCompletionRequest, CompletionRequest
from protocol.work import DiffusionOptions, GenerateRequest, SamplingOptions

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Prompt:
    tokens: np.ndarray  # int32 token ids after templating (image placeholders expanded)
    text: str  # what `echo` puts in front of the completion
    images: tuple[ImagePart, ...] = ()  # chat image parts, in prompt order
    offsets: tuple[tuple[int, int], ...] = ()  # [start, end) of each image's placeholders in `tokens`


@dataclass(frozen=True)
class Choice:
    index: int  # in the response (before best_of picks)
    prompt_index: int
    work: GenerateRequest


@dataclass(frozen=True)
class Plan:
    request_id: str  # the response id; bus requests add `-k` when there are several
    prompts: list[Prompt]
    choices: list[Choice]
    num_returned: int  # choices returned per prompt (n)
    num_top: int | None  # top alternatives the client asked for; None: no logprobs in the response
    echo: bool

    @property
    def per_prompt(self) -> int:
        return len(self.choices) // len(self.prompts)


def build_plan(req: ChatCompletionRequest | CompletionRequest, entry: ModelEntry, kind: str, request_id: str) -> Plan:
    pre = entry.preprocessor
    prompts = [chat_prompt(req, pre)] if kind == "chat" else completion_prompts(req.prompt, pre)
    n = req.n or 1
    per_prompt = max(n, getattr(req, "best_of", None) or 1)
    if len(prompts) * per_prompt > MAX_CHOICES:
        raise InvalidRequest(f"{len(prompts)} prompts x {per_prompt} choices exceeds {MAX_CHOICES}", param="$.n")
    num_top = _num_top(req, kind)
    wants_logprobs = num_top if num_top is not None else (0 if per_prompt > n else None)  # best_of ranks by them
    sampling = _sampling(req, entry, wants_logprobs)
    diffusion = _diffusion(req)
    base_seed = req.seed if req.seed is not None else (secrets.randbits(63) if per_prompt > 1 else None)
    choices = []
    for p, prompt in enumerate(prompts):
        max_tokens = _max_tokens(req, entry, len(prompt.tokens))
        for j in range(per_prompt):
            seed = None if base_seed is None else (base_seed + j) % (MAX_SEED + 1)
            options = msgspec.structs.replace(sampling, max_tokens=max_tokens, seed=seed)
            bus_id = request_id if len(prompts) * per_prompt == 1 else f"{request_id}-{len(choices)}"
            work = GenerateRequest(request_id=bus_id, model=req.model, token_ids=np.ascontiguousarray(prompt.tokens).tobytes(),
                                   sampling=options, diffusion=diffusion, stream=bool(req.stream))
            choices.append(Choice(p * per_prompt + j, p, work))
    return Plan(request_id, prompts, choices, n, num_top, bool(getattr(req, "echo", False)))


def chat_prompt(req: ChatCompletionRequest, pre) -> Prompt:
    chat = pre.chat_prompt(req.messages)
    return Prompt(chat.tokens, "", tuple(chat.images), tuple(chat.offsets))


def with_images(plan: Plan, mm_objects: list, mm_embeddings: list) -> Plan:
    """The plan with every choice carrying the prompt's images (chat has one prompt; its choices share them)."""
    choices = [dataclasses.replace(c, work=msgspec.structs.replace(c.work, mm_objects=mm_objects,
                                                                    mm_embeddings=mm_embeddings)) for c in plan.choices]
    return dataclasses.replace(plan, choices=choices)


def completion_prompts(prompt, pre) -> list[Prompt]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(prompt, str):
        return [Prompt(pre.encode(prompt), prompt)]
    first = type(prompt[0])
    for i, item in enumerate(prompt):
        if type(item) is not first:
            raise InvalidRequest("a prompt list holds strings, token ids or token-id lists, not a mix", param=f"$.prompt[{i}]")
    if first is int:
        return [_token_prompt(prompt, pre, "$.prompt")]
    if first is str:
        return [Prompt(pre.encode(text), text) for text in prompt]
    return [_token_prompt(ids, pre, f"$.prompt[{i}]") for i, ids in enumerate(prompt)]


def _token_prompt(ids: list[int], pre, param: str) -> Prompt:
    vocab = pre.vocab_size()
    for i, token in enumerate(ids):
        if token >= vocab:
            raise InvalidRequest(f"token id {token} is outside the vocabulary ({vocab})", param=f"{param}[{i}]")
    return Prompt(np.asarray(ids, dtype="<i4"), pre.decode(ids))


def _num_top(req, kind: str) -> int | None:
    if kind == "chat":
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs


def _max_tokens(req, entry: ModelEntry, prompt_len: int) -> int:
    check_prompt(prompt_len, entry.card.context_length, "$.messages" if hasattr(req, "messages") else "$.prompt")
    limit = entry.card.context_length or 2**31
    requested = getattr(req, "max_completion_tokens", None) or req.max_tokens
    max_tokens = requested or min(int(entry.card.defaults.get("max_tokens", 256)), max(limit - prompt_len, 1))
    if prompt_len + max_tokens > limit:
        raise InvalidRequest(f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                             f"length {limit}", param="$.max_tokens")
    return max_tokens


def _sampling(req, entry: ModelEntry, logprobs: int | None) -> SamplingOptions:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    bias = logit_bias_ids(req.logit_bias, entry.preprocessor.vocab_size()) if req.logit_bias else {}
    return SamplingOptions(max_tokens=1, temperature=req.temperature or 0.0, top_p=req.top_p or 1.0, seed=req.seed,
                           stop=stop, ignore_eos=bool(req.nvext and req.nvext.ignore_eos), logprobs=logprobs, logit_bias=bias)


def _diffusion(req) -> DiffusionOptions | None:
    ext = req.nvext
    if ext is None or not (ext.steps or ext.block_length or ext.threshold or ext.remasking or ext.cfg_scale or ext.use_cache is not None):
        return None
    return DiffusionOptions(steps=ext.steps, block_length=ext.block_length, threshold=ext.threshold,
                            remasking=ext.remasking or "low_confidence", cfg_scale=ext.cfg_scale or 0.0, use_cache=ext.use_cache)
