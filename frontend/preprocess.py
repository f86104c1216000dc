"""Templating and tokenizing from a model card, so a frontend needs no model files of its own."""

from __future__ import annotations

import numpy as np
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from protocol.errors import InvalidRequest
from protocol.events import ModelCard
from protocol.kv import TOKEN_DTYPE
from protocol.openai import ChatMessage, ImageUrlPart, TextPart


def _raise(message: str):
    raise TemplateError(message)


def build_template_env() -> ImmutableSandboxedEnvironment:
    """Jinja settings of transformers' apply_chat_template, so token ids match the worker's own tokenizer."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    return env


class Preprocessor:
    """Chat messages or a completion prompt -> int32 token ids for one model."""

    def __init__(self, card: ModelCard, tokenizer_json: bytes | None, env: ImmutableSandboxedEnvironment | None = None):
        self.card = card
        self.tokenizer = Tokenizer.from_str(tokenizer_json.decode()) if tokenizer_json else None
        env = env or build_template_env()
        self.template = env.from_string(card.chat_template) if card.chat_template else None
        self.accepts_images = "image" in card.input_modalities

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise InvalidRequest(f"model {self.card.name!r} has no tokenizer: it does not take text prompts", param="$.model")
        return self.tokenizer

    def render_chat(self, messages: list[ChatMessage]) -> str:
        if self.template is None:
            raise InvalidRequest(f"model {self.card.name!r} has no chat template; use /v1/completions", param="$.model")
        plain = [_plain(m, self._text_of(m, i)) for i, m in enumerate(messages)]
        try:
            return self.template.render(messages=plain, add_generation_prompt=True, bos_token=self.card.bos_token or "",
                                        eos_token=self.card.eos_token or "")
        except TemplateError as exc:
            raise InvalidRequest(f"chat template rejected the messages: {exc}", param="$.messages") from exc

    def _text_of(self, message: ChatMessage, index: int) -> str:
        if message.content is None or isinstance(message.content, str):
            return message.content or ""
        parts = []
        for j, part in enumerate(message.content):
            if isinstance(part, TextPart):
                parts.append(part.text)
            elif isinstance(part, ImageUrlPart) and not self.accepts_images:
                raise InvalidRequest(f"model {self.card.name!r} does not take image input",
                                     param=f"$.messages[{index}].content[{j}]")
        return "".join(parts)

    def chat_tokens(self, messages: list[ChatMessage]) -> np.ndarray:
        return self.encode(self.render_chat(messages))

    def encode(self, text: str) -> np.ndarray:
        ids = self._require_tokenizer().encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=TOKEN_DTYPE)

    def decode(self, ids: list[int]) -> str:
        return self._require_tokenizer().decode(ids, skip_special_tokens=False)

    def vocab_size(self) -> int:
        return self._require_tokenizer().get_vocab_size(with_added_tokens=True)

    def prompt_tokens(self, prompt: str | list[int]) -> np.ndarray:
        if isinstance(prompt, str):
            return self.encode(prompt)
        vocab = self._require_tokenizer().get_vocab_size(with_added_tokens=True)
        tokens = np.asarray(prompt, dtype=TOKEN_DTYPE)
        if tokens.size and int(tokens.max()) >= vocab:
            raise InvalidRequest(f"token id {int(tokens.max())} is outside the vocabulary ({vocab})", param="$.prompt")
        return tokens


def _plain(message: ChatMessage, text: str) -> dict:
    """A message as chat templates take it; `name` only when given (templates test `message.name is defined`)."""
    plain = {"role": message.role, "content": text}
    if message.name:
        plain["name"] = message.name
    return plain
