"""dLLM decoding benchmark: reference LLaDA vs threshold decoding, block KV cache, both, and a warm prefix cache.

One run, one table, baseline included: tokens/s, forward passes per token and agreement of each variant's tokens
with the reference (LLaDA low-confidence remasking, steps = gen_length, no cache), per model and prompt length.
Then time to first token for a long shared prompt with a cold and a warm cross-request prefix cache.

Models (all tiny LLaDA2-shaped LLaMA denoisers with block-causal attention, loaded through from_pretrained):
- `random`: random weights, output head scaled (peaked logits). Its confidence is not evidence of anything, so
  parallel commits drift from the reference, and random weights collapse onto a few ids (`distinct ids`).
- `copy`: one layer with hand-set weights that predicts the token 8 positions back; its confidence is ~1 exactly
  when the source is visible, the property threshold decoding relies on in trained dLLMs.
- `demo`: the trained demo model `diffmesh up` serves (workers/dllm/train.py), on the held-out templated prompts of
  workers/dllm/demo_tasks.py, decoding to the answer's end (EOS), with how many answers are right.

    python bench/bench_dllm.py            # full run (~2-3 min on one CPU core)
    python bench/bench_dllm.py --quick    # short run
    python bench/bench_dllm.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.tables import scratch_dir  # noqa: E402
from protocol.work import DiffusionOptions, SamplingOptions  # noqa: E402
from workers.dllm.config import DllmConfig  # noqa: E402
from workers.dllm.engine import DllmEngine  # noqa: E402
from workers.dllm.demo_tasks import held_out_examples  # noqa: E402
from workers.dllm.tiny import DEMO_MODEL_DIR, TinySpec, ensure_tiny_dllm  # noqa: E402
from workers.dllm.train import chat_ids, normalise  # noqa: E402


@dataclass
class Row:
    model: str
    prompt_tokens: int
    variant: str
    tokens_per_s: float
    speedup: float  # tokens/s over the reference
    forward_passes: int
    passes_per_token: float
    agreement: float  # fraction of positions equal to the reference's tokens
    distinct_tokens: int  # how varied the output is: random weights often collapse onto a few ids


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run: fewer tokens and repeats")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--sections", default="random:64,random:512,copy:64",
                        help="model:prompt_tokens, comma-separated ('' = only the demo model's table)")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--head-scale", type=float, default=100.0, help="random model's output head multiplier")
    parser.add_argument("--ttft-prompt-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each variant reports its best round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny models: 1 is fastest)")
    parser.add_argument("--cache-dir", help="where the tiny models are built (default: a temporary directory)")
    parser.add_argument("--no-demo", dest="demo", action="store_false", help="skip the trained demo model's table")
    args = parser.parse_args(argv)
    if args.quick:
        args.gen_length, args.repeats, args.ttft_prompt_tokens = 64, 2, 512
    return args


def build_engines(args, model: str, cache_dir: str) -> tuple[DllmEngine, DllmEngine]:
    """(no cross-request cache, with one): the first keeps the variants independent of each other."""
    context = max(2048, args.ttft_prompt_tokens + 4 * args.block_length)
    spec = TinySpec(block_size=args.block_length, context_length=context, head_scale=args.head_scale)
    if model == "copy":
        spec = TinySpec(arch="copy", block_size=args.block_length, context_length=context)
    config = dict(model=str(ensure_tiny_dllm(cache_dir, spec)), max_forward_passes=4 * args.gen_length)
    return DllmEngine.from_pretrained(DllmConfig(max_cache_blocks=0, **config)), DllmEngine.from_pretrained(DllmConfig(**config))


def prompt_of(engine: DllmEngine, num_tokens: int, seed: int) -> list[int]:
    words = torch.randint(9, engine.vocab_size, (num_tokens,), generator=torch.Generator().manual_seed(seed))
    return words.tolist()


def run_once(engine: DllmEngine, prompt: list[int], gen_length: int, options: DiffusionOptions,
             ignore_eos: bool = True) -> tuple[float, list[int], int, float]:
    """(seconds, tokens, forward passes, seconds to the first streamed token)."""
    sampling = SamplingOptions(max_tokens=gen_length, ignore_eos=ignore_eos, seed=0)
    start = time.perf_counter()
    first = None
    tokens: list[int] = []
    for out in engine.generate("bench", prompt, sampling, options):
        if out.token_ids and first is None:
            first = time.perf_counter() - start
        tokens.extend(out.token_ids)
        if out.finished:
            return time.perf_counter() - start, tokens, out.usage.forward_passes, first or 0.0
    raise RuntimeError("stream ended without a final output")


def throughput_rows(args, model: str, engines, prompt_tokens: int) -> list[Row]:
    """All variants, interleaved round by round so a noisy neighbour hits them alike; best of `repeats` rounds."""
    cold, prefix = engines
    prompt = prompt_of(cold, prompt_tokens, seed=1)
    g, block, tau = args.gen_length, args.block_length, args.threshold
    variants = [
        ("reference LLaDA (steps = gen_length)", cold, DiffusionOptions(steps=g, block_length=block, use_cache=False)),
        (f"threshold {tau}", cold, DiffusionOptions(block_length=block, threshold=tau, use_cache=False)),
        ("block KV cache", cold, DiffusionOptions(steps=g, block_length=block, use_cache=True)),
        (f"threshold {tau} + block KV cache", cold, DiffusionOptions(block_length=block, threshold=tau, use_cache=True)),
        ("both + warm prefix cache", prefix, DiffusionOptions(block_length=block, threshold=tau, use_cache=True)),
    ]
    run_once(prefix, prompt, g, variants[-1][2])  # fills the prefix cache (and warms the allocator)
    seconds: list[list[float]] = [[] for _ in variants]
    results: list[tuple[list[int], int]] = []
    for _ in range(args.repeats):
        results = []
        for i, (_, engine, options) in enumerate(variants):
            elapsed, tokens, passes, _ = run_once(engine, prompt, g, options)
            seconds[i].append(elapsed)
            results.append((tokens, passes))
    reference = results[0][0]
    rows: list[Row] = []
    for (name, _, _), times, (tokens, passes) in zip(variants, seconds, results):
        rate = len(tokens) / min(times)
        agreement = sum(x == y for x, y in zip(tokens, reference)) / len(reference)
        speedup = rate / (rows[0].tokens_per_s if rows else rate)
        rows.append(Row(model, prompt_tokens, name, rate, speedup, passes, passes / len(tokens), agreement, len(set(tokens))))
    return rows


def demo_rows(args) -> list[dict]:
    """The trained model on every held-out prompt, each variant timed over the whole set (best of `repeats`)."""
    engine = DllmEngine.from_pretrained(DllmConfig(model=str(DEMO_MODEL_DIR), max_cache_blocks=0))
    examples = held_out_examples()
    prompts = [chat_ids(engine.tokenizer, e.prompt) for e in examples]
    tau = args.threshold
    variants = [("reference LLaDA (one token per step)", DiffusionOptions(use_cache=False)),
                (f"threshold {tau}", DiffusionOptions(threshold=tau, use_cache=False)),
                ("block KV cache", DiffusionOptions(use_cache=True)),
                (f"threshold {tau} + block KV cache", DiffusionOptions(threshold=tau, use_cache=True))]
    best = [float("inf")] * len(variants)
    outputs: list[list[tuple[list[int], int]]] = []
    for _ in range(args.repeats):
        outputs = []
        for i, (_, options) in enumerate(variants):
            started = time.perf_counter()
            outputs.append([run_once(engine, p, 32, options, ignore_eos=False)[1:3] for p in prompts])
            best[i] = min(best[i], time.perf_counter() - started)
    reference = [tokens for tokens, _ in outputs[0]]
    rows = []
    for (name, _), seconds, results in zip(variants, best, outputs):
        tokens = sum(len(t) for t, _ in results)
        passes = sum(p for _, p in results)
        same = sum(x == y for (t, _), ref in zip(results, reference) for x, y in zip(t, ref))
        correct = sum(normalise(engine.tokenizer.decode(t, skip_special_tokens=True)) == normalise(e.answer)
                      for (t, _), e in zip(results, examples))
        rows.append({"variant": name, "tokens_per_s": tokens / seconds, "forward_passes": passes,
                     "passes_per_token": passes / tokens, "agreement": same / sum(len(r) for r in reference),
                     "correct": correct / len(examples), "prompts": len(examples)})
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    return rows


def print_demo(rows: list[dict]) -> None:
    print(f"\ntrained demo dLLM ({DEMO_MODEL_DIR.name}), {rows[0]['prompts']} held-out templated prompts, max_tokens 32, "
          "to the answer's end:")
    print("| variant | tokens/s | speedup | forward passes | passes/token | agreement | held-out answers right |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['tokens_per_s']:.0f} | {r['speedup']:.1f}x | {r['forward_passes']} "
              f"| {r['passes_per_token']:.3f} | {100 * r['agreement']:.1f}% | {100 * r['correct']:.0f}% |")


def ttft(args, engines) -> dict:
    """Time to first token for a long prompt: empty prefix cache vs the prompt already cached."""
    _, engine = engines
    prompt = prompt_of(engine, args.ttft_prompt_tokens, seed=2)
    options = DiffusionOptions(block_length=args.block_length, threshold=args.threshold, use_cache=True)
    cold, warm = [], []
    run_once(engine, prompt, args.block_length, options)  # warm up kernels and allocator
    for _ in range(max(5, args.repeats)):
        engine.clear_cache()
        cold.append(run_once(engine, prompt, args.block_length, options)[3])
        warm.append(run_once(engine, prompt, args.block_length, options)[3])
    return {"prompt_tokens": len(prompt), "cold_ms": 1000 * min(cold), "warm_ms": 1000 * min(warm), "reduction": min(cold) / min(warm)}


def print_tables(args, rows: list[Row], first_token: dict) -> None:
    print(f"tiny dLLMs (h64, block-causal), gen {args.gen_length}, block {args.block_length}, random head x{args.head_scale:g}, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeats} interleaved rounds\n")  # fmt: skip
    print("| model | prompt | variant | tokens/s | speedup | forward passes | passes/token | agreement | distinct ids |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.model} | {r.prompt_tokens} | {r.variant} | {r.tokens_per_s:.0f} | {r.speedup:.1f}x | {r.forward_passes} "
              f"| {r.passes_per_token:.3f} | {100 * r.agreement:.1f}% | {r.distinct_tokens} |")  # fmt: skip
    print(f"\ntime to first token, {first_token['prompt_tokens']}-token shared prompt (random model, threshold + block KV cache):")
    print("| prefix cache | TTFT |\n|---|---|")
    print(f"| cold | {first_token['cold_ms']:.1f} ms |\n| warm | {first_token['warm_ms']:.1f} ms ({first_token['reduction']:.1f}x less) |")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cache_dir = scratch_dir(args.cache_dir, "bench-dllm-")
    sections = [(model, int(n)) for model, n in (part.split(":") for part in args.sections.split(",") if part.strip())]
    engines = {model: build_engines(args, model, cache_dir) for model in dict.fromkeys(m for m, _ in sections)}
    rows = [row for model, n in sections for row in throughput_rows(args, model, engines[model], n)]
    first_token = ttft(args, engines.get("random") or next(iter(engines.values()))) if engines else None
    demo = demo_rows(args) if args.demo else []
    if args.json:
        print(json.dumps({"config": vars(args), "variants": [asdict(r) for r in rows], "ttft": first_token,
                          "demo": demo}, indent=2))
    else:
        if first_token is not None:
            print_tables(args, rows, first_token)
        if demo:
            print_demo(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
