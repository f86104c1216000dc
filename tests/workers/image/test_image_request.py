"""Request validation and resolution against a model's limits (pure: no torch, no pipeline)."""

from __future__ import annotations

import pytest

from protocol.errors import InvalidRequest
from tests.workers.image.kit import image_request
from workers.image.families import family_for_class, quality_steps
from workers.image.request import ModelLimits, image_seeds, partial_steps, resolve_request

LIMITS = ModelLimits(default_width=512, default_height=512, min_side=128, max_side=1024, size_multiple=8,
                     default_steps=30, max_steps=50, default_guidance=7.5, supports_negative_prompt=True,
                     supports_step_cache=True, step_caches=("deepcache",))


def test_defaults_fill_size_steps_guidance_and_per_image_seeds():
    spec = resolve_request(image_request(num_inference_steps=None, n=3, seed=41), LIMITS, default_step_cache=False)
    assert (spec.width, spec.height, spec.steps, spec.guidance) == (512, 512, 30, 7.5)
    assert spec.seeds == (41, 42, 43)
    assert spec.negative_prompt == "" and spec.step_cache is None


def test_quality_is_a_steps_preset_capped_at_max_steps():
    steps = {q: resolve_request(image_request(num_inference_steps=None, quality=q), LIMITS, False).steps
             for q in ("low", "medium", "auto", "high")}
    assert steps == {"low": 15, "medium": 30, "auto": 30, "high": 45}
    capped = ModelLimits(**{**LIMITS.__dict__, "max_steps": 40})
    assert resolve_request(image_request(num_inference_steps=None, quality="hd"), capped, False).steps == 40


def test_explicit_steps_override_quality_and_worker_step_cache_default_applies():
    spec = resolve_request(image_request(num_inference_steps=12, quality="low"), LIMITS, default_step_cache=True)
    assert spec.steps == 12 and spec.step_cache == "deepcache"
    assert resolve_request(image_request(step_cache=False), LIMITS, default_step_cache=True).step_cache is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (dict(width=100, height=512), "$.size"),
        (dict(width=2048, height=512), "$.size"),
        (dict(width=64, height=64), "$.size"),
        (dict(width=512), "$.size"),
        (dict(n=0), "$.n"),
        (dict(n=11), "$.n"),
        (dict(num_inference_steps=51), "$.nvext.num_inference_steps"),
        (dict(num_inference_steps=0), "$.nvext.num_inference_steps"),
        (dict(guidance_scale=-1.0), "$.nvext.guidance_scale"),
        (dict(output_format="gif"), "$.output_format"),
        (dict(output_format="jpeg", background="transparent"), "$.background"),
        (dict(output_format="webp", output_compression=101), "$.output_compression"),
        (dict(response_format="file"), "$.response_format"),
        (dict(quality="ultra"), "$.quality"),
        (dict(prompt=""), "$.prompt"),
        (dict(stream=True, partial_images=4), "$.partial_images"),
        (dict(seed=-1), "$.seed"),
    ],
)
def test_each_invalid_field_is_named(fields, param):
    with pytest.raises(InvalidRequest) as info:
        resolve_request(image_request(**fields), LIMITS, default_step_cache=False)
    assert info.value.param == param


def test_unsupported_negative_prompt_and_step_cache_are_rejected():
    bare = ModelLimits(**{**LIMITS.__dict__, "supports_negative_prompt": False, "supports_step_cache": False,
                          "step_caches": ()})
    with pytest.raises(InvalidRequest, match="negative_prompt"):
        resolve_request(image_request(negative_prompt="blurry"), bare, False)
    with pytest.raises(InvalidRequest) as info:
        resolve_request(image_request(step_cache=True), bare, False)
    assert info.value.param == "$.nvext.step_cache"
    assert resolve_request(image_request(), bare, default_step_cache=True).step_cache is None  # worker default: best effort


def test_step_cache_names_a_kind_the_model_takes():
    dit = ModelLimits(**{**LIMITS.__dict__, "step_caches": ("first_block", "teacache")})
    assert resolve_request(image_request(step_cache=True), dit, False).step_cache == "first_block"
    assert resolve_request(image_request(step_cache="teacache"), dit, False).step_cache == "teacache"
    with pytest.raises(InvalidRequest) as info:
        resolve_request(image_request(step_cache="deepcache"), dit, False)
    assert info.value.param == "$.nvext.step_cache"


def test_partial_steps_are_evenly_spaced_and_before_the_last_step():
    assert partial_steps(20, 3) == (4, 9, 14)
    assert partial_steps(4, 3) == (0, 1, 2)
    assert partial_steps(2, 3) == (0,)
    assert partial_steps(1, 2) == () and partial_steps(10, 0) == ()


def test_partials_only_when_streaming():
    spec = resolve_request(image_request(stream=True, partial_images=2, num_inference_steps=9), LIMITS, False)
    assert spec.partial_steps == (2, 5) and spec.is_streaming


def test_random_seeds_differ_and_wrap_at_2_63():
    assert image_seeds(None, 1) != image_seeds(None, 1)
    assert image_seeds(2**63 - 1, 2) == (2**63 - 1, 0)


def test_batch_key_separates_per_batch_caches_but_not_per_image_ones():
    a = resolve_request(image_request(step_cache=True), LIMITS, False)
    b = resolve_request(image_request(step_cache=True), LIMITS, False)
    assert a.batch_key(is_cache_batch_invariant=True) == b.batch_key(is_cache_batch_invariant=True)
    assert a.batch_key(is_cache_batch_invariant=False) != b.batch_key(is_cache_batch_invariant=False)


def test_unknown_pipeline_error_names_the_supported_families():
    with pytest.raises(InvalidRequest) as info:
        family_for_class("KandinskyPipeline")
    assert "stable-diffusion (StableDiffusionPipeline)" in info.value.message and "flux (FluxPipeline)" in info.value.message
    assert family_for_class("StableDiffusionXLPipeline").name == "stable-diffusion-xl"
    assert quality_steps(4, "low") == 2 and quality_steps(1, "low") == 1
