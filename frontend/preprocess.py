"""Templating and tokenizing from a model card, so a frontend needs no model files of its own."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class ImagePart:
    """An `image_url` content part of a chat request."""

    url: str
    param: str  # its JSON path: $.messages[i].content[j]


@dataclass(frozen=True)
class ChatPrompt:
    tokens: np.ndarray  # int32, placeholders expanded: num_image_tokens per image
    images: list[ImagePart]  # in prompt order
    offsets: list[tuple[int, int]]  # [start, end) of each image's placeholders in `tokens`


class Preprocessor:
    """Chat messages or a completion prompt -> int32 token ids for one model."""

    def __init__(self, card: ModelCard, tokenizer_json: bytes | None, env: ImmutableSandboxedEnvironment | None = None):
        self.card = card
        self.tokenizer = Tokenizer.from_str(tokenizer_json.decode()) if tokenizer_json else None
        env = env or build_template_env()
        self.template = env.from_string(card.chat_template) if card.chat_template else None
        self.accepts_images = ("image" in card.input_modalities and card.image_token is not None
                               and card.image_token_id is not None and card.num_image_tokens > 0)

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
        """The message as template text; each image part becomes the model's placeholder once."""
        if message.content is None or isinstance(message.content, str):
            self._check_text(message.content or "", f"$.messages[{index}].content")
            return message.content or ""
        parts = []
        for j, part in enumerate(message.content):
            if isinstance(part, TextPart):
                self._check_text(part.text, f"$.messages[{index}].content[{j}].text")
                parts.append(part.text)
            else:
                self._check_image(message, part, f"$.messages[{index}].content[{j}]")
                parts.append(self.card.image_token)
        return "".join(parts)

    def _check_text(self, text: str, param: str) -> None:
        if self.accepts_images and self.card.image_token in text:
            raise InvalidRequest(f"text may not contain the image placeholder {self.card.image_token!r}; send images as "
                                 "image_url parts", param=param)

    def _check_image(self, message: ChatMessage, part: ImageUrlPart, param: str) -> None:
        if not self.accepts_images:
            raise InvalidRequest(f"model {self.card.name!r} does not take image input", param=param)
        if message.role != "user":
            raise InvalidRequest(f"image parts belong in user messages, not {message.role}", param=param)
        if part.image_url.detail != "auto":
            raise InvalidRequest(f"model {self.card.name!r} encodes every image at one resolution "
                                 f"({self.card.num_image_tokens} tokens); detail must be auto",
                                 param=f"{param}.image_url.detail")

    def chat_tokens(self, messages: list[ChatMessage]) -> np.ndarray:
        return self.chat_prompt(messages).tokens

    def chat_prompt(self, messages: list[ChatMessage]) -> ChatPrompt:
        """Templated, tokenized chat with each image's placeholder expanded to num_image_tokens ids."""
        images = image_parts(messages)
        tokens = self.encode(self.render_chat(messages))
        if not images:
            return ChatPrompt(tokens, [], [])
        tokens, offsets = self._expand(tokens, len(images))
        return ChatPrompt(tokens, images, offsets)

    def _expand(self, tokens: np.ndarray, num_images: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        token_id, width = self.card.image_token_id, self.card.num_image_tokens
        found = np.flatnonzero(tokens == token_id)
        if len(found) != num_images:
            raise InvalidRequest(f"the chat template kept {len(found)} of {num_images} image placeholders",
                                 param="$.messages")
        placeholder = np.full(width, token_id, dtype=TOKEN_DTYPE)
        pieces, offsets, cursor = [], [], 0
        for position in found.tolist():
            pieces += [tokens[cursor:position], placeholder]
            start = position + len(offsets) * (width - 1)
            offsets.append((start, start + width))
            cursor = position + 1
        pieces.append(tokens[cursor:])
        return np.concatenate(pieces), offsets

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


def image_parts(messages: list[ChatMessage]) -> list[ImagePart]:
    return [ImagePart(part.image_url.url, f"$.messages[{i}].content[{j}]")
            for i, message in enumerate(messages) if isinstance(message.content, list)
            for j, part in enumerate(message.content) if isinstance(part, ImageUrlPart)]
