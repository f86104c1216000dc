"""Schemathesis hooks for tests/frontend/test_fuzz_api.py: bodies name a served model, so fuzzing reaches the workers."""

from __future__ import annotations

import os

import schemathesis

SERVED = os.environ.get("DIFFMESH_FUZZ_MODEL", "mocker")


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"]:
        body["model"] = SERVED  # an empty name stays: the schema's minLength is fuzzed too
    return body
