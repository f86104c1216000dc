"""The tiny models `diffmesh up`, the tests and the benchmark build offline."""

from __future__ import annotations

from protocol.work import DiffusionOptions, SamplingOptions
from workers.dllm.tiny import TinySpec, ensure_tiny_dllm
from workers.modelcache import BUILT_MARKER


def test_ensure_tiny_dllm_builds_once_and_reuses_the_directory(tmp_path):
    first = ensure_tiny_dllm(tmp_path, TinySpec(block_size=8, context_length=128))
    stamp = (first / BUILT_MARKER).stat().st_mtime_ns
    again = ensure_tiny_dllm(tmp_path, TinySpec(block_size=8, context_length=128))
    assert again == first and (again / BUILT_MARKER).stat().st_mtime_ns == stamp
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in first.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging directory left behind


def test_copy_model_threshold_decoding_matches_the_reference_with_far_fewer_passes(model_cache, make_engine):
    engine = make_engine(ensure_tiny_dllm(model_cache, TinySpec(arch="copy", block_size=32, context_length=512)), max_cache_blocks=0)
    prompt = list(range(20, 60))
    options = SamplingOptions(max_tokens=64, ignore_eos=True)

    def run(**diffusion):
        outs = list(engine.generate("c", prompt, options, DiffusionOptions(**diffusion)))
        return [t for out in outs for t in out.token_ids], outs[-1].usage.forward_passes

    reference, reference_passes = run(use_cache=False)
    fast, fast_passes = run(threshold=0.9, use_cache=True)
    assert reference == [prompt[-8 + i % 8] for i in range(64)]  # it copies the token 8 positions back
    assert fast == reference
    assert reference_passes >= 64 and fast_passes <= 12  # whole dependency levels of 8 tokens per pass
