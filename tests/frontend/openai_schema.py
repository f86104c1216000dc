"""Field paths of the OpenAI request schemas, read from the `openai` package's own TypedDicts.

A field a new openai release adds shows up here, and so as an untested field in the conformance suite.
Paths: `top_level`, `stream_options.include_usage`, `messages[assistant].tool_calls`,
`messages[].content[image_url]`, `messages[].content[image_url].image_url`, `response_format[json_object]`.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator

import typing_extensions
from openai.types import completion_create_params, image_generate_params
from openai.types.chat import completion_create_params as chat_create_params


def hints(td) -> dict:
    return typing.get_type_hints(td)


def typed_dicts_in(tp) -> list:
    """Every TypedDict inside a hint (through Optional, Union, Iterable, Required, ...)."""
    if typing_extensions.is_typeddict(tp):
        return [tp]
    return [td for arg in typing.get_args(tp) for td in typed_dicts_in(arg)]


def tag_of(td, key: str) -> str:
    (value,) = typing.get_args(hints(td)[key])
    return value


def _fields(*tds) -> set[str]:
    return {name for td in tds for name in hints(td)}


def _tagged(prefix: str, hint, key: str) -> Iterator[str]:
    for td in typed_dicts_in(hint):
        tag = tag_of(td, key)
        yield f"{prefix}[{tag}]"
        yield from (f"{prefix}[{tag}].{name}" for name in hints(td) if name != key)


CHAT_TYPES = (chat_create_params.CompletionCreateParamsNonStreaming, chat_create_params.CompletionCreateParamsStreaming)
COMPLETION_TYPES = (completion_create_params.CompletionCreateParamsNonStreaming,
                    completion_create_params.CompletionCreateParamsStreaming)
IMAGE_TYPES = (image_generate_params.ImageGenerateParamsNonStreaming, image_generate_params.ImageGenerateParamsStreaming)


def stream_option_paths(types: Iterable) -> set[str]:
    (td,) = {t for base in types for t in typed_dicts_in(hints(base)["stream_options"])}
    return {f"stream_options.{name}" for name in hints(td)}


def chat_paths() -> set[str]:
    base = hints(CHAT_TYPES[0])
    messages = typed_dicts_in(base["messages"])
    paths = _fields(*CHAT_TYPES) | stream_option_paths(CHAT_TYPES)
    paths |= {f"messages[{tag_of(m, 'role')}].{name}" for m in messages for name in hints(m)}
    for message in messages:
        paths |= set(_tagged("messages[].content", hints(message)["content"], "type"))
    paths |= set(_tagged("response_format", base["response_format"], "type"))
    return paths


def completion_paths() -> set[str]:
    return _fields(*COMPLETION_TYPES) | stream_option_paths(COMPLETION_TYPES)


def image_paths() -> set[str]:
    return _fields(*IMAGE_TYPES)


def message_roles() -> dict[str, set[str]]:
    """Role -> the fields OpenAI's message type of that role has."""
    return {tag_of(m, "role"): set(hints(m)) for m in typed_dicts_in(hints(CHAT_TYPES[0])["messages"])}


def content_part_types() -> set[str]:
    return {p.split("[")[-1].rstrip("]") for p in chat_paths() if p.startswith("messages[].content[") and p.endswith("]")}
