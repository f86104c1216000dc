"""OpenAI response objects for chat and text completions: per-choice stream events, whole responses, usage."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from frontend.logprobs import TokenTexts, chat_entries, completion_logprobs, merge_completion
from frontend.textplan import Choice, Plan
from protocol.kv import tokens_from_bytes
from protocol.openai import (
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatLogprobs, ChunkChoice, Completion, CompletionChoice,
    CompletionTokensDetails, Delta, PromptTokensDetails, UsageInfo, json_encoder,
)
from protocol.work import TokenLogprobs, Usage


@dataclass
class ChoiceResult:
    """One choice's whole answer (collected from its Chunks and Final)."""

    choice: Choice
    text: str
    finish_reason: str | None
    usage: Usage
    segments: list[tuple[bytes, TokenLogprobs]] = field(default_factory=list)  # (token ids, their logprobs)


@dataclass
class _ChoiceState:
    texts: TokenTexts | None
    sent_role: bool = False
    offset: int = 0  # characters of the choice's text so far (completions text_offset)


class Formatter:
    """Builds the OpenAI objects of one response (chat or text completion, any number of choices)."""

    def __init__(self, kind: str, request_id: str, model: str, plan: Plan, tokenizer, *, service_tier: str | None = None,
                 obfuscate: bool = False):
        self.kind, self.id, self.model, self.created = kind, request_id, model, int(time.time())
        self.plan = plan
        self.tokenizer = tokenizer
        self.service_tier = "default" if service_tier else None  # the only tier there is
        self.obfuscate = obfuscate
        self._states: dict[int, _ChoiceState] = {}

    def _state(self, choice: Choice) -> _ChoiceState:
        state = self._states.get(choice.index)
        if state is None:
            texts = TokenTexts(self.tokenizer) if self.plan.num_top is not None else None  # decoded as the worker does
            state = self._states[choice.index] = _ChoiceState(texts)
        return state

    def event(self, choice: Choice, text: str, token_ids: bytes = b"", logprobs: TokenLogprobs | None = None,
              finish_reason: str | None = None, index: int | None = None) -> bytes:
        """One SSE event of one choice; `index` overrides the choice's own (best_of renumbers)."""
        state = self._state(choice)
        index = choice.index if index is None else index
        if self.kind == "chat":
            delta = Delta(content=text if text or not finish_reason else None)
            if not state.sent_role:
                delta, state.sent_role = Delta(role="assistant", content=delta.content), True
            lp = ChatLogprobs(content=chat_entries(state.texts, tokens_from_bytes(token_ids), logprobs)) if self._has(logprobs) else None
            obj = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[
                ChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=lp)])
            if self.service_tier:
                obj.service_tier = self.service_tier
        else:
            lp = None
            if self._has(logprobs):
                lp, state.offset = completion_logprobs(state.texts, tokens_from_bytes(token_ids), logprobs, state.offset)
            elif state.texts is None:
                state.offset += len(text)
            obj = Completion(id=self.id, created=self.created, model=self.model,
                             choices=[CompletionChoice(index=index, text=text, finish_reason=finish_reason, logprobs=lp)])
        return self._sse(obj)

    def _has(self, logprobs: TokenLogprobs | None) -> bool:
        return self.plan.num_top is not None and logprobs is not None

    def usage_event(self, usage: UsageInfo) -> bytes:
        cls = ChatCompletionChunk if self.kind == "chat" else Completion
        return self._sse(cls(id=self.id, created=self.created, model=self.model, choices=[], usage=usage))

    def _sse(self, obj) -> bytes:
        if self.obfuscate:
            obj.obfuscation = secrets.token_urlsafe(1 + secrets.randbelow(24))
        return b"data: " + json_encoder.encode(obj) + b"\n\n"

    def whole(self, results: list[ChoiceResult], usage: UsageInfo) -> bytes:
        """The JSON response; results are in response order, their position is their index."""
        if self.kind == "chat":
            choices = [ChatChoice(index=i, message=AssistantMessage(content=r.text), finish_reason=r.finish_reason,
                                  logprobs=self._chat_logprobs(r)) for i, r in enumerate(results)]
            body = ChatCompletion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
            if self.service_tier:
                body.service_tier = self.service_tier
            return json_encoder.encode(body)
        choices = [CompletionChoice(index=i, text=self._echo(r) + r.text, finish_reason=r.finish_reason,
                                    logprobs=self._completion_logprobs(r)) for i, r in enumerate(results)]
        return json_encoder.encode(Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage))

    def _echo(self, result: ChoiceResult) -> str:
        return self.plan.prompts[result.choice.prompt_index].text if self.plan.echo else ""

    def _chat_logprobs(self, result: ChoiceResult) -> ChatLogprobs | None:
        if self.plan.num_top is None:
            return None
        texts = self._state(result.choice).texts
        return ChatLogprobs(content=[e for ids, lp in result.segments for e in chat_entries(texts, tokens_from_bytes(ids), lp)])

    def _completion_logprobs(self, result: ChoiceResult):
        if self.plan.num_top is None:
            return None
        state = self._state(result.choice)
        parts = []
        for ids, lp in result.segments:
            part, state.offset = completion_logprobs(state.texts, tokens_from_bytes(ids), lp, state.offset)
            parts.append(part)
        return merge_completion(parts)


def total_usage(plan: Plan, results: list[ChoiceResult]) -> UsageInfo:
    """Each prompt counted once (its best cache hit among its choices); completions and forward passes summed."""
    cached, prompts = [0] * len(plan.prompts), [0] * len(plan.prompts)
    for r in results:
        p = r.choice.prompt_index
        cached[p], prompts[p] = max(cached[p], r.usage.cached_tokens), max(prompts[p], r.usage.prompt_tokens)
    prompt = sum(prompts)
    completion = sum(r.usage.completion_tokens for r in results)
    passes = sum(r.usage.forward_passes for r in results)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(cached)),
                     completion_tokens_details=CompletionTokensDetails(forward_passes=passes or None))

