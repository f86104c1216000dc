"""The trained demo dLLM `diffmesh up` serves: readable answers to held-out templated prompts, loadable like any checkpoint."""

from __future__ import annotations

import argparse

import openai
import pytest

from protocol.work import DiffusionOptions, SamplingOptions
from workers.dllm.config import DllmConfig
from workers.dllm.demo_tasks import held_out_examples, training_examples
from workers.dllm.engine import DllmEngine
from workers.dllm.tiny import DEMO_MODEL_DIR
from workers.dllm.train import chat_ids, normalise, train
from workers.dllm.worker import DllmWorker, add_arguments, config_from_args


@pytest.fixture(scope="module")
def demo_engine():
    return DllmEngine.from_pretrained(DllmConfig(model=str(DEMO_MODEL_DIR), max_cache_blocks=0))


def answer(engine: DllmEngine, prompt: str, **diffusion) -> str:
    return run(engine, prompt, **diffusion)[0]


def run(engine: DllmEngine, prompt: str, **diffusion) -> tuple[str, int]:
    """(answer text, forward passes) with the worker's default decoding unless `diffusion` says otherwise."""
    outs = list(engine.generate("demo", chat_ids(engine.tokenizer, prompt), SamplingOptions(max_tokens=32),
                                DiffusionOptions(**diffusion)))
    return "".join(out.text for out in outs), outs[-1].usage.forward_passes


def test_held_out_prompts_are_answered_correctly_at_least_80_percent_also_with_threshold_decoding(demo_engine):
    examples = held_out_examples()
    assert not {e.prompt for e in examples} & {e.prompt for e in training_examples()}  # truly held out
    reference = [run(demo_engine, e.prompt, use_cache=False) for e in examples]  # one token per step
    fast = [run(demo_engine, e.prompt, threshold=0.9, use_cache=True) for e in examples]
    for results in (reference, fast):
        correct = [normalise(text) == normalise(e.answer) for (text, _), e in zip(results, examples)]
        assert sum(correct) / len(correct) >= 0.8, [e.prompt for e, ok in zip(examples, correct) if not ok]
    assert sum(a == b for (a, _), (b, _) in zip(reference, fast)) / len(examples) >= 0.9  # the same answers ...
    assert sum(p for _, p in fast) * 2 < sum(p for _, p in reference)  # ... in under half the forward passes


def test_demo_tokenizer_has_one_image_placeholder_token(demo_engine):
    tokenizer = demo_engine.tokenizer
    ids = tokenizer("the <image> is red", add_special_tokens=False)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert image_id != tokenizer.unk_token_id and ids.count(image_id) == 1 and len(ids) == 4
    assert "<image>" in tokenizer.all_special_tokens


def test_the_worker_serves_the_shipped_demo_with_tiny_demo(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    demo = config_from_args(parser.parse_args(["--model-cache-dir", str(tmp_path), "--tiny", "demo"]), env={})
    assert demo.model == str(DEMO_MODEL_DIR) and demo.served_model_name == "demo-dllm" and not list(tmp_path.iterdir())


def test_the_training_script_writes_a_loadable_checkpoint(tmp_path):
    out = train(tmp_path / "demo", steps=2, log_every=1)
    engine = DllmEngine.from_pretrained(DllmConfig(model=str(out), max_cache_blocks=0))
    assert engine.attention == "block_causal" and engine.block_size == 32
    assert run(engine, "hi")[1] >= 1  # two steps of training: noise (or nothing), but it runs end to end


async def test_openai_chat_answers_a_held_out_prompt(mesh):
    await mesh.start_frontend()
    await mesh.add_worker(DllmWorker(DllmEngine.from_pretrained(DllmConfig(model=str(DEMO_MODEL_DIR),
                                                                           served_model_name="tiny-dllm"))))
    await mesh.wait_models("tiny-dllm", 1)
    client = openai.AsyncOpenAI(base_url=f"{mesh.url}/v1", api_key="unused", max_retries=0)
    chat = await client.chat.completions.create(model="tiny-dllm", max_tokens=32,
                                                messages=[{"role": "user", "content": "i have a pink dog. what color is my dog?"}])
    await client.close()
    assert normalise(chat.choices[0].message.content) == normalise("your dog is pink.")
    assert chat.choices[0].finish_reason == "stop"
