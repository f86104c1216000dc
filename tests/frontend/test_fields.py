"""The field table covers exactly the openai package's request schemas, and the README shows it as it is."""

from __future__ import annotations

from pathlib import Path

from frontend import fields
from tests.frontend.openai_schema import (
    CHAT_TYPES, COMPLETION_TYPES, IMAGE_TYPES, _fields, content_part_types, message_roles, stream_option_paths,
)


def test_every_openai_request_field_has_exactly_one_rule():
    assert set(fields.CHAT) == _fields(*CHAT_TYPES)
    assert set(fields.COMPLETIONS) == _fields(*COMPLETION_TYPES)
    assert set(fields.IMAGES) == _fields(*IMAGE_TYPES)
    assert {f"stream_options.{name}" for name in fields.STREAM_OPTIONS} == stream_option_paths(CHAT_TYPES)
    assert stream_option_paths(COMPLETION_TYPES) == stream_option_paths(CHAT_TYPES)


def test_edit_and_video_tables_cover_the_openai_params():
    from openai.types import image_edit_params, video_create_params

    edit_types = (image_edit_params.ImageEditParamsNonStreaming, image_edit_params.ImageEditParamsStreaming)
    assert set(fields.IMAGE_EDITS) == _fields(*edit_types)
    assert set(fields.VIDEOS) == _fields(video_create_params.VideoCreateParams)


def test_message_roles_and_content_parts_match_openai():
    assert fields.ROLE_FIELDS == message_roles()
    assert set(fields.MESSAGE) == set().union(*message_roles().values())
    assert set(fields.CONTENT_PARTS) == content_part_types()


def test_readme_shows_the_field_table_as_generated():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert fields.markdown() in readme, "README is stale: paste `python -m frontend.fields` into it"


def test_unused_values_ask_for_nothing_and_others_name_their_feature():
    rule = fields.CHAT["presence_penalty"]
    assert rule.feature_for(0.0) is None and rule.feature_for(None) is None and rule.feature_for(0.5) == "penalties"
    assert fields.CHAT["logprobs"].feature_for(False) is None and fields.CHAT["logprobs"].feature_for(True) == "logprobs"
    assert fields.IMAGES["output_format"].feature_for("webp") is None and fields.IMAGES["output_format"].feature_for("gif") == "gif"
