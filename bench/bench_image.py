"""Image worker benchmark: batching at 8 concurrent requests and step caching, baselines measured in the same run.

One table. Batching: images/s for 8 concurrent single-image requests with --max-batch 8 (one pipeline call) vs
--max-batch 1 (one call each), and whether every batched image is byte-identical to its solo run. Step cache:
seconds per image with the cache vs without at the same seed, the PSNR of the cached image against the uncached one,
and how many denoiser calls ran the deep/tail blocks. Models: the trained demo shapes model `diffmesh up` serves
(`demo_model`, whose images mean something) and the repo's tiny random pipelines (built on first run), whose images
are noise-like, so there PSNR measures drift, not beauty. Rounds alternate baseline and
variant and each reports its median, which damps the noise of a shared CPU.

    python bench/bench_image.py --threads 1  # full run (~5 min on 2 shared CPU cores)
    python bench/bench_image.py --quick    # short run
    python bench/bench_image.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.tables import Row, print_table, scratch_dir  # noqa: E402
from protocol.work import ImageOutput, ImageRequest  # noqa: E402
from workers.image.engine import EngineConfig, ImageEngine  # noqa: E402
from workers.image.storage import StorageConfig  # noqa: E402
from workers.image.tiny import DEMO_MODEL_DIR, ensure_tiny_image  # noqa: E402

NUM_CONCURRENT = 8


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps for the batching rows")
    parser.add_argument("--cache-steps", type=int, default=30, help="denoising steps for the step-cache rows")
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/variant rounds")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cache-dir", help="where the tiny pipelines are built (default: a temporary directory)")
    parser.add_argument("--scenarios", default="batching,cache", help="which rows: batching, cache (comma-separated)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.cache_steps, args.rounds = 8, 12, 2
    return args


async def run_request(engine: ImageEngine, request: ImageRequest) -> bytes:
    data = b""
    async for out in engine.generate(request):
        if isinstance(out, ImageOutput) and out.partial_index is None:
            data = out.data
    return data


def make_request(i: int, steps: int, step_cache: bool | str = False) -> ImageRequest:
    return ImageRequest(request_id=f"bench-{i}-{time.monotonic_ns()}", model="bench", prompt=f"a red cat number {i}",
                        seed=100 + i, num_inference_steps=steps, step_cache=step_cache)


async def start_engine(model_dir: Path, **overrides) -> ImageEngine:
    storage = StorageConfig(url=str(scratch_dir(None, "bench-image-media-")))  # b64 runs write nothing; kept off ~/.cache
    engine = ImageEngine(EngineConfig(model=str(model_dir), max_steps=200, storage=storage, **overrides))
    await engine.start()
    await run_request(engine, make_request(0, 2))  # warm-up
    return engine


async def concurrent_round(engine: ImageEngine, steps: int) -> tuple[float, list[bytes]]:
    started = time.perf_counter()
    images = await asyncio.gather(*(run_request(engine, make_request(i, steps)) for i in range(NUM_CONCURRENT)))
    return NUM_CONCURRENT / (time.perf_counter() - started), images


async def bench_batching(model_dir: Path, args, batch_invariant: bool | None = None) -> Row:
    batched = await start_engine(model_dir, max_batch=NUM_CONCURRENT, batch_invariant=batch_invariant)
    solo = await start_engine(model_dir, max_batch=1, batch_invariant=batch_invariant)
    rates = {"batched": [], "solo": []}
    is_identical = True
    for _ in range(args.rounds):
        rate_b, images_b = await concurrent_round(batched, args.steps)
        rate_s, images_s = await concurrent_round(solo, args.steps)
        rates["batched"].append(rate_b)
        rates["solo"].append(rate_s)
        is_identical &= images_b == images_s
    await batched.stop()
    await solo.stop()
    b, s = statistics.median(rates["batched"]), statistics.median(rates["solo"])
    label = "batching, 8 concurrent" + ("" if batch_invariant is not False else " (no invariant kernels)")
    return Row(label, model_dir.name, f"{s:.2f} img/s (max-batch 1)", f"{b:.2f} img/s (max-batch 8)", b / s,
               f"bytes == solo: {'yes' if is_identical else 'NO'}", ">= 1.5x", b / s >= 1.5)


def psnr(a: bytes, b: bytes) -> float:
    x, y = (np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), dtype=np.float64) for d in (a, b))
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def deep_computes(engine: ImageEngine, kind: str) -> int:
    cache = engine.loaded.step_caches[kind]
    return cache.num_full if hasattr(cache, "num_full") else cache.num_tail_runs


async def bench_step_cache(model_dir: Path, args, label: str, kind: str) -> Row:
    engine = await start_engine(model_dir, max_batch=1)
    times = {False: [], kind: []}
    psnrs, num_deep, num_calls = [], 0, 0
    for i in range(args.rounds):
        images = {}
        for cached in (False, kind):
            deep_before, calls_before = deep_computes(engine, kind), engine.stats.num_denoiser_calls
            started = time.perf_counter()
            images[cached] = await run_request(engine, make_request(i, args.cache_steps, step_cache=cached))
            times[cached].append(time.perf_counter() - started)
            if cached:
                num_deep += deep_computes(engine, kind) - deep_before
                num_calls += engine.stats.num_denoiser_calls - calls_before
        psnrs.append(psnr(images[False], images[kind]))
    await engine.stop()
    base, fast = statistics.median(times[False]), statistics.median(times[kind])
    worst = min(psnrs)
    return Row(label, model_dir.name, f"{base:.3f} s/img uncached", f"{fast:.3f} s/img cached", base / fast,
               f"PSNR min {worst:.1f} dB; deep blocks ran {num_deep}/{num_calls} calls", ">= 1.5x, >= 30 dB",
               base / fast >= 1.5 and worst >= 30)


def report(rows: list[Row], header: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print_table(rows, header)


async def main_async(args) -> list[Row]:
    cache_dir = scratch_dir(args.cache_dir, "bench-image-")
    micro_dir = ensure_tiny_image(cache_dir, "sd", "micro")  # random weights (`--tiny-family sd`)
    sd_dir = ensure_tiny_image(cache_dir, "sd", "tiny")
    flux_dir = ensure_tiny_image(cache_dir, "flux")
    scenarios = set(args.scenarios.split(","))
    rows = []
    if "batching" in scenarios:
        rows += [await bench_batching(DEMO_MODEL_DIR, args), await bench_batching(micro_dir, args),
                 await bench_batching(sd_dir, args),
                 await bench_batching(sd_dir, args, batch_invariant=False), await bench_batching(flux_dir, args)]
    if "cache" in scenarios:
        rows += [await bench_step_cache(DEMO_MODEL_DIR, args, "step cache (UNet, adaptive DeepCache)", "deepcache"),
                 await bench_step_cache(sd_dir, args, "step cache (UNet, adaptive DeepCache)", "deepcache"),
                 await bench_step_cache(flux_dir, args, "step cache (DiT, First Block Cache)", "first_block"),
                 await bench_step_cache(flux_dir, args, "step cache (DiT, TeaCache)", "teacache")]
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = asyncio.run(main_async(args))
    load = os.getloadavg()[0]
    header = (f"bench_image: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
              f"load avg {load:.1f}; batching {args.steps} steps, step cache {args.cache_steps} steps, "
              f"{args.rounds} rounds, medians")
    report(rows, header, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
