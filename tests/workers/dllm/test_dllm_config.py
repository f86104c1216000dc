"""Per-request parameter resolution: defaults, the block grid, and InvalidRequest with the offending field's path."""

from __future__ import annotations

import pytest

from protocol.errors import InvalidRequest
from protocol.work import DiffusionOptions, SamplingOptions
from workers.dllm.config import DllmConfig, ModelLimits, canvas_length, resolve_params

BLOCK_CAUSAL = ModelLimits(attention="block_causal", block_size=32, context_length=256)
FULL = ModelLimits(attention="full", block_size=32, context_length=256)


def resolve(max_tokens=64, limits=BLOCK_CAUSAL, prompt_len=10, sampling=None, **diffusion):
    return resolve_params(sampling or SamplingOptions(max_tokens=max_tokens), DiffusionOptions(**diffusion), prompt_len, limits)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"steps": 0}, "$.nvext.steps"),
        ({"block_length": 24}, "$.nvext.block_length"),  # 24 does not divide 64
        ({"threshold": 1.5}, "$.nvext.threshold"),
        ({"threshold": 0.0}, "$.nvext.threshold"),
        ({"max_tokens": 0}, "$.max_tokens"),
        ({"max_tokens": 250}, "$.max_tokens"),  # prompt + generation exceed the context
        ({"cfg_scale": -1.0}, "$.nvext.cfg_scale"),
        ({"threshold": 0.9, "remasking": "random"}, "$.nvext.remasking"),
        ({"use_cache": True, "limits": FULL}, "$.nvext.use_cache"),
        ({"use_cache": True, "cfg_scale": 1.0}, "$.nvext.use_cache"),
        ({"sampling": SamplingOptions(max_tokens=8, temperature=-1.0)}, "$.temperature"),
        ({"sampling": SamplingOptions(max_tokens=8, top_p=0.0)}, "$.top_p"),
    ],
)
def test_invalid_parameter_raises_invalid_request_naming_the_field(kwargs, param):
    with pytest.raises(InvalidRequest) as info:
        resolve(**kwargs)
    assert info.value.param == param
    assert info.value.code == "invalid_request"


def test_defaults_take_one_token_per_step_on_the_model_block_grid():
    params = resolve(max_tokens=50)
    assert params.block_length == 32
    assert params.steps == canvas_length(10, 50, 32, "block_causal") - 10  # every generated position, one per step
    assert params.use_cache and params.threshold is None


def test_canvas_grid_full_attention_starts_at_prompt_end_block_causal_at_zero():
    assert canvas_length(10, 64, 32, "full") == 74
    assert canvas_length(10, 64, 32, "block_causal") == 96
    assert canvas_length(10, 50, 32, "full") == 74  # generation rounded up to whole blocks


def test_cfg_and_full_attention_run_without_the_cache_by_default():
    assert not resolve(cfg_scale=1.0).use_cache
    assert not resolve(limits=FULL).use_cache


def test_engine_config_rejects_bad_values_with_name_and_value():
    with pytest.raises(ValueError, match="max_batch=0"):
        DllmConfig(model="m", max_batch=0)
    with pytest.raises(ValueError, match="default_threshold=2"):
        DllmConfig(model="m", default_threshold=2.0)
