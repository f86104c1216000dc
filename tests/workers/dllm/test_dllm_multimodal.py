"""Images in dLLM prompts: real tiny CLIP embeddings at the placeholders (inputs_embeds), the prefix cache and KV
events keyed by mm_hash (same image at the same place hits, a different image misses), and the checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from protocol.errors import EngineError, InvalidRequest
from protocol.events import KvStored
from protocol.kv import MmObject, local_block_hashes, sequence_block_hashes
from protocol.work import SamplingOptions
from workers.dllm.tiny import IMAGE_TOKEN
from workers.encode.config import EncodeConfig
from workers.encode.engine import EncodeEngine

BLOCK = 8
SAMPLING = SamplingOptions(max_tokens=16, ignore_eos=True, seed=3)


@pytest.fixture(scope="module")
def mm_dir(mm_dllm_dir):
    return mm_dllm_dir


@pytest.fixture(scope="module")
def encoder(clip_dir):
    return EncodeEngine(EncodeConfig(model=str(clip_dir)))


@pytest.fixture(scope="module")
def embeddings(encoder):
    red, blue = (Image.new("RGB", (32, 32), rgb) for rgb in ((220, 20, 20), (20, 20, 220)))
    return dict(zip(("red", "blue"), encoder.encode([red, blue])))


@pytest.fixture(scope="module")
def layout(mm_dir):
    """(prompt ids, image placeholder offsets): 12 text tokens, 16 placeholders, 5 text tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(mm_dir)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    before = tokenizer.encode("hello world what is in this red or blue picture", add_special_tokens=False)[:12]
    after = tokenizer.encode("tell me the colour", add_special_tokens=False)[:5]
    assert len(before) == 12 and image_id not in before
    return before + [image_id] * 16 + after, (12, 28)


def images(layout, embedding, mm_hash):
    return [(MmObject(mm_hash=mm_hash, offsets=[layout[1]]), embedding)]


def run(engine, layout, image=(), sampling=SAMPLING):
    return list(engine.generate("r", layout[0], sampling, images=image))


def tokens(outs) -> list[int]:
    return [t for out in outs for t in out.token_ids]


def test_the_card_of_a_checkpoint_with_a_placeholder_says_it_takes_images(make_engine, mm_dir):
    engine = make_engine(mm_dir, vision_encoder="tiny-clip")
    spec = engine.images
    assert (spec.token, spec.num_tokens, spec.hidden_size, spec.encoder) == (IMAGE_TOKEN, 16, 64, "tiny-clip")
    assert make_engine(mm_dir).images is None  # no encoder named: text only


def test_embeddings_replace_the_placeholder_inputs(make_engine, mm_dir, layout, embeddings):
    engine = make_engine(mm_dir, vision_encoder="tiny-clip", max_cache_blocks=0)
    red = tokens(run(engine, layout, images(layout, embeddings["red"], 1)))
    assert red == tokens(run(engine, layout, images(layout, embeddings["red"], 1)))  # deterministic
    assert red != tokens(run(engine, layout, images(layout, embeddings["blue"], 2)))
    assert red != tokens(run(engine, layout))  # bare placeholder embeddings are not the image


def test_inputs_embeds_path_equals_the_token_path_when_rows_are_the_token_embeddings(make_engine, mm_dir, layout):
    engine = make_engine(mm_dir, vision_encoder="tiny-clip", max_cache_blocks=0)
    table = engine.denoiser.model.get_input_embeddings().weight.detach()
    same = table[torch.tensor(layout[0][12:28])]  # exactly what the placeholders embed to
    assert tokens(run(engine, layout, images(layout, same, 5))) == tokens(run(engine, layout))


def test_same_image_same_place_hits_the_prefix_cache_and_another_image_misses_its_blocks(make_engine, mm_dir, layout,
                                                                                         embeddings):
    events = []
    engine = make_engine(mm_dir, vision_encoder="tiny-clip")
    engine.set_kv_sink(events.append)
    red, blue = images(layout, embeddings["red"], 0xAAAA), images(layout, embeddings["blue"], 0xBBBB)
    cold = run(engine, layout, red)
    warm = run(engine, layout, red)
    other = run(engine, layout, blue)
    full = len(layout[0]) // BLOCK * BLOCK  # 32: blocks 0-3; the image covers positions 12-27 (blocks 1-3)
    assert [o[-1].usage.cached_tokens for o in (cold, warm, other)] == [0, full, BLOCK]  # blue keeps block 0 only
    assert tokens(warm) == tokens(cold)  # a hit is exact
    _, red_chain = sequence_block_hashes(np.asarray(layout[0]), BLOCK, [red[0][0]])
    _, text_chain = sequence_block_hashes(np.asarray(layout[0]), BLOCK)
    stored = [b.block_hash for e in events if isinstance(e, KvStored) for b in e.blocks]
    assert red_chain[:4] == stored[:4]  # what the router hashes for this prompt and image
    assert red_chain[0] == text_chain[0] and set(red_chain[1:4]).isdisjoint(text_chain)


