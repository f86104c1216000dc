"""Train the demo dLLM: a block-causal LLaMA that answers the templated prompts of demo_tasks.py with readable text.

    python -m workers.dllm.train            # writes workers/dllm/demo_model (~25 min on 2 shared CPU cores), then scores it
    python -m workers.dllm.train --out DIR  # somewhere else

Deterministic (fixed seeds, one torch thread). Training mirrors the worker's block-diffusion decoding: the canvas is
chat-templated prompt + answer + <|eot_id|> + <|endoftext|> padding on a 32-token block grid; one block per example
is noised (its answer positions masked with probability t ~ U(0.05, 1)), the blocks before it stay clean, attention
is block-causal, and the loss is cross-entropy on the masked positions. The tokenizer carries an `<image>`
placeholder token (unused by the tasks) so a multimodal dLLM can reuse it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from pathlib import Path

from workers.dllm.demo_tasks import Example, held_out_examples, training_examples, vocabulary
from workers.dllm.tiny import DEMO_MODEL_DIR

IMAGE_TOKEN = "<image>"
BLOCK = 32
HIDDEN, LAYERS, HEADS = 96, 4, 4
STEPS, BATCH, LR = 2800, 48, 3e-3
TASK_WEIGHTS = {"repeat": 3.0, "name": 2.0, "pet": 2.0, "opposite": 1.0, "next": 1.0, "greeting": 0.5}
PAD_WEIGHT = 0.05


def chat_ids(tokenizer, prompt: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


def build_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, intermediate_size=2 * HIDDEN, max_position_embeddings=512,
        tie_word_embeddings=True,  # copying a prompt token is then "move its embedding": learnt much sooner
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id, dllm_attention="block_causal", dllm_block_size=BLOCK,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def encode_examples(tokenizer, examples: list[Example]) -> dict[str, list[tuple[list[int], int]]]:
    """Per task: (canvas ids without padding, prompt length) per example."""
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    by_task: dict[str, list[tuple[list[int], int]]] = {}
    for e in examples:
        prompt = chat_ids(tokenizer, e.prompt)
        by_task.setdefault(e.task, []).append((prompt + answer_ids(tokenizer, e.answer) + [eot], len(prompt)))
    return by_task


def make_batch(encoded: dict, rng: random.Random, tokenizer, length: int):
    """Inputs, targets and loss mask for one batch: one noised block per example, earlier blocks clean.

    Each row picks a task by TASK_WEIGHTS, then one of its lines, so the small tasks (15 name lines, the facts)
    are seen often enough next to the 600 repeat lines.
    """
    import torch

    eos, mask_id = tokenizer.eos_token_id, tokenizer.mask_token_id
    inputs, targets, loss_mask = [], [], []
    tasks = sorted(encoded)
    weights = [TASK_WEIGHTS.get(task, 1.0) for task in tasks]
    for _ in range(BATCH):
        ids, prompt_len = rng.choice(encoded[rng.choices(tasks, weights)[0]])
        canvas = (ids + [eos] * length)[:length]
        first_block = prompt_len // BLOCK
        block = rng.randint(first_block, length // BLOCK - 1)
        t = rng.uniform(0.05, 1.0)
        noisy, masked = list(canvas), [False] * length
        for pos in range(max(block * BLOCK, prompt_len), (block + 1) * BLOCK):
            if rng.random() < t:
                noisy[pos], masked[pos] = mask_id, True
        inputs.append(noisy)
        targets.append(canvas)
        loss_mask.append(masked)
    return torch.tensor(inputs), torch.tensor(targets), torch.tensor(loss_mask)


def loss_weights(targets, loss_mask, eos: int):
    """Padding EOS after the first is easy and plentiful: weight it down so the answer tokens drive training."""
    import torch

    after_first = torch.cumsum((targets == eos).long(), dim=1) > 1
    weights = torch.where(after_first & (targets == eos), PAD_WEIGHT, 1.0)
    return weights[loss_mask]


def block_causal_mask(length: int):
    import torch

    blocks = torch.arange(length) // BLOCK
    return (blocks[None, :] <= blocks[:, None])[None, None]  # [1, 1, T, T], True = attend


def train(out_dir: Path, steps: int = STEPS, log_every: int = 100) -> Path:
    import torch
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from workers.dllm.tiny import build_tokenizer

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    set_seed(0)
    staging = Path(tempfile.mkdtemp(prefix=".demo-dllm-"))
    tokenizer = build_tokenizer(staging, words=vocabulary(), extra_special=(IMAGE_TOKEN,))
    model = build_model(tokenizer)
    encoded = encode_examples(tokenizer, training_examples())
    length = 2 * BLOCK
    if max(len(ids) for lines in encoded.values() for ids, _ in lines) > length:
        raise ValueError("a training line does not fit two blocks")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps, pct_start=0.05)
    attention = block_causal_mask(length).expand(BATCH, 1, length, length)
    rng = random.Random(0)
    model.train()
    for step in range(steps):
        inputs, targets, loss_mask = make_batch(encoded, rng, tokenizer, length)
        logits = model(input_ids=inputs, attention_mask=attention).logits
        weights = loss_weights(targets, loss_mask, tokenizer.eos_token_id)
        losses = torch.nn.functional.cross_entropy(logits[loss_mask], targets[loss_mask], reduction="none")
        loss = (losses * weights).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            content = weights == 1.0
            accuracy = (logits[loss_mask].argmax(-1) == targets[loss_mask])[content].float().mean().item()
            print(f"step {step:5d}  loss {loss.item():.4f}  answer-token accuracy {accuracy:.3f}", flush=True)
    model.eval()
    model.save_pretrained(staging)
    publish_dir(staging)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.move(str(staging), out_dir)
    return out_dir


def publish_dir(directory: Path) -> None:
    """World-readable files (mkdtemp makes the staging directory private)."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def score(model_dir: Path, examples: list[Example], **diffusion) -> float:
    """Fraction of `examples` whose generated answer equals the expected one (greedy, through the worker's engine)."""
    from protocol.work import DiffusionOptions, SamplingOptions
    from workers.dllm.config import DllmConfig
    from workers.dllm.engine import DllmEngine

    engine = DllmEngine.from_pretrained(DllmConfig(model=str(model_dir), max_cache_blocks=0))
    correct = 0
    for i, example in enumerate(examples):
        prompt = chat_ids(engine.tokenizer, example.prompt)
        outs = list(engine.generate(f"s{i}", prompt, SamplingOptions(max_tokens=32), DiffusionOptions(**diffusion)))
        text = "".join(out.text for out in outs)
        correct += normalise(text) == normalise(example.answer)
    return correct / len(examples)


def normalise(text: str) -> str:
    return " ".join(text.replace(".", " .").replace("?", " ?").replace("!", " !").split())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    out = train(args.out, args.steps)
    print(f"held-out accuracy {score(out, held_out_examples()):.0%}, training accuracy "
          f"{score(out, training_examples()[::25]):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
