"""Checks a decoded request against its model's card: what the model cannot do is a 400 naming the field.

The rules live in frontend/fields.py; this module applies them and adds the cross-field checks OpenAI makes
(stream_options without stream, top_logprobs without logprobs, best_of below n, ...).
"""

from __future__ import annotations

from frontend.fields import (
    CARRIED_FEATURES, CHAT, COMPLETIONS, CONTENT_PARTS, IMAGE_EDITS, IMAGES, MESSAGE, PART_MODALITIES, ROLE_FEATURES, ROLE_FIELDS, Rule,
    struct_tag,
)
from protocol.errors import InvalidRequest
from protocol.events import ModelCard
from protocol.openai import ChatCompletionRequest, ChatMessage, CompletionRequest, TextRequest
from protocol.openai_images import ImageEditRequest, ImageGenerationRequest


def has_feature(card: ModelCard, feature: str) -> bool:
    """The model lists the feature and the bus can carry it to the worker."""
    return feature in card.features and feature in CARRIED_FEATURES


def refuse(card: ModelCard, param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"model {card.name!r} does not support {what}", param=param)


def check_fields(obj, rules: dict[str, Rule], card: ModelCard, prefix: str = "$") -> None:
    """A 400 for the first field whose value needs a feature the model does not have."""
    for name, rule in rules.items():
        feature = rule.feature_for(getattr(obj, name, None))
        if feature is not None and not has_feature(card, feature):
            what = f"`{name}` {feature}" if callable(rule.feature) else f"`{name}`"
            raise refuse(card, f"{prefix}.{name}", what)


def check_chat(req: ChatCompletionRequest, card: ModelCard) -> None:
    check_fields(req, CHAT, card)
    _check_stream_options(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs=true", param="$.top_logprobs")
    if req.max_tokens and req.max_completion_tokens and req.max_tokens != req.max_completion_tokens:
        raise InvalidRequest("max_tokens and max_completion_tokens disagree; set one", param="$.max_completion_tokens")
    for modality in req.modalities or ():
        if modality not in card.output_modalities:
            raise refuse(card, "$.modalities", f"{modality} output (it writes {', '.join(card.output_modalities)})")
    for i, message in enumerate(req.messages):
        _check_message(message, f"$.messages[{i}]", card)


def _check_message(message: ChatMessage, prefix: str, card: ModelCard) -> None:
    feature = ROLE_FEATURES.get(message.role)
    if feature is not None and not has_feature(card, feature):
        raise refuse(card, f"{prefix}.role", f"{message.role} messages (`{feature}`)")
    allowed = ROLE_FIELDS[message.role]
    for name in MESSAGE:
        if name not in allowed and getattr(message, name) is not None:
            raise InvalidRequest(f"`{name}` is not a field of a {message.role} message", param=f"{prefix}.{name}")
    check_fields(message, MESSAGE, card, prefix)
    if isinstance(message.content, list):
        for j, part in enumerate(message.content):
            _check_part(part, f"{prefix}.content[{j}]", card)


def _check_part(part, param: str, card: ModelCard) -> None:
    kind = struct_tag(part)
    modality = PART_MODALITIES.get(kind)
    if modality is not None and modality not in card.input_modalities:
        raise refuse(card, param, f"{modality} input (`{kind}` parts)")
    feature = CONTENT_PARTS[kind].feature_for(part)
    if feature is not None and not has_feature(card, feature):
        raise refuse(card, param, f"`{kind}` parts")


def check_completion(req: CompletionRequest, card: ModelCard) -> None:
    check_fields(req, COMPLETIONS, card)
    _check_stream_options(req)
    if req.echo and req.logprobs is not None and not has_feature(card, "prompt_logprobs"):
        raise refuse(card, "$.echo", "echo with logprobs (log-probabilities of the prompt tokens)")
    if req.best_of is not None and req.best_of < (req.n or 1):
        raise InvalidRequest(f"best_of ({req.best_of}) must be at least n ({req.n})", param="$.best_of")
    if req.best_of is not None and req.best_of > 1 and req.stream:
        raise InvalidRequest("best_of cannot be streamed", param="$.best_of")


def check_image(req: ImageGenerationRequest | ImageEditRequest, card: ModelCard) -> None:
    check_fields(req, IMAGE_EDITS if isinstance(req, ImageEditRequest) else IMAGES, card)


def _check_stream_options(req: TextRequest) -> None:
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest("stream_options needs stream=true", param="$.stream_options")


def logit_bias_ids(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """OpenAI's string token ids as ints, each checked against the vocabulary."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.isdigit() or int(key) >= vocab_size:
            raise InvalidRequest(f"logit_bias key {key!r} is not a token id below {vocab_size}", param=f"$.logit_bias.{key}")
        out[int(key)] = float(value)
    return out