def test_a_chain_continued_past_an_image_hashes_like_the_whole_prompt():
    prompt = list(range(40))
    image = [MmObject(mm_hash=7, offsets=[(10, 20)])]
    whole = local_block_hashes(prompt, BLOCK, image)
    assert local_block_hashes(prompt[16:], BLOCK, image, offset=16) == whole[2:]


def test_batched_requests_with_different_images_match_their_solo_runs(make_engine, mm_dir, layout, embeddings):
    solo = make_engine(mm_dir, vision_encoder="tiny-clip", max_cache_blocks=0)
    pictures = {name: images(layout, embeddings[name], i) for i, name in enumerate(("red", "blue"))}
    expected = {name: tokens(run(solo, layout, image)) for name, image in pictures.items()}
    engine = make_engine(mm_dir, vision_encoder="tiny-clip", max_cache_blocks=0)
    outputs = {name: [] for name in pictures}
    for name, image in pictures.items():
        engine.submit(name, layout[0], SAMPLING, on_output=outputs[name].append, images=image)
    while engine.step():
        pass
    assert {name: tokens(outs) for name, outs in outputs.items()} == expected
    assert engine.denoiser.num_forwards == max(outs[-1].usage.forward_passes for outs in outputs.values())


def test_placeholders_and_embeddings_must_agree(make_engine, mm_dir, tiny_dir, layout, embeddings):
    engine = make_engine(mm_dir, vision_encoder="tiny-clip")
    red = embeddings["red"]
    with pytest.raises(InvalidRequest, match="are not all image placeholders"):
        run(engine, layout, [(MmObject(mm_hash=1, offsets=[(4, 20)]), red)])
    with pytest.raises(InvalidRequest, match="outside the prompt"):
        run(engine, layout, [(MmObject(mm_hash=1, offsets=[(30, 46)]), red)])
    with pytest.raises(EngineError, match="does not fit 16 placeholders of hidden size 64"):
        run(engine, layout, images(layout, red[:, :32], 1))
    with pytest.raises(InvalidRequest, match="takes text only"):
        run(make_engine(tiny_dir), layout, images(layout, red, 1))


async def test_the_worker_reads_embeddings_off_the_request_and_its_card_says_text_and_image(mm_dir, layout, embeddings):
    from protocol.kv import tokens_to_bytes
    from protocol.work import Final, GenerateRequest, TensorData
    from workers.contract import RequestContext
    from workers.dllm.config import DllmConfig
    from workers.dllm.engine import DllmEngine
    from workers.dllm.worker import DllmWorker
    from workers.tensors import tensor_to_bytes

    engine = DllmEngine.from_pretrained(DllmConfig(model=str(mm_dir), served_model_name="mm", vision_encoder="tiny-clip"))
    worker = DllmWorker(engine)
    card = worker.model_card()
    assert card.input_modalities == ["text", "image"] and card.vision_encoder == "tiny-clip"
    assert (card.image_token, card.num_image_tokens) == (IMAGE_TOKEN, 16) and card.image_token_id == layout[0][12]
    assert card.health_check.body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    dtype, shape, data = tensor_to_bytes(embeddings["red"])
    request = GenerateRequest(request_id="mm", model="mm", token_ids=tokens_to_bytes(layout[0]), sampling=SAMPLING,
                              mm_objects=[MmObject(mm_hash=9, offsets=[layout[1]])],
                              mm_embeddings=[TensorData(dtype=dtype, shape=shape, data=data)], stream=False)
    (final,) = [out async for out in worker.generate(request, RequestContext("mm", "w", None))]
    assert isinstance(final, Final) and final.usage.completion_tokens == 16
    bad = GenerateRequest(request_id="b", model="mm", token_ids=request.token_ids, sampling=SAMPLING,
                          mm_objects=request.mm_objects, mm_embeddings=[TensorData(dtype=dtype, shape=[16, 64], data=b"x")])
    with pytest.raises(InvalidRequest, match="do not hold a float32 tensor"):
        [out async for out in worker.generate(bad, RequestContext("b", "w", None))]
    engine.stop()
