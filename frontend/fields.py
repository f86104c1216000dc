"""What each OpenAI request field does here: the one table behind the 400s, the README and the conformance suite.

Every field of the OpenAI chat, completions and images request schemas has a rule:
- `supported`: does what the OpenAI docs say, for every model of the endpoint (notes say how);
- `feature`: works only on models whose card lists the feature (`ModelCard.features`) and whose feature the bus
  carries; otherwise a 400 naming the field ("model 'x' does not support `tools`"). `unused` values are the ones
  that ask for nothing (`presence_penalty: 0`, `tool_choice: "none"`) and are accepted everywhere;
- `inert`: accepted and validated, with no effect here, for the reason in the note (the documented ignore list).
A field the schema does not know at all is a 400 naming it (protocol/openai.py forbids unknown fields).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

# features a worker can implement today: the bus carries them (protocol.work.SamplingOptions)
CARRIED_FEATURES = frozenset({"logprobs", "logit_bias"})


@dataclass(frozen=True)
class Rule:
    kind: Literal["supported", "feature", "inert"]
    note: str
    feature: str | Callable[[Any], str] | None = None  # feature rules: the card feature, or one per value
    unused: tuple | Callable[[Any], bool] = ()  # feature rules: values that ask for nothing (None always does)

    def feature_for(self, value: Any) -> str | None:
        """The feature `value` needs, or None when it asks for nothing."""
        if self.kind != "feature" or value is None or self._is_unused(value):
            return None
        return self.feature(value) if callable(self.feature) else self.feature

    def _is_unused(self, value: Any) -> bool:
        if callable(self.unused):
            return self.unused(value)
        return any(type(value) is type(u) and value == u for u in self.unused)  # False is not 0


def supported(note: str) -> Rule:
    return Rule("supported", note)


def inert(note: str) -> Rule:
    return Rule("inert", note)


def needs(feature: str | Callable[[Any], str], note: str, unused: tuple | Callable[[Any], bool] = ()) -> Rule:
    return Rule("feature", note, feature, unused)


def struct_tag(value) -> str:
    """The `type` tag of a tagged-union Struct (response_format, content parts)."""
    return value.__struct_config__.tag


def _is_text_format(value) -> bool:
    return struct_tag(value) == "text"


NO_PENALTY = (0.0,)  # msgspec decodes a JSON 0 into a float field as 0.0
TOOLS_NOTE = "tool calling: no diffmesh model parses tool calls yet"

TEXT_COMMON: dict[str, Rule] = {
    "model": supported("a served model; unknown ids are a 404"),
    "stream": supported("SSE; each choice's events carry its `index`"),
    "stream_options": supported("`include_usage`: a last chunk with the usage and no choices; `include_obfuscation`: "
                                "a random `obfuscation` string on every chunk; needs `stream`"),
    "n": supported("1-128 independent samples, one bus request each; choice i is seeded `seed + i` (no seed: a random "
                   "base); usage counts each prompt once and sums the completions"),
    "max_tokens": supported("completion tokens at most; prompt + max_tokens must fit the context length"),
    "temperature": supported("0-2; 0 is greedy"),
    "top_p": supported("nucleus sampling, applied after temperature"),
    "seed": supported("same seed and parameters, same answer"),
    "stop": supported("up to 4 strings; the answer ends before the first, which is not returned"),
    "frequency_penalty": needs("penalties", "no diffmesh model applies repetition penalties", NO_PENALTY),
    "presence_penalty": needs("penalties", "no diffmesh model applies repetition penalties", NO_PENALTY),
    "logit_bias": needs("logit_bias", "token id -> bias in [-100, 100] added to its logit (dLLM)", ({},)),
    "user": inert("end-user id for abuse monitoring; diffmesh runs none"),
}

CHAT: dict[str, Rule] = {
    **TEXT_COMMON,
    "messages": supported("roles system, developer, user, assistant (tool and function need tools); see message fields"),
    "max_completion_tokens": supported("same as max_tokens (no reasoning tokens here); if both are set they must agree"),
    "logprobs": needs("logprobs", "each completion token's log-probability (see Workers for what it means per model)", (False,)),
    "top_logprobs": needs("logprobs", "0-20 most likely alternatives per token; needs logprobs=true"),
    "metadata": inert("validated (16 pairs, keys up to 64 and values up to 512 characters); diffmesh stores no objects"),
    "safety_identifier": inert("end-user id for abuse monitoring; diffmesh runs none"),
    "prompt_cache_key": inert("the KV router already routes each prompt to the worker caching its prefix"),
    "prompt_cache_options": inert("prefix caching is automatic; cache lifetimes are LRU, not guaranteed"),
    "prompt_cache_retention": needs("cache_retention", "`in_memory` is what every worker does; `24h` is refused", ("in_memory",)),
    "service_tier": needs("service_tiers", "`auto`/`default` accepted and answered as `default`; no other tiers",
                          ("auto", "default")),
    "store": needs("store", "diffmesh stores no completions; `false` accepted", (False,)),
    "response_format": needs(struct_tag, "`text` everywhere; json_object / json_schema need the feature",
                             _is_text_format),
    "modalities": supported("each must be an output modality of the model (text for every text model)"),
    "reasoning_effort": needs("reasoning", "no diffmesh model reasons; `none` accepted", ("none",)),
    "verbosity": needs("verbosity", "no diffmesh model steers verbosity; `medium` (the default) accepted", ("medium",)),
    "tools": needs("tools", TOOLS_NOTE),
    "tool_choice": needs("tools", TOOLS_NOTE + "; `none` accepted", ("none",)),
    "parallel_tool_calls": needs("tools", TOOLS_NOTE),
    "functions": needs("tools", TOOLS_NOTE),
    "function_call": needs("tools", TOOLS_NOTE + "; `none` accepted", ("none",)),
    "audio": needs("audio", "no diffmesh model speaks"),
    "prediction": needs("prediction", "no predicted outputs"),
    "web_search_options": needs("web_search", "no web search"),
    "moderation": needs("moderation", "no moderation model runs here"),
}

COMPLETIONS: dict[str, Rule] = {
    **TEXT_COMMON,
    "prompt": supported("a string, a list of strings, token ids, or a list of token-id lists: one set of n choices per "
                        "prompt, indexed prompt * n + j as OpenAI orders them"),
    "echo": supported("the prompt text in front of each completion (the first stream event of each choice)"),
    "logprobs": needs("logprobs", "0-5: the token's log-probability plus the most likely alternatives"),
    "best_of": needs("logprobs", "best_of samples per prompt, the n with the highest mean token log-probability "
                     "returned; usage counts all; not with stream", (1,)),
    "suffix": needs("suffix", "no diffmesh model infills"),
}

IMAGES: dict[str, Rule] = {
    "prompt": supported("up to 32000 characters"),
    "model": supported("an image model; may be left out when exactly one is served"),
    "n": supported("1-10 images in one pipeline call; image i uses seed + i"),
    "size": supported("`WxH` within the model's bounds and multiple, or `auto` (the model's default)"),
    "quality": supported("a steps preset relative to the model's default steps (low 0.5x ... max 2.5x)"),
    "response_format": supported("`b64_json`, or `url` from the worker's storage"),
    "output_format": needs(lambda v: v, "png, jpeg, webp; gif and svg need the feature", ("png", "jpeg", "webp")),
    "output_compression": supported("0-100 for jpeg and webp"),
    "background": supported("`transparent` keys the border colour out (png/webp)"),
    "stream": supported("SSE `image_generation.partial_image` / `image_generation.completed` events"),
    "partial_images": supported("0-3 partial images decoded from intermediate latents; needs stream"),
    "user": supported("names the owner prefix of stored `url` images (hashed)"),
    "safety_identifier": supported("like `user`, and takes precedence over it when non-empty"),
    "moderation": inert("no content filter runs here, so `low` and `auto` both mean none"),
    "style": needs("style", "dall-e-3 style presets; describe the style in the prompt"),
    "complexity": needs("complexity", "no planning stage before the pipeline"),
    "frame_count": needs("gif", "GIF output only"),
    "frame_duration_ms": needs("gif", "GIF output only"),
    "svg": needs("svg", "SVG output only"),
}

IMAGE_EDITS: dict[str, Rule] = {
    **{name: rule for name, rule in IMAGES.items() if name not in ("moderation", "style")},
    "image": supported("one PNG, JPEG or WEBP file (4 MB, 16 M pixels); a list of one works, more is a 400"),
    "mask": supported("PNG with alpha, the image's size: fully transparent pixels are repainted (inpaint pipeline)"),
    "markup": needs("svg", "SVG edits only"),
    "size": supported("`WxH` within the model's bounds and multiple, or `auto` (the input image's size)"),
    "input_fidelity": supported("`high` keeps more of the input (strength 0.5), `low` the default (0.8; 1.0 with a mask)"),
    "stream": supported("SSE `image_edit.partial_image` / `image_edit.completed` events"),
}

VIDEOS: dict[str, Rule] = {
    "prompt": supported("up to 32000 characters"),
    "model": supported("a video model; may be left out when exactly one is served"),
    "seconds": supported("any duration; frames = seconds x fps snapped to the model's grid (1 + 4k for Wan), "
                         "the actual length in the answer's `seconds`"),
    "size": supported("`WxH` within the model's bounds and multiple (the model's default when left out)"),
    "input_reference": needs("image_to_video", "image-to-video is not served here"),
}

STREAM_OPTIONS: dict[str, Rule] = {
    "include_usage": supported("last chunk carries the usage"),
    "include_obfuscation": supported("random `obfuscation` padding on every chunk"),
}

# message fields, and the roles that may carry each (OpenAI's per-role message types)
MESSAGE: dict[str, Rule] = {
    "role": supported("system, developer, user, assistant; tool and function need tools"),
    "content": supported("a string or text parts; image parts need an image-input model, audio and file parts likewise"),
    "name": supported("passed to the chat template as the message's `name`"),
    "tool_calls": needs("tools", TOOLS_NOTE),
    "tool_call_id": needs("tools", TOOLS_NOTE),
    "function_call": needs("tools", TOOLS_NOTE),
    "audio": needs("audio", "no diffmesh model speaks"),
    "refusal": needs("refusal", "no diffmesh model refuses"),
}
ROLE_FIELDS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "audio", "function_call", "refusal", "tool_calls"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
ROLE_FEATURES = {"tool": "tools", "function": "tools"}

# content part types: the input modality each needs (None: any model), or a feature
CONTENT_PARTS: dict[str, Rule] = {
    "text": supported("the message text; `prompt_cache_breakpoint` is accepted (every full KV block is cached)"),
    "image_url": supported("models with image input only: JPEG/PNG/WEBP as a `data:` or SSRF-checked http(s) URL; "
                           "`detail` must be `auto`"),
    "input_audio": supported("models with audio input only"),
    "file": supported("models with file input only"),
    "refusal": needs("refusal", "no diffmesh model refuses"),
}
PART_MODALITIES = {"image_url": "image", "input_audio": "audio", "file": "file"}

TABLES = {"POST /v1/chat/completions": CHAT, "POST /v1/completions": COMPLETIONS, "POST /v1/images/generations": IMAGES,
          "POST /v1/images/edits": IMAGE_EDITS, "POST /v1/videos": VIDEOS,
          "chat `messages[]`": MESSAGE, "chat `messages[].content[]` part types": CONTENT_PARTS,
          "`stream_options`": STREAM_OPTIONS}
KIND_LABELS = {"supported": "yes", "inert": "accepted, no effect", "feature": "model feature"}


def feature_label(rule: Rule) -> str:
    if rule.kind != "feature":
        return ""
    return "per value" if callable(rule.feature) else f"`{rule.feature}`"


def markdown() -> str:
    """The supported-fields tables the README shows (tests/frontend/test_fields.py keeps them in sync)."""
    out = []
    for title, rules in TABLES.items():
        out += [f"**{title}**", "", "| field | status | feature | notes |", "|---|---|---|---|"]
        out += [f"| `{name}` | {KIND_LABELS[rule.kind]} | {feature_label(rule)} | {rule.note} |" for name, rule in sorted(rules.items())]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
